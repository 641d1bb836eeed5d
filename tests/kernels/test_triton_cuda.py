"""Triton kernels on a real CUDA GPU against the float64 naive reference (skipped where no GPU is present).

The same checks as the interpreter tests (outputs, final states, every gradient, relative RMS per dtype), over the
whole grid of the issue: L in {1, 7, 64, 129, 1000}, N in {1, 4, 16}, G in {1, 2}, four flag sets that turn each
option on and off (D, z, delta_bias, softplus, initial_state, reverse, lengths), float32 everywhere and bfloat16 on a
slice. Run on a GPU machine with ``pytest tests/kernels/test_triton_cuda.py -n 8`` (pytest-xdist spreads the Triton
compiles over processes). ``SSMKIT_TRITON_SETTINGS`` (JSON of module constants of
``ssmkit/kernels/selective_scan/triton.py``, e.g. ``{"_ROWS_LANES": 2}``) runs every test with those settings
instead of the defaults; ``benchmarks/gpu_session.sh`` uses it to test the fastest forward it measured.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from tests.kernels.scan_testing import (
    TOL,
    assert_close,
    check_linear_backend,
    check_selective_backend,
    flag_sets,
    make_selective_inputs,
    run_selective,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SEQLENS = (1, 7, 64, 129, 1000)
SETTINGS = json.loads(os.environ.get("SSMKIT_TRITON_SETTINGS") or "{}")  # module constants -> values, for every test


@pytest.fixture(autouse=True)
def triton_settings(monkeypatch):
    """Apply SSMKIT_TRITON_SETTINGS (a test's own monkeypatch comes after, so it still wins)."""
    from ssmkit.kernels.selective_scan import triton as selective_triton

    for name, value in SETTINGS.items():
        if not hasattr(selective_triton, name):
            raise ValueError(f"SSMKIT_TRITON_SETTINGS: selective_scan.triton has no setting {name!r}")
        monkeypatch.setattr(selective_triton, name, value)


@pytest.mark.parametrize("flags", range(4), ids=lambda i: f"flags{i}")
@pytest.mark.parametrize("groups", (1, 2), ids=lambda g: f"G{g}")
@pytest.mark.parametrize("dstate", (1, 4, 16), ids=lambda n: f"N{n}")
@pytest.mark.parametrize("seqlen", SEQLENS, ids=lambda L: f"L{L}")
def test_selective_scan_float32(seqlen, dstate, groups, flags):
    options = dict(flag_sets()[flags])
    reverse = options.pop("reverse")
    check_selective_backend("triton", reverse=reverse, batch=2, seqlen=seqlen, dim=24 * groups, dstate=dstate,
                            groups=groups, seed=seqlen * 7 + dstate, device="cuda", **options)


@pytest.mark.parametrize("flags", range(4), ids=lambda i: f"flags{i}")
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("seqlen", (64, 1000), ids=lambda L: f"L{L}")
def test_selective_scan_half(seqlen, dtype, flags):
    options = dict(flag_sets()[flags])
    reverse = options.pop("reverse")
    check_selective_backend("triton", reverse=reverse, batch=2, seqlen=seqlen, dim=96, dstate=16, groups=2,
                            dtype=dtype, seed=seqlen + flags, device="cuda", **options)


@pytest.mark.parametrize("flags", range(4), ids=lambda i: f"flags{i}")
@pytest.mark.parametrize("seqlen", (7, 1000), ids=lambda L: f"L{L}")
def test_selective_scan_tile_forward(seqlen, flags, monkeypatch):
    """The [BLOCK_D, BLOCK_N] tile forward (used above _ROWS_MAX_DSTATE states), forced at N = 16."""
    from ssmkit.kernels.selective_scan import triton as selective_triton

    monkeypatch.setattr(selective_triton, "_FWD_KIND", "tile")
    options = dict(flag_sets()[flags])
    reverse = options.pop("reverse")
    check_selective_backend("triton", reverse=reverse, batch=2, seqlen=seqlen, dim=48, dstate=16, groups=2,
                            seed=seqlen + flags, device="cuda", **options)


@pytest.mark.parametrize("dstate", (32, 48), ids=lambda n: f"N{n}")
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_selective_scan_many_states(dstate, dtype):
    """N = 32 (the rows forward at its limit) and N = 48 (the tile forward)."""
    check_selective_backend("triton", batch=2, seqlen=129, dim=40, dstate=dstate, groups=1, dtype=dtype, seed=dstate,
                            has_init=True, has_lengths=True, device="cuda")


@pytest.mark.parametrize("setting", ({"_ROWS_PREFETCH": 1}, {"_ROWS_PREFETCH": 3}, {"_ROWS_PREFETCH": 8},
                                     {"_ROWS_PACK": False}, {"_ROWS_NUM_WARPS": 4}, {"_ROWS_LANES": 2},
                                     {"_ROWS_LANES": 4, "_ROWS_PREFETCH": 8},
                                     {"_ROWS_LANES": 2, "_ROWS_PREFETCH": 12}, {"_ROWS_LANES": 4, "_ROWS_PREFETCH": 12},
                                     {"_ROWS_LANES": 2, "_ROWS_NUM_WARPS": 2, "_ROWS_PREFETCH": 8}),
                         ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()))
