"""Shared helpers for the kernel tests: input generation, relative-RMS comparison, forward + all gradients."""

from __future__ import annotations

import torch

from ssmkit.kernels import linear_scan, selective_scan

TOL = {torch.float32: 1e-5, torch.float64: 1e-10, torch.bfloat16: 1e-2, torch.float16: 5e-3}

SELECTIVE_GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")


def rel_rms(ref: torch.Tensor, out: torch.Tensor) -> float:
    """sqrt(mean((ref - out)^2)) / sqrt(mean(ref^2)) computed in float64 (0 when both are 0)."""
    ref, out = ref.detach().double(), out.detach().double()
    num = (ref - out).pow(2).mean().sqrt()
    den = ref.pow(2).mean().sqrt()
    if float(den) == 0.0:
        return float(num)
    return float(num / den)


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, tol: float) -> None:
    """Relative-RMS comparison that names the tensor and shows the error."""
    assert ref.shape == out.shape, f"{name}: shape {list(out.shape)} != reference {list(ref.shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err = rel_rms(ref, out)
    assert err <= tol, f"{name}: relative RMS error {err:.3e} > {tol:.1e}"


def make_selective_inputs(batch=2, seqlen=64, dim=8, dstate=4, groups=1, has_D=True, has_z=True, has_bias=True,
                          softplus=True, has_init=False, has_lengths=False, dtype=torch.float32, seed=0,
                          bc_4d=None, device="cpu"):
    """Random, realistic selective-scan inputs (A < 0, positive step sizes) as a dict of leaf tensors."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device)

    bc_shape = (batch, seqlen, groups, dstate) if (groups > 1 or bc_4d) else (batch, seqlen, dstate)
    x = dict(
        u=rnd(batch, seqlen, dim).to(dtype),
        delta=(rnd(batch, seqlen, dim, scale=0.5, shift=-1.0) if softplus
               else torch.rand(batch, seqlen, dim, generator=g).to(device) * 0.5 + 0.01).to(dtype),
        A=-torch.exp(rnd(dim, dstate, scale=0.5)),
        B=rnd(*bc_shape).to(dtype),
        C=rnd(*bc_shape).to(dtype),
        D=rnd(dim) if has_D else None,
        z=rnd(batch, seqlen, dim).to(dtype) if has_z else None,
        # without softplus the step size is used as is: keep delta + delta_bias > 0, as a real model would
        delta_bias=(rnd(dim, scale=0.3) if softplus else rnd(dim, scale=0.1).abs()) if has_bias else None,
        initial_state=rnd(batch, dim, dstate) if has_init else None,
    )
    lengths = None
    if has_lengths:
        lengths = torch.randint(1, seqlen + 1, (batch,), generator=g).to(device)
        lengths[0] = seqlen
    return x, lengths


def run_selective(x: dict, lengths, backend: str, softplus: bool, reverse: bool, seed: int = 1,
                  as_double: bool = False):
    """Forward + backward of a random loss on y and the final state; returns (y, final_state, grads dict)."""
    leaves = {k: (v.detach().double() if as_double else v.detach()).requires_grad_(True)
              for k, v in x.items() if v is not None}
    args = {k: leaves.get(k) for k in x}
    y, state = selective_scan(**args, delta_softplus=softplus, return_final_state=True, reverse=reverse,
                              lengths=lengths, backend=backend)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g).to(device=y.device, dtype=y.dtype)
    gs = torch.randn(state.shape, generator=g).to(device=state.device, dtype=state.dtype)
    torch.autograd.backward([y, state], [gy, gs])
    return y.detach(), state.detach(), {k: v.grad for k, v in leaves.items()}


def check_selective_backend(backend: str, tol: float | None = None, reverse: bool = False, **kwargs) -> None:
    """Compare ``backend`` against the float64 naive reference: output, final state and every gradient."""
    softplus = kwargs.get("softplus", True)
    x, lengths = make_selective_inputs(**kwargs)
    dtype = x["u"].dtype
    tol = TOL[dtype] if tol is None else tol
    y_ref, s_ref, g_ref = run_selective(x, lengths, "naive", softplus, reverse, as_double=True)
    y, s, grads = run_selective(x, lengths, backend, softplus, reverse)
    assert y.dtype == dtype, f"y dtype {y.dtype} != u dtype {dtype}"
    assert s.dtype == torch.float32, f"final_state dtype {s.dtype} != float32"
    assert_close("y", y_ref, y, tol)
    assert_close("final_state", s_ref, s, tol)
    for name, ref in g_ref.items():
        assert grads[name] is not None, f"d{name} is missing"
        assert grads[name].dtype == x[name].dtype, f"d{name} dtype {grads[name].dtype} != {x[name].dtype}"
        assert_close(f"d{name}", ref, grads[name], tol)


def make_linear_inputs(batch=2, seqlen=64, dim=8, has_init=False, has_lengths=False, dtype=torch.float32, seed=0,
                       device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = dict(
        a=torch.rand(batch, seqlen, dim, generator=g).mul(0.5).add(0.5).to(device=device, dtype=dtype),
        b=torch.randn(batch, seqlen, dim, generator=g).to(device=device, dtype=dtype),
        initial_state=torch.randn(batch, dim, generator=g).to(device) if has_init else None,
    )
    lengths = None
    if has_lengths:
        lengths = torch.randint(1, seqlen + 1, (batch,), generator=g).to(device)
        lengths[0] = seqlen
    return x, lengths


def run_linear(x: dict, lengths, backend: str, reverse: bool, seed: int = 1, as_double: bool = False):
    leaves = {k: (v.detach().double() if as_double else v.detach()).requires_grad_(True)
              for k, v in x.items() if v is not None}
    args = {k: leaves.get(k) for k in x}
    h, state = linear_scan(**args, return_final_state=True, reverse=reverse, lengths=lengths, backend=backend)
    g = torch.Generator().manual_seed(seed)
    gh = torch.randn(h.shape, generator=g).to(device=h.device, dtype=h.dtype)
    gs = torch.randn(state.shape, generator=g).to(device=state.device, dtype=state.dtype)
    torch.autograd.backward([h, state], [gh, gs])
    return h.detach(), state.detach(), {k: v.grad for k, v in leaves.items()}


def check_linear_backend(backend: str, tol: float | None = None, reverse: bool = False, **kwargs) -> None:
    """Compare ``backend`` against the float64 naive reference: output, final state and every gradient."""
    x, lengths = make_linear_inputs(**kwargs)
    dtype = x["a"].dtype
    tol = TOL[dtype] if tol is None else tol
    h_ref, s_ref, g_ref = run_linear(x, lengths, "naive", reverse, as_double=True)
    h, s, grads = run_linear(x, lengths, backend, reverse)
    assert h.dtype == dtype
    assert s.dtype == torch.float32
    assert_close("h", h_ref, h, tol)
    assert_close("final_state", s_ref, s, tol)
    for name, ref in g_ref.items():
        assert grads[name] is not None, f"d{name} is missing"
        assert grads[name].dtype == x[name].dtype, f"d{name} dtype {grads[name].dtype} != {x[name].dtype}"
        assert_close(f"d{name}", ref, grads[name], tol)


def flag_sets():
    """Flag combinations covering each option on and off, in pairs (D, z, bias, softplus, init, reverse, lengths)."""
    return [
        dict(has_D=True, has_z=True, has_bias=True, softplus=True, has_init=True, reverse=False, has_lengths=True),
        dict(has_D=False, has_z=False, has_bias=False, softplus=False, has_init=False, reverse=False,
             has_lengths=False),
        dict(has_D=True, has_z=False, has_bias=True, softplus=False, has_init=True, reverse=True, has_lengths=False),
        dict(has_D=False, has_z=True, has_bias=False, softplus=True, has_init=False, reverse=True, has_lengths=True),
    ]


INTERPRET_MARK = "TRITON_INTERPRET_RESULTS="  # prefix of the worker's result line on stdout


def report_interpreter_cases(names: list[str], run_case) -> None:
    """Worker side: run each named case (``run_case(name)`` raises on a mismatch), print one JSON result line."""
    import json
    import traceback

    results = {}
    for name in names:
        try:
            run_case(name)
            results[name] = "ok"
        except Exception:  # reported per case by the pytest side
            results[name] = traceback.format_exc(limit=4)
    print(INTERPRET_MARK + json.dumps(results), flush=True)


def interpreter_results(script, names: list[str]) -> dict:
    """pytest side: run ``script`` as a worker under ``TRITON_INTERPRET=1`` and return ``{case: "ok" | traceback}``."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(script), *names], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(INTERPRET_MARK)]
    assert proc.returncode == 0 and lines, f"interpreter worker failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(lines[-1][len(INTERPRET_MARK):])
