"""LightNetMixer (additive linear recurrence, global one-scan form), MD-LRPE and MD-TPE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.core.mixers.lightnet import LightNetMixer
from ssmkit.core.positional import MDLRPE, MDTPE, grid_coordinates

BACKEND = "naive"
TOL = dict(rtol=1e-4, atol=1e-5)


def _mixer(**kw) -> LightNetMixer:
    torch.manual_seed(0)
    kw.setdefault("num_heads", 2)
    return LightNetMixer(16, backend=BACKEND, **kw)


def _qkv(mixer: LightNetMixer, x: torch.Tensor):
    batch, seqlen, _ = x.shape
    shape = (batch, seqlen, mixer.num_heads, mixer.head_dim)
    return F.silu(mixer.q_proj(x)).view(shape), mixer.k_proj(x).view(shape), mixer.v_proj(x).view(shape)


def _output(mixer: LightNetMixer, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
    gate = mixer.output_gate(x)
    gate = torch.sigmoid(gate) if mixer.gate_act == "sigmoid" else F.silu(gate)
    return mixer.o_proj(mixer.norm(o.reshape(x.shape) * gate))


def _paper_recurrence(mixer: LightNetMixer, x: torch.Tensor, grid) -> torch.Tensor:
    """The additive recurrence as a plain loop.

    g_t = g_{t-1} + exp(k_t),  s_t = (g_{t-1} / g_t) s_{t-1} + (exp(k_t) / g_t) v_t^T,  o_t = q_t^T s_t.
    """
    q, k, v = _qkv(mixer, x)  # [B, L, H, d]
    coords = grid_coordinates(grid)
    g = torch.zeros_like(k[:, 0])  # [B, H, d]
    s = None
    outs = []
    for t in range(x.shape[1]):
        delta = torch.exp(k[:, t])  # [B, H, d]
        g_new = g + delta
        lam, k_t, q_t = g / g_new, delta / g_new, q[:, t]
        if mixer.lrpe is not None:
            k_t = mixer.lrpe(k_t[:, None], coords[t:t + 1])[:, 0]  # [B, H, 2d]
            q_t = mixer.lrpe(q_t[:, None], coords[t:t + 1])[:, 0]
            lam = torch.cat([lam, lam], dim=-1)
        update = k_t[..., :, None] * v[:, t, :, None, :]  # [B, H, d_k, d_v]
        s = update if s is None else lam[..., None] * s + update
        outs.append(torch.einsum("bhi,bhij->bhj", q_t, s))
        g = g_new
    return _output(mixer, x, torch.stack(outs, dim=1))


@pytest.mark.parametrize(
    ("kw", "grid"),
    [(dict(use_lrpe=False), (3, 4)), (dict(), (3, 4)), (dict(grid_ndim=1, gate_act="silu"), (7,))],
)
def test_causal_form_equals_the_paper_recurrence(kw, grid):
    mixer = _mixer(causal=True, **kw)
    x = torch.randn(2, math.prod(grid), 16)
    torch.testing.assert_close(mixer(x, grid=grid), _paper_recurrence(mixer, x, grid), **TOL)


@pytest.mark.parametrize("use_lrpe", [False, True])
def test_global_form_equals_the_explicit_formula(use_lrpe):
    mixer = _mixer(use_lrpe=use_lrpe)
    grid = (3, 4)
    x = torch.randn(2, 12, 16)
    q, k, v = _qkv(mixer, x)
    k_tilde = torch.exp(k) / torch.exp(k).sum(dim=1, keepdim=True)  # delta_s / g_L, normalised over all tokens
    if use_lrpe:
        coords = grid_coordinates(grid)
        q, k_tilde = mixer.lrpe(q, coords), mixer.lrpe(k_tilde, coords)
    o = torch.einsum("bthi,bshi,bshj->bthj", q, k_tilde, v)  # q_t^T sum_s ktilde_s v_s^T
    torch.testing.assert_close(mixer(x, grid=grid), _output(mixer, x, o), **TOL)


@pytest.mark.parametrize("use_lrpe", [False, True])
def test_global_state_is_the_final_state_of_the_causal_scan(use_lrpe):
    causal, global_ = _mixer(causal=True, use_lrpe=use_lrpe), _mixer(use_lrpe=use_lrpe)
    global_.load_state_dict(causal.state_dict())
    x = torch.randn(2, 12, 16)
    torch.testing.assert_close(causal(x, grid=(3, 4))[:, -1], global_(x, grid=(3, 4))[:, -1], **TOL)


def test_one_scan_in_any_order_reaches_the_global_state():
    causal, global_ = _mixer(causal=True, use_lrpe=False), _mixer(use_lrpe=False)
    global_.load_state_dict(causal.state_dict())
    x = torch.randn(2, 12, 16)
    reference = global_(x, grid=(3, 4))
    for seed in range(3):
        perm = torch.randperm(12, generator=torch.Generator().manual_seed(seed))
        last = causal(x[:, perm], grid=(3, 4))[:, -1]  # the scan in order perm ends at token perm[-1]
        torch.testing.assert_close(last, reference[:, perm[-1]], **TOL)
        torch.testing.assert_close(global_(x[:, perm], grid=(3, 4)), reference[:, perm], **TOL)


def test_lrpe_breaks_permutation_equivariance_of_the_global_form():
    mixer = _mixer()
    x = torch.randn(1, 12, 16)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(mixer(x[:, perm], grid=(3, 4)), mixer(x, grid=(3, 4))[:, perm], atol=1e-4)


def test_causal_outputs_depend_only_on_the_prefix():
    mixer = _mixer(causal=True, grid_ndim=1)
    x = torch.randn(2, 9, 16)
    full = mixer(x)
    for t in (1, 4, 8):
        torch.testing.assert_close(full[:, :t], mixer(x[:, :t]), **TOL)


@pytest.mark.parametrize("causal", [False, True])
def test_lengths_match_the_unpadded_rows(causal):
    mixer = _mixer(causal=causal, grid_ndim=1)
    x = torch.randn(3, 7, 16)
    lengths = torch.tensor([7, 2, 5])
    out = mixer(x, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[row:row + 1, :n], mixer(x[row:row + 1, :n]), **TOL)
        assert torch.all(out[row, n:] == 0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("grid_ndim", "grid"), [(1, None), (2, None), (2, (3, 4)), (3, (2, 3, 2))])
def test_shapes_and_finite_gradients(causal, grid_ndim, grid):
    mixer = LightNetMixer(24, num_heads=2, causal=causal, grid_ndim=grid_ndim, backend=BACKEND)
    x = torch.randn(2, 12, 24, requires_grad=True)
    out = mixer(x, grid=grid)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_md_lrpe_depends_only_on_relative_offsets():
    lrpe = MDLRPE(head_dim=8, ndim=2)
    q, k = torch.randn(1, 1, 3, 8), torch.randn(1, 1, 3, 8)

    def score(p, p2):
        return (lrpe(q, torch.tensor([p])) * lrpe(k, torch.tensor([p2]))).sum(-1)  # [1, 1, 3]

    base = score((1, 2), (4, 0))
    torch.testing.assert_close(score((3, 5), (6, 3)), base)  # both moved by (2, 3)
    assert not torch.allclose(score((1, 2), (4, 1)), base)  # another offset along axis 1
    assert not torch.allclose(score((2, 2), (4, 0)), base)  # another offset along axis 0
    torch.testing.assert_close(score((2, 2), (2, 2)), (q * k).sum(-1))  # zero offset: plain dot product
    assert lrpe(q, torch.tensor([[0, 0]])).shape == (1, 1, 3, 16)


def _toeplitz_reference(tpe: MDTPE, x: torch.Tensor, grid) -> torch.Tensor:
    """x + sum_a o_proj_a(norm_a(T_a x)) with the explicit [L, L] Toeplitz matrix of each axis and head."""
    coords = grid_coordinates(grid)  # [L, m]
    scale, decay = tpe.coefficients()  # [m, H]
    head_dim = tpe.dim // tpe.num_heads
    out = x
    for axis in range(tpe.ndim):
        others = [b for b in range(tpe.ndim) if b != axis]
        same_line = (coords[:, None, others] == coords[None, :, others]).all(-1)  # [L, L]
        offset = coords[:, None, axis] - coords[None, :, axis]  # [L, L], p_a - p'_a
        mask = same_line & (offset >= 0) if tpe.causal else same_line
        mixed = []
        for h in range(tpe.num_heads):
            t_h = scale[axis, h] * decay[axis, h] ** offset.abs().float() * mask  # [L, L]
            mixed.append(torch.einsum("ts,bsc->btc", t_h, x[..., h * head_dim:(h + 1) * head_dim]))
        out = out + tpe.o_projs[axis](tpe.norms[axis](torch.cat(mixed, dim=-1)))
    return out


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("ndim", "grid"), [(1, (6,)), (2, (3, 4)), (3, (2, 3, 2))])
def test_md_tpe_equals_the_explicit_toeplitz_formula(causal, ndim, grid):
    torch.manual_seed(0)
    tpe = MDTPE(16, num_heads=2, ndim=ndim, causal=causal, backend=BACKEND)
    x = torch.randn(2, math.prod(grid), 16)
    torch.testing.assert_close(tpe(x, grid=grid), _toeplitz_reference(tpe, x, grid), **TOL)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: LightNetMixer(16, num_heads=3), "num_heads"),
        (lambda: LightNetMixer(16, gate_act="tanh"), "gate_act"),
        (lambda: LightNetMixer(12, num_heads=4, grid_ndim=2), "head_dim"),
        (lambda: _mixer()(torch.randn(1, 12, 16), grid=(3, 5)), r"prod\(grid\) must equal L=12"),
        (lambda: _mixer()(torch.randn(1, 12, 8)), r"x must have shape \[B, L, 16\]"),
        (lambda: _mixer()(torch.randn(1, 12, 16), grid=(12,)), "grid must be a tuple of 2"),
        (lambda: _mixer()(torch.randn(2, 5, 16), lengths=torch.tensor([6, 1])), r"lengths must lie in \[1, 5\]"),
        (lambda: MDTPE(16, num_heads=5), "num_heads"),
        (lambda: MDTPE(16, num_heads=2)(torch.randn(1, 6, 16), grid=(2, 2)), "prod"),
        (lambda: MDLRPE(head_dim=7, ndim=2), "head_dim"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
