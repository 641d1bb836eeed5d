"""scan2d (2-D time x variate Roesser scan): every backend against the naive double loop, plus bad input.

Outputs, final states and every gradient (a1..a4, u1, u2, initial_state) are compared with the float64 naive
reference by relative RMS (scan_testing.TOL per dtype) over a grid of small shapes, both variate directions, with and
without an initial state. The Triton backend runs under TRITON_INTERPRET=1 in ONE subprocess (this file is its
script, as in test_triton_interpret.py), at a few small shapes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from ssmkit.kernels import linear_scan, scan2d
from tests.kernels.scan_testing import TOL, assert_close, interpreter_results, report_interpreter_cases

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("a1", "a2", "a3", "a4", "u1", "u2", "initial_state")


def make_inputs(batch=2, seqlen=9, nvars=4, dim=3, has_init=True, dtype=torch.float32, seed=0):
    """Realistic coefficients: decays in (0.5, 1), couplings in (0, 0.5), as Chimera's discretization gives."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, seqlen, nvars, dim)
    x = dict(
        a1=torch.rand(shape, generator=g) * 0.5 + 0.5,
        a2=torch.rand(shape, generator=g) * 0.5,
        a3=torch.rand(shape, generator=g) * 0.5,
        a4=torch.rand(shape, generator=g) * 0.5 + 0.5,
        u1=torch.randn(shape, generator=g),
        u2=torch.randn(shape, generator=g),
        initial_state=torch.randn(batch, 2, nvars, dim, generator=g) if has_init else None,
    )
    return {k: None if v is None else v.to(dtype) for k, v in x.items()}


def run(x: dict, backend: str, reverse: bool, as_double: bool = False):
    """Forward + backward of a random linear loss on h1, h2 and the final state; returns outputs and grads."""
    leaves = {k: (v.detach().double() if as_double else v.detach()).requires_grad_(True)
              for k, v in x.items() if v is not None}
    h1, h2, last = scan2d(*(leaves[k] for k in NAMES[:6]), initial_state=leaves.get("initial_state"),
                          return_final_state=True, reverse=reverse, backend=backend)
    g = torch.Generator().manual_seed(1)
    grads_out = [torch.randn(t.shape, generator=g).to(device=t.device, dtype=t.dtype) for t in (h1, h2, last)]
    torch.autograd.backward([h1, h2, last], grads_out)
    return [h1.detach(), h2.detach(), last.detach()], {k: v.grad for k, v in leaves.items()}


def check_backend(backend: str, reverse: bool, **kwargs) -> None:
    x = make_inputs(**kwargs)
    dtype = x["a1"].dtype
    outs_ref, grads_ref = run(x, "naive", reverse, as_double=True)
    outs, grads = run(x, backend, reverse)
    for name, ref, out in zip(("h1", "h2", "final_state"), outs_ref, outs):
        assert out.dtype == dtype, f"{name} dtype {out.dtype} != {dtype}"
        assert_close(name, ref, out, TOL[dtype])
    for name, ref in grads_ref.items():
        assert grads[name] is not None, f"d{name} is missing"
        assert_close(f"d{name}", ref, grads[name], TOL[dtype])


SHAPES = {"T1-V1": (1, 1, 5), "T9-V4": (9, 4, 3), "T33-V7": (33, 7, 4), "T70-V2": (70, 2, 6)}


@pytest.mark.parametrize("reverse", [False, True], ids=["fwd", "rev"])
@pytest.mark.parametrize("has_init", [False, True], ids=["zero-init", "init"])
@pytest.mark.parametrize("shape", list(SHAPES), ids=list(SHAPES))
def test_torch_matches_naive(shape, has_init, reverse):
    seqlen, nvars, dim = SHAPES[shape]
    check_backend("torch", reverse, seqlen=seqlen, nvars=nvars, dim=dim, has_init=has_init, seed=seqlen + nvars)


def test_cpu_and_auto_match_naive():
    """``cpu`` (what ``auto`` picks for CPU tensors) runs the torch implementation."""
    check_backend("cpu", True, seqlen=20, nvars=3, dim=2)
    check_backend("auto", False, seqlen=7, nvars=2, dim=3)


def test_torch_float64_matches_naive():
    check_backend("torch", True, seqlen=20, nvars=3, dim=2, dtype=torch.float64)


