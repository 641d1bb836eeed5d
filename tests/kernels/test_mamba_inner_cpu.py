"""The fused Mamba-1 inner path on the CPU (``ssmkit.kernels.mamba_inner_cpu``) against plain PyTorch.

The reference is the mixer written with ``F.linear``, ``F.conv1d`` and the naive (loop) selective scan, run in
float64; the fused Function runs in float32 (its kernels are float32 only), so outputs and every gradient are
compared with float32 tolerances. A finite-difference gradcheck runs in float32 at tiny shapes with matching
tolerances (a float64 gradcheck is not possible: the kernels compute in float32). The scan and convolution kernels'
in-place use (gradient buffers that alias their inputs) is checked against separate buffers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssmkit.kernels import selective_scan
from ssmkit.kernels.conv1d_cpu import conv_backward_np, conv_forward_np
from ssmkit.kernels.mamba_inner_cpu import mamba_inner_cpu
from ssmkit.kernels.selective_scan.cpu import gate_np, scan_backward_np, scan_forward_np

NAMES = ("h", "in_weight", "in_bias", "conv_weight", "conv_bias", "x_proj_weight", "dt_weight", "dt_bias", "A", "D",
         "out_weight", "out_bias")


def _inputs(d_model: int = 6, dim: int = 8, dt_rank: int = 2, dstate: int = 3, width: int = 4, batch: int = 3,
            seqlen: int = 11, bias: bool = True, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Random float64 inputs of ``mamba_inner_cpu`` (h [B, L, d_model] and the mixer's weights)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.5) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    return {"h": rand(batch, seqlen, d_model, scale=1.0), "in_weight": rand(2 * dim, d_model),
            "in_bias": rand(2 * dim) if bias else None, "conv_weight": rand(dim, 1, width),
            "conv_bias": rand(dim), "x_proj_weight": rand(dt_rank + 2 * dstate, dim),
            "dt_weight": rand(dim, dt_rank), "dt_bias": rand(dim) - 1.0,
            "A": -torch.rand(dim, dstate, generator=g, dtype=torch.float64) * 2 - 0.1, "D": rand(dim),
            "out_weight": rand(d_model, dim), "out_bias": rand(d_model) if bias else None}


def _reference(h, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_weight, dt_bias, A, D, out_weight,
               out_bias, lengths=None, reverse=False) -> torch.Tensor:
    """The same mixer in plain PyTorch: [B, L, d_model] -> [B, L, d_out]."""
    seqlen, width = h.shape[1], conv_weight.shape[-1]
    dt_rank, dstate = dt_weight.shape[1], A.shape[1]
    x, z = F.linear(h, in_weight, in_bias).chunk(2, dim=-1)  # [B, L, E] each
    if lengths is not None:
        x = x.masked_fill((torch.arange(seqlen)[None, :] >= lengths[:, None])[:, :, None], 0.0)  # [B, L, E]
    xt = x.transpose(1, 2)  # [B, E, L]
    xt = xt.flip(-1) if reverse else xt
    conv = F.conv1d(xt, conv_weight, conv_bias, padding=width - 1, groups=xt.shape[1])[..., :seqlen]  # [B, E, L]
    u = F.silu(conv.flip(-1) if reverse else conv).transpose(1, 2)  # [B, L, E]
    dt, B, C = torch.split(F.linear(u, x_proj_weight), [dt_rank, dstate, dstate], dim=-1)
    y = selective_scan(u, F.linear(dt, dt_weight), A, B, C, D, z=z, delta_bias=dt_bias, delta_softplus=True,
                       reverse=reverse, lengths=lengths, backend="naive")  # [B, L, E]
    return F.linear(y, out_weight, out_bias)


def _output_and_grads(fn, inputs: dict, gout: torch.Tensor, **kwargs) -> tuple[torch.Tensor, dict]:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items() if v is not None}
    out = fn(**{k: leaves.get(k) for k in NAMES}, **kwargs)
    grads = torch.autograd.grad(out, list(leaves.values()), gout.to(out.dtype))
    return out, dict(zip(leaves, grads))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_matches_plain_pytorch(reverse, bias, with_lengths):
    inputs = _inputs(bias=bias)
    lengths = torch.tensor([11, 6, 1]) if with_lengths else None
    gout = torch.randn(3, 11, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref, ref_grads = _output_and_grads(_reference, inputs, gout, lengths=lengths, reverse=reverse)
    inputs32 = {k: v.float() if v is not None else None for k, v in inputs.items()}
    out, grads = _output_and_grads(mamba_inner_cpu, inputs32, gout, lengths=lengths, reverse=reverse)
    valid = torch.ones(3, 11, 1, dtype=torch.bool) if lengths is None else \
        (torch.arange(11)[None, :] < lengths[:, None])[:, :, None]  # [B, L, 1]
    # positions past a row's length carry out_proj's bias only (the mixer masks them after out_proj)
    torch.testing.assert_close(out.double().masked_fill(~valid, 0), ref.masked_fill(~valid, 0), rtol=1e-4,
                               atol=1e-5)
    assert set(grads) == set(ref_grads)
    for name, ref_grad in ref_grads.items():
        torch.testing.assert_close(grads[name].double(), ref_grad, rtol=1e-4, atol=1e-4, msg=f"d{name}")


@pytest.mark.filterwarnings("ignore:Input #")  # gradcheck's note on float32 inputs
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float32_tiny(reverse):
    inputs = _inputs(d_model=3, dim=4, dt_rank=1, dstate=2, width=3, batch=2, seqlen=5, seed=3)
    names = [k for k in NAMES if inputs[k] is not None]
    leaves = [inputs[k].float().requires_grad_() for k in names]
    lengths = torch.tensor([5, 3])

    def fn(*tensors):
        return mamba_inner_cpu(**dict(zip(names, tensors)), lengths=lengths, reverse=reverse)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-2, atol=2e-2, rtol=2e-2)


def _scan_arrays(batch=3, seqlen=70, dim=16, dstate=4, seed=0):
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return dict(u=rand(batch, seqlen, dim), delta=rand(batch, seqlen, dim, scale=0.5), bias=rand(dim, scale=0.5),
                A=-np.abs(rand(dim, dstate)) - 0.1, Bm=rand(batch, seqlen, 1, dstate),
                Cm=rand(batch, seqlen, 1, dstate),
                Dv=rand(dim), z=rand(batch, seqlen, dim), gy=rand(batch, seqlen, dim))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", [[70, 70, 70], [70, 33, 1]])
def test_scan_backward_in_place_equals_new_buffers(reverse, lengths):
    a = _scan_arrays()
    lengths = np.array(lengths, dtype=np.int64)
    partial = bool((lengths < 70).any())
    args = (a["bias"], a["A"], a["Bm"], a["Cm"], a["Dv"], a["z"], None, lengths, True, reverse)
    y, p, _, checkpoints = scan_forward_np(a["u"], a["delta"], *args, partial)
    np.testing.assert_array_equal(gate_np(p, a["z"]), y)  # the recomputed gated output is the forward's
    fresh = scan_backward_np(a["u"], a["delta"], *args, p, checkpoints, a["gy"], None)
    u, delta, gy = a["u"].copy(), a["delta"].copy(), a["gy"].copy()
    for b, length in enumerate(lengths):  # the scan skips t >= length: stale values there must not leak
        u[b, length:], delta[b, length:], gy[b, length:] = 7.0, 7.0, 7.0
    shared = scan_backward_np(u, delta, *args, p, checkpoints, gy, None, du=u, ddelta=delta, dz=gy)
    assert shared[0] is u and shared[1] is delta and shared[2] is gy
    for name, x, y_ in zip(("du", "ddelta", "dz", "dA", "dB", "dC", "dD", "dbias"), fresh, shared):
        np.testing.assert_allclose(y_, x, rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("reverse", [False, True])
def test_conv_backward_in_place_equals_new_buffer(reverse):
    rng = np.random.default_rng(1)
    x, gy = (rng.standard_normal((3, 9, 16)).astype(np.float32) for _ in range(2))
    taps, bias = rng.standard_normal((4, 16)).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    lengths = np.array([9, 4, 1], dtype=np.int64)
    conv_forward_np(x, taps, bias, lengths, reverse, True)
    fresh = conv_backward_np(x, taps, bias, lengths, reverse, True, gy)
    shared_gy = gy.copy()
    shared = conv_backward_np(x, taps, bias, lengths, reverse, True, shared_gy, dx=shared_gy)
    assert shared[0] is shared_gy
    for x_, y_ in zip(fresh, shared):
        np.testing.assert_array_equal(y_, x_)