def test_selective_scan_rows_settings(setting, monkeypatch):
    """Every setting of the rows forward that the benchmark sweeps gives the reference result."""
    from ssmkit.kernels.selective_scan import triton as selective_triton

    for name, value in setting.items():
        monkeypatch.setattr(selective_triton, name, value)
    check_selective_backend("triton", reverse=True, batch=2, seqlen=200, dim=160, dstate=16, groups=2,
                            dtype=torch.bfloat16, seed=3, has_init=True, has_lengths=True, device="cuda")


@pytest.mark.parametrize("dstate", (16, 32), ids=lambda n: f"N{n}")
def test_selective_scan_backward_max_tiles(dstate, monkeypatch):
    """The backward with at most 4 tiles per group (_BWD_MAX_TILES: wider tiles on more warps)."""
    from ssmkit.kernels.selective_scan import triton as selective_triton

    monkeypatch.setattr(selective_triton, "_BWD_MAX_TILES", 4)
    check_selective_backend("triton", batch=2, seqlen=200, dim=256, dstate=dstate, groups=2, dtype=torch.bfloat16,
                            seed=dstate, has_init=True, has_lengths=True, device="cuda")


@pytest.mark.parametrize("setting", ({}, {"_BWD_ROWS_BLOCK_D": 64}, {"_BWD_ROWS_BLOCK_D": 64, "_BWD_ROWS_NUM_WARPS": 2},
                                     {"_BWD_ROWS_MAX_PROGRAMS": 7}, {"_BWD_ROWS_TILE_SUMS": True}),
                         ids=lambda d: "-".join(f"{k}{v}" for k, v in d.items()) or "default")
@pytest.mark.parametrize("dstate", (4, 16, 32), ids=lambda n: f"N{n}")
def test_selective_scan_rows_backward(dstate, setting, monkeypatch):
    """The rows backward (_BWD_KIND = "rows"), its settings, and a persistent grid of 7 programs for 48 work items."""
    from ssmkit.kernels.selective_scan import triton as selective_triton

    monkeypatch.setattr(selective_triton, "_BWD_KIND", "rows")
    for name, value in setting.items():
        monkeypatch.setattr(selective_triton, name, value)
    check_selective_backend("triton", reverse=dstate == 16, batch=3, seqlen=200, dim=256, dstate=dstate, groups=2,
                            dtype=torch.bfloat16, seed=dstate + 1, has_init=True, has_lengths=True, device="cuda")


@pytest.mark.parametrize("flags", range(4), ids=lambda i: f"flags{i}")
@pytest.mark.parametrize("seqlen", (7, 1000), ids=lambda L: f"L{L}")
def test_selective_scan_rows_backward_flags(seqlen, flags, monkeypatch):
    """The rows backward in float32 over the four flag sets (D, z, delta_bias, softplus, init, reverse, lengths)."""
    from ssmkit.kernels.selective_scan import triton as selective_triton

    monkeypatch.setattr(selective_triton, "_BWD_KIND", "rows")
    options = dict(flag_sets()[flags])
    reverse = options.pop("reverse")
    check_selective_backend("triton", reverse=reverse, batch=2, seqlen=seqlen, dim=80, dstate=16, groups=2,
                            seed=seqlen + flags, device="cuda", **options)


def test_selective_scan_misaligned_bc_rows():
    """B / C whose data does not start on an 8-byte boundary are read value by value (no packed words)."""
    from ssmkit.kernels.selective_scan import triton as selective_triton

    x, lengths = make_selective_inputs(batch=2, seqlen=100, dim=64, dstate=16, groups=2, dtype=torch.bfloat16, seed=4,
                                       device="cuda")
    for name in ("B", "C"):
        buf = torch.empty(x[name].numel() + 1, device="cuda", dtype=x[name].dtype)[1:]
        x[name] = buf.view_as(x[name]).copy_(x[name])  # contiguous, 2 bytes past an aligned address
        assert x[name].is_contiguous() and x[name].data_ptr() % 8 != 0
    assert not selective_triton._packable(x["B"], x["C"], 16)
    y_ref, s_ref, g_ref = run_selective(x, lengths, "naive", True, False, as_double=True)
    y, s, grads = run_selective(x, lengths, "triton", True, False)
    assert_close("y", y_ref, y, TOL[torch.bfloat16])
    assert_close("final_state", s_ref, s, TOL[torch.bfloat16])
    for name, ref in g_ref.items():
        assert_close(f"d{name}", ref, grads[name], TOL[torch.bfloat16])


