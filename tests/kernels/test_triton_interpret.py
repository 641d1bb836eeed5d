"""Triton backend under the Triton CPU interpreter (TRITON_INTERPRET=1) against the naive reference.

``triton.jit`` reads TRITON_INTERPRET when a kernel module is imported, so the checks run in ONE subprocess that has
the variable set (this file is its script): nothing leaks into the pytest process, where backend="triton" must keep
rejecting CPU tensors. Each case compares outputs, final states and every gradient (relative RMS, per dtype) with
the helpers of scan_testing.py, at small shapes (the interpreter is slow).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from tests.kernels.scan_testing import interpreter_results, report_interpreter_cases

ROOT = Path(__file__).resolve().parents[2]

# flag sets: index into scan_testing.flag_sets() (all on / all off / D+bias+init+reverse / z+softplus+reverse+lengths)
SELECTIVE_CASES = {
    "sel-L1-N1-G1-f0": dict(seqlen=1, dstate=1, groups=1, flags=0),
    "sel-L7-N4-G2-f1": dict(seqlen=7, dstate=4, groups=2, flags=1),
    "sel-L33-N4-G1-f0": dict(seqlen=33, dstate=4, groups=1, flags=0),
    "sel-L33-N1-G2-f2": dict(seqlen=33, dstate=1, groups=2, flags=2),
    "sel-L33-N4-G2-f3": dict(seqlen=33, dstate=4, groups=2, flags=3),
    "sel-L7-N4-G2-wide-f0": dict(seqlen=7, dstate=4, groups=2, flags=0, dim=144),  # 2 tiles per group, masked
    "sel-L33-N4-G2-bf16-f0": dict(seqlen=33, dstate=4, groups=2, flags=0, dtype=torch.bfloat16),  # packed B/C rows
    "sel-L33-N4-G2-fp16-f2": dict(seqlen=33, dstate=4, groups=2, flags=2, dtype=torch.float16),  # packed B/C rows
    "sel-L33-N2-G1-bf16-f3": dict(seqlen=33, dstate=2, groups=1, flags=3, dtype=torch.bfloat16),  # unpacked rows
    "sel-L9-N16-G1-f1": dict(seqlen=9, dstate=16, groups=1, flags=1),
    # the rows forward with a channel's states over 2 or 4 threads (_ROWS_LANES)
    "sel-L33-N4-G2-lanes2-f0": dict(seqlen=33, dstate=4, groups=2, flags=0, lanes=2),
    "sel-L33-N4-G1-lanes4-bf16-f3": dict(seqlen=33, dstate=4, groups=1, flags=3, lanes=4, dtype=torch.bfloat16),
    "sel-L9-N16-G2-lanes2-bf16-f2": dict(seqlen=9, dstate=16, groups=2, flags=2, lanes=2, dtype=torch.bfloat16),
    "sel-L7-N4-G2-wide-lanes2-f1": dict(seqlen=7, dstate=4, groups=2, flags=1, dim=144, lanes=2),  # 5 tiles per group
    # the backward with at most 2 tiles per group (_BWD_MAX_TILES): 64 channels x 4 states on 2 warps
    "sel-L33-N4-G2-wide-bwdtiles2-f3": dict(seqlen=33, dstate=4, groups=2, flags=3, dim=144, bwd_max_tiles=2),
    # the rows backward (_BWD_KIND = "rows": one channel per thread, persistent grid), every flag set, packed or not
    "sel-L33-N4-G2-bwdrows-f0": dict(seqlen=33, dstate=4, groups=2, flags=0, bwd="rows"),
    "sel-L70-N4-G1-bwdrows-f1": dict(seqlen=70, dstate=4, groups=1, flags=1, bwd="rows"),
    "sel-L33-N2-G2-bwdrows-bf16-f2": dict(seqlen=33, dstate=2, groups=2, flags=2, bwd="rows", dtype=torch.bfloat16),
    "sel-L70-N4-G2-wide-bwdrows-bf16-f3": dict(seqlen=70, dstate=4, groups=2, flags=3, dim=144, bwd="rows",
                                               dtype=torch.bfloat16),
    "sel-L9-N16-G1-bwdrows-fp16-f0": dict(seqlen=9, dstate=16, groups=1, flags=0, bwd="rows", dtype=torch.float16),
    "sel-L40-N4-G2-wide-bwdrows-3progs-f3": dict(seqlen=40, dstate=4, groups=2, flags=3, dim=144, bwd="rows",
                                                 bwd_programs=3),  # 12 work items on 3 persistent programs
    "sel-L40-N3-G2-wide-bwdrows-tilesums-f0": dict(seqlen=40, dstate=3, groups=2, flags=0, dim=144, bwd="rows",
                                                   bwd_tile_sums=True),  # dB / dC sums from a padded [8, BD] tile
    # the [BLOCK_D, BLOCK_N] tile forward (used above _ROWS_MAX_DSTATE states), forced at small N
    "sel-L33-N4-G2-tile-f0": dict(seqlen=33, dstate=4, groups=2, flags=0, kind="tile"),
    "sel-L33-N4-G2-tile-bf16-f3": dict(seqlen=33, dstate=4, groups=2, flags=3, kind="tile", dtype=torch.bfloat16),
}
LINEAR_CASES = {
    "lin-L1": dict(seqlen=1, reverse=False, has_init=False, has_lengths=False),
    "lin-L7-rev-init": dict(seqlen=7, reverse=True, has_init=True, has_lengths=False),
    "lin-L33-init-len": dict(seqlen=33, reverse=False, has_init=True, has_lengths=True),
    "lin-L33-rev-len-wide": dict(seqlen=33, reverse=True, has_init=False, has_lengths=True, dim=40),
    "lin-L33-bf16": dict(seqlen=33, reverse=True, has_init=True, has_lengths=True, dtype=torch.bfloat16),
}
STEP_CASES = {
    "step-G2-all": dict(groups=2, dstate=4, options=True, dtype=torch.float32),
    "step-G1-none": dict(groups=1, dstate=1, options=False, dtype=torch.float32),
    "step-G2-bf16": dict(groups=2, dstate=16, options=True, dtype=torch.bfloat16),
}
CASES = [*SELECTIVE_CASES, *LINEAR_CASES, *STEP_CASES, "deterministic-backward", "torch-compile"]


def _selective_case(case: dict) -> None:
    from ssmkit.kernels.selective_scan import triton as selective_triton
    from tests.kernels.scan_testing import check_selective_backend, flag_sets

    flags = dict(flag_sets()[case["flags"]])
    reverse = flags.pop("reverse")
    groups = case["groups"]
    selective_triton._FWD_KIND = case.get("kind", "rows")
    selective_triton._ROWS_LANES = case.get("lanes", 1)
    selective_triton._BWD_MAX_TILES = case.get("bwd_max_tiles", 0)
    selective_triton._BWD_KIND = case.get("bwd", "tile")
    selective_triton._BWD_ROWS_MAX_PROGRAMS = case.get("bwd_programs", 0)
    selective_triton._BWD_ROWS_TILE_SUMS = case.get("bwd_tile_sums", False)
    try:
        check_selective_backend("triton", reverse=reverse, batch=2, seqlen=case["seqlen"],
                                dim=case.get("dim", 4 * groups), dstate=case["dstate"], groups=groups,
                                dtype=case.get("dtype", torch.float32), seed=case["seqlen"] * 31 + case["dstate"],
                                **flags)
    finally:
        selective_triton._FWD_KIND = "rows"
        selective_triton._ROWS_LANES = 1
        selective_triton._BWD_MAX_TILES = 0
        selective_triton._BWD_KIND = "tile"
        selective_triton._BWD_ROWS_MAX_PROGRAMS = 0
        selective_triton._BWD_ROWS_TILE_SUMS = False


def _linear_case(case: dict) -> None:
    from tests.kernels.scan_testing import check_linear_backend

    check_linear_backend("triton", reverse=case["reverse"], seqlen=case["seqlen"], dim=case.get("dim", 16),
                         has_init=case["has_init"], has_lengths=case["has_lengths"],
                         dtype=case.get("dtype", torch.float32), seed=case["seqlen"])


def _step_case(case: dict) -> None:
    from ssmkit.kernels import selective_state_update
    from ssmkit.kernels.step import _state_update_torch
    from tests.kernels.scan_testing import TOL, assert_close

    g = torch.Generator().manual_seed(7)
    batch, dim, groups, dstate, dtype = 3, 8, case["groups"], case["dstate"], case["dtype"]
    opts = case["options"]
    state = torch.randn(batch, dim, dstate, generator=g)  # [B, D, N] float32
    x = torch.randn(batch, dim, generator=g).to(dtype)  # [B, D]
    dt = (torch.rand(batch, dim, generator=g) * 0.5).to(dtype)  # [B, D]
    A = -torch.exp(torch.randn(dim, dstate, generator=g) * 0.5)  # [D, N]
    B = torch.randn(batch, groups, dstate, generator=g).to(dtype)  # [B, G, N]
    C = torch.randn(batch, groups, dstate, generator=g).to(dtype)  # [B, G, N]
    D = torch.randn(dim, generator=g) if opts else None
    z = torch.randn(batch, dim, generator=g).to(dtype) if opts else None
    bias = torch.randn(dim, generator=g) * 0.3 if opts else None
    ref_state = state.clone()
    y_ref = _state_update_torch(ref_state, x, dt, A, B, C, D, z, bias, opts)
    y = selective_state_update(state, x, dt, A, B, C, D, z, bias, dt_softplus=opts, backend="triton")
    assert y.dtype == dtype and y.shape == (batch, dim), f"y: {y.dtype} {list(y.shape)}"
    assert_close("y", y_ref, y, TOL[dtype])
    assert_close("state (in place)", ref_state, state, TOL[torch.float32])


def _deterministic_case() -> None:
    """Two backward passes give bit-identical gradients (no atomics; partials reduced by torch)."""
    from tests.kernels.scan_testing import make_selective_inputs, run_selective

    x, lengths = make_selective_inputs(batch=2, seqlen=9, dim=144, dstate=4, groups=2, has_init=True)
    _, _, g1 = run_selective(x, lengths, "triton", softplus=True, reverse=False)
    _, _, g2 = run_selective(x, lengths, "triton", softplus=True, reverse=False)
    for name in g1:
        assert torch.equal(g1[name], g2[name]), f"d{name} differs between two identical backward passes"


def _compile_case() -> None:
    """torch.compile of code calling both scans (entry points are compiler-disabled) matches eager, with grads."""
    from ssmkit.kernels import linear_scan, selective_scan

    def loss(u, delta, A, B, C, a):
        y = selective_scan(torch.tanh(u), delta, A, B, C, delta_softplus=True, reverse=True, backend="triton")
        return (linear_scan(torch.sigmoid(a), y, backend="triton") * 2.0).sum()

    g = torch.Generator().manual_seed(3)
    shapes = [(2, 5, 4), (2, 5, 4), (4, 2), (2, 5, 2), (2, 5, 2), (2, 5, 4)]
    inputs = [torch.randn(*shape, generator=g) for shape in shapes]
    inputs[2] = -inputs[2].abs()  # A < 0
    eager = [t.clone().requires_grad_(True) for t in inputs]
    compiled = [t.clone().requires_grad_(True) for t in inputs]
    loss(*eager).backward()
    torch.compile(loss, backend="eager")(*compiled).backward()
    for i, (e, c) in enumerate(zip(eager, compiled)):
        assert torch.allclose(e.grad, c.grad, rtol=1e-6, atol=1e-7), f"compiled gradient {i} differs from eager"


def _run_case(name: str) -> None:
    if name in SELECTIVE_CASES:
        _selective_case(SELECTIVE_CASES[name])
    elif name in LINEAR_CASES:
        _linear_case(LINEAR_CASES[name])
    elif name in STEP_CASES:
        _step_case(STEP_CASES[name])
    elif name == "torch-compile":
        _compile_case()
    else:
        _deterministic_case()


def _worker(names: list[str]) -> None:
    """Subprocess entry: run the cases, print one JSON line {name: "ok" | traceback}."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("this worker needs TRITON_INTERPRET=1")
    torch.set_num_threads(1)
    report_interpreter_cases(names, _run_case)


@pytest.fixture(scope="module", name="interpreter_results")
def interpreter_results_fixture() -> dict:
    return interpreter_results(Path(__file__).resolve(), list(CASES))


@pytest.mark.interpret
@pytest.mark.parametrize("name", CASES)
def test_triton_matches_reference_under_interpreter(interpreter_results, name):
    assert interpreter_results[name] == "ok", f"{name}:\n{interpreter_results[name]}"


if __name__ == "__main__":
    _worker(sys.argv[1:])
