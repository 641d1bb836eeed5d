"""Tests specific to the ``torch`` backend: chunk and block boundaries, float64, strided inputs, saved memory."""

from __future__ import annotations

import importlib

import pytest
import torch

from ssmkit.kernels import linear_scan, selective_scan
from ssmkit.kernels.linear_scan import naive as linear_naive
from ssmkit.kernels.selective_scan import naive as selective_naive
from tests.kernels.scan_testing import assert_close, make_selective_inputs, rel_rms

# the backend modules, by path (the packages export functions of the same names)
selective_torch = importlib.import_module("ssmkit.kernels.selective_scan.pytorch")
linear_torch = importlib.import_module("ssmkit.kernels.linear_scan.pytorch")

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def _selective_grads(fn, x, lengths, reverse, softplus, as_double, seed=1):
    """y, final state and the gradients of a random loss on both, for a backend function on [B, L, G, N] B/C."""
    leaves = {k: (v.detach().double() if as_double else v.detach()).requires_grad_(True) for k, v in x.items()
              if v is not None}
    args = [leaves.get(k) for k in NAMES]
    Bm, Cm = args[3], args[4]
    if Bm.dim() == 3:
        Bm, Cm = Bm.unsqueeze(2), Cm.unsqueeze(2)  # [B, L, 1, N]
    y, state = fn(*args[:3], Bm, Cm, *args[5:8], softplus, args[8], reverse, lengths)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g).to(y.dtype)
    gs = torch.randn(state.shape, generator=g).to(state.dtype)
    grads = torch.autograd.grad([y, state], list(leaves.values()), [gy, gs])
    return y.detach(), state.detach(), dict(zip(leaves, grads))


def _compare_selective(x, lengths, reverse, softplus, chunk_size, tol=1e-5):
    y_ref, s_ref, g_ref = _selective_grads(selective_naive.selective_scan, x, lengths, reverse, softplus, True)

    def fn(*args):
        return selective_torch.selective_scan(*args, chunk_size=chunk_size)

    y, s, grads = _selective_grads(fn, x, lengths, reverse, softplus, False)
    assert_close("y", y_ref, y, tol)
    assert_close("final_state", s_ref, s, tol)
    for name, ref in g_ref.items():
        assert_close(f"d{name}", ref, grads[name], tol)


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 11, 64])
@pytest.mark.parametrize("reverse", [False, True])
def test_selective_chunk_boundaries(chunk_size, reverse):
    """Chunks that split L unevenly (and a chunk per step) give the reference result, including lengths."""
    x, lengths = make_selective_inputs(batch=3, seqlen=11, dim=6, dstate=3, groups=2, has_init=True,
                                       has_lengths=True, seed=chunk_size)
    _compare_selective(x, lengths, reverse, True, chunk_size)


@pytest.mark.parametrize("chunk_size", [50, 23])
@pytest.mark.parametrize("reverse", [False, True])
def test_selective_two_level_inner_scan(chunk_size, reverse):
    """Steps too small for a plain loop use the two-level block scan inside a chunk (with and without a tail)."""
    x, lengths = make_selective_inputs(batch=2, seqlen=50, dim=4, dstate=2, has_init=True, has_lengths=True,
                                       seed=7)
    assert 2 * 4 * 2 < selective_torch._LOOP_STEP_ELEMENTS
    _compare_selective(x, lengths, reverse, True, chunk_size)


def test_selective_float64():
    """float64 inputs are computed in float64: results and gradients match the reference to 1e-10."""
    x, lengths = make_selective_inputs(batch=2, seqlen=40, dim=4, dstate=4, has_init=True, has_lengths=True,
                                       dtype=torch.float64, seed=3)
    x = {k: None if v is None else v.double() for k, v in x.items()}
    y_ref, s_ref, g_ref = _selective_grads(selective_naive.selective_scan, x, lengths, True, True, True)
    y, s, grads = _selective_grads(selective_torch.selective_scan, x, lengths, True, True, False)
    assert y.dtype == torch.float64 and s.dtype == torch.float64
    assert_close("y", y_ref, y, 1e-10)
    assert_close("final_state", s_ref, s, 1e-10)
    for name, ref in g_ref.items():
        assert grads[name].dtype == torch.float64
        assert_close(f"d{name}", ref, grads[name], 1e-10)


def test_selective_strided_inputs():
    """Non-contiguous u, delta, z, B, C (transposed storage) give the same result as contiguous copies."""
    x, _ = make_selective_inputs(batch=2, seqlen=30, dim=8, dstate=4, groups=2, seed=5)
    strided = dict(x)
    for k in ("u", "delta", "z", "B", "C"):
        strided[k] = x[k].transpose(0, -1).contiguous().transpose(0, -1)  # same values, other strides
        assert not strided[k].is_contiguous()
    y_ref, s_ref, g_ref = _selective_grads(selective_torch.selective_scan, x, None, False, True, False)
    y, s, grads = _selective_grads(selective_torch.selective_scan, strided, None, False, True, False)
    assert rel_rms(y_ref, y) < 1e-6 and rel_rms(s_ref, s) < 1e-6
    for name, ref in g_ref.items():
        assert rel_rms(ref, grads[name]) < 1e-6, name


