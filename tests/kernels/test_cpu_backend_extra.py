"""Extra checks of the fused CPU backend: vectorizable math helpers, thread-count determinism, gradient paths."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from ssmkit.kernels import linear_scan, selective_scan
from ssmkit.kernels._numba_utils import (
    EXP2_CONSTS,
    exp2_consts,
    fast_exp,
    fast_exp2,
    sigmoid,
    softplus,
    softplus_grad,
    tile_width,
)
from tests.kernels.scan_testing import check_selective_backend, make_selective_inputs


@numba.njit(cache=True, fastmath=True)
def _apply_helpers(x, consts, out):
    k = exp2_consts(consts)
    for i in range(x.size):
        out[0, i] = fast_exp2(x[i], k)
        out[1, i] = fast_exp(x[i], k)
        out[2, i] = softplus(x[i], k)
        out[3, i] = softplus_grad(x[i], k)
        out[4, i] = sigmoid(x[i], k)


def _helpers(x: np.ndarray) -> np.ndarray:
    out = np.empty((5, x.size), dtype=np.float32)
    _apply_helpers(x, EXP2_CONSTS, out)
    return out.astype(np.float64)


def test_fast_exp2_relative_error_below_2e7():
    y = np.linspace(-126.0, 127.0, 400_001, dtype=np.float32)
    rel = np.abs(_helpers(y)[0] / np.exp2(y.astype(np.float64)) - 1.0)
    assert rel.max() <= 2e-7, f"fast_exp2 max relative error {rel.max():.3e} > 2e-7"


def test_fast_exp2_exact_powers_underflow_and_clamp():
    k = np.arange(-126, 128, dtype=np.float32)
    assert np.array_equal(_helpers(k)[0], np.exp2(k.astype(np.float64))), "2^k must be exact for integer k"
    got = _helpers(np.array([-126.6, -1000.0, 127.0, 1000.0], dtype=np.float32))[0]
    assert got[0] == 0.0 and got[1] == 0.0
    assert got[2] == 2.0**127 and got[3] == 2.0**127


def test_fast_exp_error_only_grows_with_the_argument():
    """exp(x) = 2^(x log2 e): the rounding of x log2 e adds a relative error of about 6e-8 |x| (exp's conditioning)."""
    x = np.linspace(-87.0, 88.0, 400_001, dtype=np.float32)
    rel = np.abs(_helpers(x)[1] / np.exp(x.astype(np.float64)) - 1.0)
    bound = 2e-7 + 8e-8 * np.abs(x)
    assert np.all(rel <= bound), f"fast_exp: worst error / bound = {(rel / bound).max():.2f}"


def test_softplus_and_sigmoid_match_torch():
    x = np.concatenate([np.linspace(-30, 30, 20_001), -np.logspace(-7, 1, 200), np.logspace(-7, 1, 200)])
    x = x.astype(np.float32)
    got = _helpers(x)
    xt = torch.from_numpy(x).double()
    refs = (torch.nn.functional.softplus(xt), torch.where(xt > 20, 1.0, torch.sigmoid(xt)), torch.sigmoid(xt))
    bound = 2.5e-7 + 8e-8 * np.abs(x)
    for name, out, ref in zip(("softplus", "softplus_grad", "sigmoid"), got[2:], refs):
        rel = np.abs(out - ref.numpy()) / np.abs(ref.numpy())
        assert np.all(rel <= bound), f"{name}: worst error / bound = {(rel / bound).max():.2f}"


@pytest.mark.parametrize("dim,groups,dstate,reverse", [(256, 1, 16, False), (192, 2, 8, True), (512, 1, 2, True)])
def test_wide_tiles_and_several_chunks_match_naive(dim, groups, dstate, reverse):
    """Tiles of 128 (two per group: dB / dC summed over tiles), 96 and 256 channels, three checkpoint chunks,
    partial lengths."""
    check_selective_backend("cpu", reverse=reverse, batch=2, seqlen=70, dim=dim, dstate=dstate, groups=groups,
                            has_init=True, has_lengths=True, seed=dim)


@pytest.mark.parametrize("channels,limit,expected", [(256, 128, 128), (192, 128, 96), (48, 32, 24), (7, 32, 7),
                                                     (13, 4, 1)])
def test_tile_width_divides(channels, limit, expected):
    assert tile_width(channels, limit) == expected


def _selective_run(threads: int):
    x, lengths = make_selective_inputs(batch=3, seqlen=70, dim=64, dstate=4, groups=2, has_init=True,
                                       has_lengths=True, seed=5)
    leaves = {k: v.detach().requires_grad_(True) for k, v in x.items() if v is not None}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # the cpu kernels follow torch's thread count
    try:
        y, state = selective_scan(**leaves, delta_softplus=True, return_final_state=True, lengths=lengths,
                                  backend="cpu")
        assert numba.get_num_threads() == threads
        (y.square().sum() + state.sum()).backward()
    finally:
        torch.set_num_threads(previous)
    return [y.detach(), state.detach()] + [leaves[k].grad for k in sorted(leaves)]


def test_cpu_kernels_follow_torch_thread_count():
    """numba runs the kernels on torch.get_num_threads() threads (capped by NUMBA_NUM_THREADS), per Python thread."""
    previous = torch.get_num_threads()
    x = torch.rand(2, 9, 8)
    try:
        torch.set_num_threads(1)
        linear_scan(x, x, backend="cpu")
        assert numba.get_num_threads() == 1
        if numba.config.NUMBA_NUM_THREADS >= 2:
            torch.set_num_threads(2)
            linear_scan(x, x, backend="cpu")
            assert numba.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs NUMBA_NUM_THREADS >= 2")
def test_selective_scan_bitwise_identical_across_thread_counts():
    one, two = _selective_run(1), _selective_run(2)
    for a, b in zip(one, two):
        assert torch.equal(a, b)


def test_only_final_state_used_still_gives_gradients():
    """A loss on the final state alone (y unused: its incoming gradient is None) must still reach every input."""
    x, _ = make_selective_inputs(batch=2, seqlen=20, dim=8, dstate=4, has_init=True, seed=3)
    leaves = {k: v.detach().double().requires_grad_(True) for k, v in x.items() if v is not None}
    _, s_ref = selective_scan(**leaves, delta_softplus=True, return_final_state=True, backend="naive")
    ref = torch.autograd.grad(s_ref.sum(), list(leaves.values()), allow_unused=True)
    leaves32 = {k: v.detach().float().requires_grad_(True) for k, v in leaves.items()}
    _, state = selective_scan(**leaves32, delta_softplus=True, return_final_state=True, backend="cpu")
    got = torch.autograd.grad(state.sum(), list(leaves32.values()), allow_unused=True)
    for name, r, g in zip(leaves, ref, got):
        if r is None:
            assert g is None or torch.count_nonzero(g) == 0, f"d{name} should be zero"
            continue
        err = float((r - g.double()).norm() / r.norm().clamp_min(1e-30))
        assert err < 1e-5, f"d{name}: relative error {err:.2e}"


def test_linear_scan_non_contiguous_fp16_inputs():
    base = torch.rand(2, 16, 40, generator=torch.Generator().manual_seed(0))
    a = (base[:, :, ::2] * 0.5 + 0.5).to(torch.float16).requires_grad_(True)  # non-contiguous [2, 16, 20]
    b = torch.randn(2, 20, 16).transpose(1, 2).to(torch.float16).requires_grad_(True)
    h = linear_scan(a, b, backend="cpu")
    h.float().sum().backward()
    h_ref = linear_scan(a.detach().double(), b.detach().double(), backend="naive")
    assert h.dtype == torch.float16 and a.grad.dtype == torch.float16 and b.grad.dtype == torch.float16
    assert torch.allclose(h.double(), h_ref, rtol=5e-3, atol=5e-3)


def test_backward_twice_with_retain_graph():
    """The saved checkpoints outlive one backward, as torch's own saved tensors do under retain_graph=True."""
    x, _ = make_selective_inputs(batch=2, seqlen=40, dim=8, dstate=4, seed=7)
    u = x["u"].detach().requires_grad_(True)
    args = {k: v for k, v in x.items() if k != "u"}
    y = selective_scan(u, **args, delta_softplus=True, backend="cpu")
    (first,) = torch.autograd.grad(y.sum(), u, retain_graph=True)
    (second,) = torch.autograd.grad(y.sum(), u)
    assert torch.equal(first, second)
    a = torch.rand(2, 30, 8).requires_grad_(True)
    h = linear_scan(a, torch.randn(2, 30, 8), backend="cpu")
    (ga1,) = torch.autograd.grad(h.sum(), a, retain_graph=True)
    (ga2,) = torch.autograd.grad(h.sum(), a)
    assert torch.equal(ga1, ga2)


def _scan_inputs(groups: int = 1, **overrides):
    x, _ = make_selective_inputs(batch=2, seqlen=6, dim=8, dstate=4, groups=groups, has_init=True, seed=1)
    return {**x, **overrides}


@pytest.mark.parametrize("case", ["3d", "4d_groups", "float64", "no_optionals"])
def test_validation_fast_path_accepts_well_formed_inputs(case):
    """The one-pass check takes the common cases (otherwise every call would pay for the detailed checks)."""
    from ssmkit.kernels.selective_scan import _well_formed

    x = _scan_inputs(groups=2) if case == "4d_groups" else _scan_inputs()
    if case == "float64":
        x = {k: v.double() for k, v in x.items()}
    if case == "no_optionals":
        x = {**x, "D": None, "z": None, "delta_bias": None, "initial_state": None}
    assert _well_formed(**x)


@pytest.mark.parametrize("name,bad", [
    ("u", torch.randn(2, 6)), ("delta", torch.randn(2, 6, 9)), ("A", torch.randn(8)), ("A", torch.randn(9, 4)),
    ("B", torch.randn(2, 6, 5)), ("B", torch.randn(2, 6, 3, 4)), ("C", torch.randn(2, 5, 4)), ("D", torch.randn(9)),
    ("z", torch.randn(2, 6, 7)), ("delta_bias", torch.randn(8, 1)), ("initial_state", torch.randn(2, 4, 8)),
    ("u", torch.zeros(2, 6, 8, dtype=torch.int64)), ("A", torch.tensor(1.0)), ("B", [1.0]),
])
def test_validation_fast_path_rejects_bad_inputs_and_the_op_raises(name, bad):
    """Bad inputs never pass the fast check; the op then raises the detailed error naming the argument."""
    from ssmkit.kernels.selective_scan import _well_formed

    x = _scan_inputs(**{name: bad})
    assert not _well_formed(**x)
    with pytest.raises((ValueError, TypeError), match=name):
        selective_scan(**x, delta_softplus=True, backend="cpu")


def test_final_state_and_state_gradient_layout():
    """The kernels write the final state and d initial_state [B, D, N] directly: contiguous, equal to naive."""
    x, _ = make_selective_inputs(batch=3, seqlen=9, dim=16, dstate=4, has_init=True, seed=4)
    h0 = x["initial_state"].transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)  # strided [B, D, N]
    args = {**x, "initial_state": h0}
    _, state = selective_scan(**args, delta_softplus=True, return_final_state=True, backend="cpu")
    assert state.shape == (3, 16, 4) and state.is_contiguous()
    (g_cpu,) = torch.autograd.grad((state * torch.arange(4.0)).sum(), h0)
    _, ref = selective_scan(**args, delta_softplus=True, return_final_state=True, backend="naive")
    (g_ref,) = torch.autograd.grad((ref * torch.arange(4.0)).sum(), h0)
    assert torch.allclose(state, ref, rtol=1e-5, atol=1e-6)
    assert g_cpu.is_contiguous() and torch.allclose(g_cpu, g_ref, rtol=1e-5, atol=1e-6)