def test_selective_scan_wide_multi_tile():
    """D spans many tiles of several groups (masked last tile) at a model-like shape."""
    check_selective_backend("triton", batch=3, seqlen=300, dim=3 * 200, dstate=16, groups=3, has_init=True,
                            has_lengths=True, seed=5, device="cuda")


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("has_lengths", (False, True), ids=("full", "lengths"))
@pytest.mark.parametrize("has_init", (False, True), ids=("zero", "init"))
@pytest.mark.parametrize("reverse", (False, True), ids=("fwd", "rev"))
@pytest.mark.parametrize("seqlen", SEQLENS, ids=lambda L: f"L{L}")
def test_linear_scan(seqlen, reverse, has_init, has_lengths, dtype):
    check_linear_backend("triton", reverse=reverse, batch=3, seqlen=seqlen, dim=80, has_init=has_init,
                         has_lengths=has_lengths, dtype=dtype, seed=seqlen + 2 * reverse, device="cuda")


def test_linear_scan_long_and_wide():
    """Many time tiles and channel blocks (the chunk carry over 130 tiles) against float64."""
    check_linear_backend("triton", batch=2, seqlen=4133, dim=1100, has_init=True, has_lengths=True, seed=11,
                         device="cuda")


def test_selective_backward_is_deterministic():
    x, lengths = make_selective_inputs(batch=2, seqlen=200, dim=256, dstate=16, groups=2, has_init=True,
                                       has_lengths=True, device="cuda")
    _, _, g1 = run_selective(x, lengths, "triton", softplus=True, reverse=False)
    _, _, g2 = run_selective(x, lengths, "triton", softplus=True, reverse=False)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), f"d{name} differs between two identical backward passes"


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("groups", (1, 2), ids=lambda g: f"G{g}")
def test_state_update_matches_torch(groups, dtype):
    from ssmkit.kernels import selective_state_update
    from ssmkit.kernels.step import _state_update_torch

    g = torch.Generator().manual_seed(groups)
    batch, dim, dstate = 5, 96, 16

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to("cuda")

    state = rnd(batch, dim, dstate)  # [B, D, N] float32
    x, dt = rnd(batch, dim).to(dtype), (rnd(batch, dim) * 0.5).to(dtype)  # [B, D]
    A = -torch.exp(rnd(dim, dstate) * 0.5)  # [D, N]
    B, C = rnd(batch, groups, dstate).to(dtype), rnd(batch, groups, dstate).to(dtype)  # [B, G, N]
    D, z, bias = rnd(dim), rnd(batch, dim).to(dtype), rnd(dim) * 0.3
    ref_state = state.clone()
    y_ref = _state_update_torch(ref_state, x, dt, A, B, C, D, z, bias, True)
    y = selective_state_update(state, x, dt, A, B, C, D, z, bias, dt_softplus=True, backend="triton")
    assert_close("y", y_ref, y, TOL[dtype])
    assert_close("state (in place)", ref_state, state, TOL[torch.float32])


@pytest.mark.parametrize("reverse", (False, True), ids=("fwd", "rev"))
@pytest.mark.parametrize("shape", ((1, 1, 5), (33, 7, 4), (200, 5, 70)), ids=str)
def test_scan2d(shape, reverse):
    from tests.kernels import test_scan2d as s2d

    seqlen, nvars, dim = shape
    x = {k: None if v is None else v.cuda() for k, v in s2d.make_inputs(seqlen=seqlen, nvars=nvars, dim=dim).items()}
    outs_ref, grads_ref = s2d.run(x, "naive", reverse, as_double=True)
    outs, grads = s2d.run(x, "triton", reverse)
    for name, ref, out in zip(("h1", "h2", "final_state"), outs_ref, outs):
        assert_close(name, ref, out, TOL[torch.float32])
    for name, ref in grads_ref.items():
        assert_close(f"d{name}", ref, grads[name], TOL[torch.float32])


def test_torch_compile_of_a_model_calling_the_scans():
    from ssmkit.kernels import linear_scan, selective_scan

    def loss(u, delta, A, B, C, a):
        y = selective_scan(torch.tanh(u), delta, A, B, C, delta_softplus=True, reverse=True, backend="triton")
        return (linear_scan(torch.sigmoid(a), y, backend="triton") * 2.0).sum()

    g = torch.Generator().manual_seed(3)
    shapes = [(2, 50, 32), (2, 50, 32), (32, 8), (2, 50, 8), (2, 50, 8), (2, 50, 32)]
    inputs = [torch.randn(*shape, generator=g).cuda() for shape in shapes]
    inputs[2] = -inputs[2].abs()  # A < 0
    eager = [t.clone().requires_grad_(True) for t in inputs]
    compiled = [t.clone().requires_grad_(True) for t in inputs]
    loss(*eager).backward()
    torch.compile(loss)(*compiled).backward()
    for i, (e, c) in enumerate(zip(eager, compiled)):
        assert_close(f"compiled gradient {i}", e.grad, c.grad, 1e-5)