def test_uncoupled_grid_is_two_linear_scans():
    """With a2 = a3 = 0, h1 is a linear scan along time and h2 a linear scan along the variates (checks the spec)."""
    x = make_inputs(seqlen=12, nvars=5, dim=3)
    x["a2"], x["a3"] = torch.zeros_like(x["a2"]), torch.zeros_like(x["a3"])
    for reverse in (False, True):
        h1, h2 = scan2d(*(x[k] for k in NAMES[:6]), initial_state=x["initial_state"], reverse=reverse, backend="naive")
        batch, seqlen, nvars, dim = x["a1"].shape
        by_time = linear_scan(x["a1"].transpose(1, 2).reshape(-1, seqlen, dim),
                              x["u1"].transpose(1, 2).reshape(-1, seqlen, dim),
                              initial_state=x["initial_state"][:, 0].reshape(-1, dim), backend="naive")
        by_var = linear_scan(x["a4"].reshape(-1, nvars, dim), x["u2"].reshape(-1, nvars, dim), reverse=reverse,
                             backend="naive")
        assert_close("h1", by_time.reshape(batch, nvars, seqlen, dim).transpose(1, 2), h1, 1e-6)
        assert_close("h2", by_var.reshape(batch, seqlen, nvars, dim), h2, 1e-6)


def test_information_flows_only_forward_in_scan_order():
    """An input at (t, v) changes nothing at earlier times, nor at earlier variates in scan order."""
    x = make_inputs(seqlen=6, nvars=4, dim=2, has_init=False)
    args = [x[k] for k in NAMES[:6]]
    base = scan2d(*args, backend="torch")
    args[4] = args[4].clone()
    args[4][:, 3, 2] += 1.0  # poke u1 at t = 3, v = 2
    poked = scan2d(*args, backend="torch")
    for b, p in zip(base, poked):
        assert torch.equal(b[:, :3], p[:, :3]), "earlier times changed"
        assert torch.equal(b[:, :, :2], p[:, :, :2]), "earlier variates changed"
        assert not torch.equal(b[:, 3:, 2:], p[:, 3:, 2:]), "the poke had no effect downstream"


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(a2=torch.rand(2, 9, 4)), ValueError, r"a2 must have shape \[2, 9, 4, 3\], found \[2, 9, 4\]"),
        (dict(u1=torch.rand(2, 9, 5, 3)), ValueError, r"u1 must have shape \[2, 9, 4, 3\], found \[2, 9, 5, 3\]"),
        (dict(a3=torch.ones(2, 9, 4, 3, dtype=torch.int64)), TypeError, r"a3 must have a floating dtype"),
        (dict(a4=torch.rand(2, 9, 4, 3, dtype=torch.float64)), TypeError, r"a4 must have the dtype of a1"),
        (dict(initial_state=torch.rand(2, 4, 3)), ValueError, r"initial_state must have shape \[2, 2, 4, 3\]"),
        (dict(a1=torch.rand(2, 0, 4, 3)), ValueError, r"a1 must have non-empty dimensions"),
        (dict(a1=[[1.0]]), TypeError, r"a1 must be a torch.Tensor, found list"),
        (dict(backend="cuda"), ValueError, r"backend= must be one of"),
        (dict(backend="triton"), ValueError, r"backend 'triton' needs CUDA tensors"),
    ],
    ids=["a2-rank", "u1-variates", "a3-int", "a4-dtype", "init-shape", "empty", "not-tensor", "backend-name",
         "triton-cpu"],
)
def test_bad_input_raises_before_work(change, error, match, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("SSMKIT_BACKEND", raising=False)
    x = make_inputs(has_init=False)
    kwargs = dict(x, backend="torch")
    kwargs.update(change)
    with pytest.raises(error, match=match):
        scan2d(**kwargs)


# ---- Triton under the CPU interpreter (one subprocess) ----
INTERPRET_CASES = {
    "T1-V1-fwd": dict(seqlen=1, nvars=1, dim=5, has_init=True, reverse=False),
    "T40-V2-rev-init-wide": dict(seqlen=40, nvars=2, dim=34, has_init=True, reverse=True),  # 2 time tiles, 2 blocks
    "T9-V4-fwd": dict(seqlen=9, nvars=4, dim=3, has_init=False, reverse=False),
    "T9-V3-bf16": dict(seqlen=9, nvars=3, dim=4, has_init=True, reverse=True, dtype=torch.bfloat16),
}


def _worker(names: list[str]) -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("this worker needs TRITON_INTERPRET=1")
    torch.set_num_threads(1)

    def run_case(name: str) -> None:
        case = dict(INTERPRET_CASES[name])
        reverse = case.pop("reverse")
        check_backend("triton", reverse, seed=len(name), **case)

    report_interpreter_cases(names, run_case)


@pytest.fixture(scope="module", name="interpreter_results")
def interpreter_results_fixture() -> dict:
    return interpreter_results(Path(__file__).resolve(), list(INTERPRET_CASES))


@pytest.mark.interpret
@pytest.mark.parametrize("name", list(INTERPRET_CASES))
def test_triton_matches_naive_under_interpreter(interpreter_results, name):
    assert interpreter_results[name] == "ok", f"{name}:\n{interpreter_results[name]}"


if __name__ == "__main__":
    _worker(sys.argv[1:])