def test_torch_compile_of_code_calling_the_cpu_kernels():
    """torch.compile of a model on the ``cpu`` backend (fused Mamba path, both scans) matches eager, with grads.

    Dynamo cannot trace into numba; the CPU entry points are compiler-disabled, so the graph breaks around them
    instead of dynamo tracing into numba's dispatcher (which raised on a first call, or broke the graph inside it),
    and the backends are looked up without an import at every call (``importlib`` broke the graph each time).
    """
    from ssmkit.core import Mamba

    torch.manual_seed(0)
    mixer = Mamba(d_model=8, d_state=4, d_conv=3, expand=2, backend="cpu")

    def loss(x, a):
        y = mixer(x)  # [B, L, 8] through mamba_inner_cpu
        y = selective_scan(torch.tanh(y), y, -torch.ones(8, 2), y[..., :2], y[..., 2:4], delta_softplus=True,
                           reverse=True, backend="cpu")
        return (linear_scan(torch.sigmoid(a), y, backend="cpu") * 2.0).sum()

    g = torch.Generator().manual_seed(3)
    inputs = [torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 8, generator=g)]
    eager = [t.clone().requires_grad_(True) for t in inputs]
    compiled = [t.clone().requires_grad_(True) for t in inputs]
    loss(*inputs)  # backends imported, kernels compiled: what follows is the steady state
    explanation = torch._dynamo.explain(loss)(*inputs)
    reasons = [str(reason.reason).splitlines()[0] for reason in explanation.break_reasons]
    assert all("torch.compiler.disable" in reason for reason in reasons), reasons  # breaks at the entry points only
    loss(*eager).backward()
    eager_weight_grad = mixer.in_proj.weight.grad.clone()
    mixer.zero_grad()
    torch.compile(loss, backend="eager")(*compiled).backward()
    for i, (e, c) in enumerate(zip(eager, compiled)):
        assert torch.allclose(e.grad, c.grad, rtol=1e-5, atol=1e-6), f"compiled gradient {i} differs from eager"
    assert torch.allclose(mixer.in_proj.weight.grad, eager_weight_grad, rtol=1e-5, atol=1e-6)