def test_selective_gradient_through_final_state_only():
    """A loss on the final state alone reaches every input through the chunk carries."""
    x, _ = make_selective_inputs(batch=2, seqlen=20, dim=4, dstate=2, has_init=True, seed=9)
    leaves = {k: v.detach().requires_grad_(True) for k, v in x.items() if v is not None}
    ref_leaves = {k: v.detach().double().requires_grad_(True) for k, v in x.items() if v is not None}
    for lv, backend in ((leaves, "torch"), (ref_leaves, "naive")):
        _, state = selective_scan(**lv, delta_softplus=True, return_final_state=True, backend=backend)
        state.pow(2).sum().backward()
    for name in ("u", "delta", "A", "B", "initial_state"):
        assert_close(f"d{name}", ref_leaves[name].grad, leaves[name].grad, 1e-5)
    assert leaves["C"].grad is None or float(leaves["C"].grad.abs().max()) == 0.0


def test_selective_saved_memory_is_chunk_local():
    """Autograd keeps far less than one [B, L, D, N] tensor: only chunk-start states and [B, L, D]-sized inputs."""
    batch, seqlen, dim, dstate = 2, 256, 16, 64
    x, _ = make_selective_inputs(batch=batch, seqlen=seqlen, dim=dim, dstate=dstate, seed=2)
    leaves = {k: v.requires_grad_(True) for k, v in x.items() if v is not None}
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = selective_scan(**leaves, delta_softplus=True, backend="torch")
    full = batch * seqlen * dim * dstate
    assert sum(saved) < full // 2, f"saved {sum(saved)} elements, one [B, L, D, N] tensor has {full}"
    y.sum().backward()
    assert leaves["A"].grad is not None


def test_selective_chunk_size_must_be_positive():
    x, _ = make_selective_inputs(batch=1, seqlen=4, dim=2, dstate=2, bc_4d=True, seed=0)
    args = [x[k] for k in NAMES]
    with pytest.raises(ValueError, match="chunk_size"):
        selective_torch.selective_scan(*args[:8], True, args[8], False, None, chunk_size=0)


@pytest.mark.parametrize("seqlen,block", [(1, None), (2, 1), (17, 4), (40, 5), (41, 5), (100, None)])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_time_major_blocks_match_loop(seqlen, block, reverse):
    """The two-level block scan (with a tail when the block does not divide L) equals a plain loop; any sign of a."""
    g = torch.Generator().manual_seed(seqlen)
    a = torch.randn(seqlen, 3, 2, generator=g, dtype=torch.float64)  # negative decays and zeros are allowed
    a[seqlen // 2] = 0.0
    b = torch.randn(seqlen, 3, 2, generator=g, dtype=torch.float64)
    h0 = torch.randn(3, 2, generator=g, dtype=torch.float64)
    ref = torch.empty_like(b)
    h = h0
    for t in (range(seqlen - 1, -1, -1) if reverse else range(seqlen)):
        h = a[t] * h + b[t]
        ref[t] = h
    out = linear_torch.scan_time_major(a, b, h0, reverse, block)
    assert torch.allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reverse", [False, True])
def test_linear_float64_strided(reverse):
    """float64 linear scan on strided inputs matches the float64 reference in outputs and gradients."""
    g = torch.Generator().manual_seed(11)
    a = torch.rand(3, 16, 37, generator=g, dtype=torch.float64).transpose(1, 2)  # [B, L=37, D=16], strided
    b = torch.randn(3, 16, 37, generator=g, dtype=torch.float64).transpose(1, 2)
    h0 = torch.randn(3, 16, generator=g, dtype=torch.float64)
    lengths = torch.tensor([37, 5, 20])
    results = []
    for fn in (linear_naive.linear_scan, linear_torch.linear_scan):
        leaves = [t.detach().clone().requires_grad_(True) for t in (a, b, h0)]
        h, state = fn(leaves[0], leaves[1], leaves[2], reverse, lengths)
        gh = torch.randn(h.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        grads = torch.autograd.grad([h, state], leaves, [gh, torch.ones_like(state)])
        results.append((h, state, grads))
    (h_ref, s_ref, g_ref), (h, s, grads) = results
    assert h.dtype == torch.float64 and s.dtype == torch.float64
    assert_close("h", h_ref, h, 1e-10)
    assert_close("final_state", s_ref, s, 1e-10)
    for name, ref, out in zip(("a", "b", "initial_state"), g_ref, grads):
        assert_close(f"d{name}", ref, out, 1e-10)


def test_linear_public_api_torch_backend():
    """The public op routes to this backend and returns float32 final states for bfloat16 inputs."""
    a = torch.rand(2, 9, 4).to(torch.bfloat16)
    b = torch.randn(2, 9, 4).to(torch.bfloat16)
    h, state = linear_scan(a, b, return_final_state=True, backend="torch")
    assert h.dtype == torch.bfloat16 and state.dtype == torch.float32
    h_ref, state_ref = linear_scan(a, b, return_final_state=True, backend="naive")
    assert_close("h", h_ref.float(), h.float(), 1e-2)
    assert_close("final_state", state_ref, state, 1e-5)
