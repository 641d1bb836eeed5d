"""The Mamba-1 mixer's path from ``in_proj`` to ``out_proj`` as one autograd Function on the CPU (numba).

The CPU counterpart of mamba_ssm's ``mamba_inner_fn`` (``mamba_ssm/ops/selective_scan_interface.py``,
``checkpoint_lvl=1``). In the [B, L, D] layout (E = d_inner, R = dt_rank, N = d_state, M = B * L):

    x, z  = in_proj(h)                                 # [B, L, E] each (two halves of one [2, B, L, E] buffer)
    u     = silu(depthwise conv1d(x))                  # causal (anti-causal with ``reverse``), reads t < length
    x_dbl = x_proj(u) = (dt, B, C)                     # [B, L, R + 2N]
    delta = dt_proj.weight dt                          # [B, L, E]
    y     = selective_scan(u, delta, A, B, C, D, z, dt_proj.bias, softplus)   # [B, L, E]
    out   = out_proj(y)                                # [B, L, d_model]

What the forward keeps for the backward, as mamba_ssm does: the input h, x and z (the ``xz`` buffer), x_dbl, the
scan's output before the gate p and its state checkpoints. The backward recomputes the elementwise or rank-R parts:
u (the convolution, twice: for the scan, and for x_proj's weight gradient after the scan), delta (a rank-R product),
the scan's step sizes (inside the kernel) and y = p * silu(z) (for out_proj's weight gradient). The matrix products
of in_proj, x_proj and out_proj are not recomputed. Gradient buffers are reused in place: the gradient of y is
written into the buffer that becomes dz, du overwrites u and ddelta overwrites delta (the scan kernel reads each
element before it writes it), and the convolution's input gradient overwrites its output gradient.

At Mamba4Rec's max_len 200 (B = 64, E = 128, N = 32) this keeps 2 + 1 + 0.53 + ~1 [B, L, E]-sized tensors instead
of about 10 (the composed autograd graph also keeps u, delta, dt, y, copies of z and x, and the dz / dx buffers are
not shared), which is what lets a training step use under half of SASRec's memory there.

With ``matmul_dtype`` (bfloat16 autocast) the four large products run as autocast runs ``F.linear``, with fewer
conversions: h is cast once and kept in bfloat16 (half the bytes of a float32 copy), x and z come from one
[M, d_model] x [d_model, 2E] product, the output stays bfloat16 (autocast's F.linear dtype), the bfloat16 weights are
cast once per call, and the backward packs dx and dz into one bfloat16 [M, 2E] buffer, so that h's gradient and
in_proj's weight gradient are one product each. On S-Mamba's ETTh1 step (M = 352, d_model = E = 256) a first
version of this (before the weights were cast once) took a training step from 35.3 to 33.7 ms (median of 155
interleaved steps, one thread).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._numba_utils import match_torch_threads, to_f32
from .conv1d_cpu import conv_backward_np, conv_forward_np, conv_taps
from .selective_scan.cpu import gate_np, scan_backward_np, scan_forward_np

__all__ = ["mamba_inner_cpu"]


def _linear_into(out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """out [M, O] = x [M, I] @ weight [O, I]^T (+ bias [O]) in float32, written in place (rounded as F.linear)."""
    if bias is None:
        torch.mm(x, weight.t(), out=out)
    else:
        torch.addmm(bias, x, weight.t(), out=out)


def _bc_arrays(x_dbl: torch.Tensor, dt_rank: int, dstate: int) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous float32 copies of B and C [B, L, 1, N] from x_dbl [B, L, R + 2N]."""
    B = to_f32(x_dbl[..., dt_rank:dt_rank + dstate])[:, :, None, :]  # [B, L, 1, N]
    C = to_f32(x_dbl[..., dt_rank + dstate:])[:, :, None, :]  # [B, L, 1, N]
    return B, C


class _MambaInnerCPU(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx, h, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_weight, dt_bias, A, D,
                out_weight, out_bias, lengths, reverse, low):
        match_torch_threads()
        ctx.h_dtype, ctx.h_shape, ctx.low = h.dtype, h.shape, low
        batch, seqlen, _ = h.shape
        dim, dt_rank, dstate = dt_weight.shape[0], dt_weight.shape[1], A.shape[1]
        xz = torch.empty(2, batch, seqlen, dim, dtype=torch.float32)  # x and z, each contiguous float32 [B, L, E]
        low_weights = None
        if low is None:
            h2 = h.float().reshape(batch * seqlen, -1)  # [M, d_model]
            _linear_into(xz[0].view(-1, dim), h2, in_weight[:dim], in_bias[:dim] if in_bias is not None else None)
            _linear_into(xz[1].view(-1, dim), h2, in_weight[dim:], in_bias[dim:] if in_bias is not None else None)
        else:
            h2 = h.reshape(batch * seqlen, -1).to(low)  # [M, d_model]; kept for the backward in ``low`` only
            low_weights = (in_weight.to(low), out_weight.to(low))  # cast once, kept for the backward
            xz_low = torch.mm(h2, low_weights[0].t())  # [M, 2E]: x and z from one product
            xz.view(2, -1, dim).copy_(xz_low.view(-1, 2, dim).transpose(0, 1))
            if in_bias is not None:
                xz.view(2, -1, dim).add_(in_bias.view(2, 1, dim))
        lengths_np = (np.full(batch, seqlen, dtype=np.int64) if lengths is None
                      else lengths.detach().to(torch.int64).contiguous().numpy())
        partial = bool((lengths_np < seqlen).any())
        conv = (conv_taps(conv_weight), to_f32(conv_bias) if conv_bias is not None else np.zeros(dim, np.float32),
                lengths_np, bool(reverse), True)
        u = torch.from_numpy(conv_forward_np(xz[0].numpy(), *conv))  # [B, L, E]
        x_dbl = F.linear(u, x_proj_weight)  # [B, L, R + 2N]
        delta = F.linear(x_dbl[..., :dt_rank], dt_weight)  # [B, L, E]
        scan = (to_f32(dt_bias), to_f32(A))
        y, p, _, checkpoints = scan_forward_np(u.numpy(), delta.numpy(), *scan, *_bc_arrays(x_dbl, dt_rank, dstate),
                                               to_f32(D), xz[1].numpy(), None, lengths_np, True, bool(reverse),
                                               partial)
        del u, delta
        y2 = torch.from_numpy(y).view(-1, dim)  # [M, E]
        if low is None:
            out = torch.empty(batch, seqlen, out_weight.shape[0], dtype=torch.float32)  # [B, L, d_model]
            _linear_into(out.view(-1, out.shape[-1]), y2, out_weight, out_bias)
        else:  # as autocast runs F.linear: factors and product in ``low``
            out = F.linear(y2.to(low), low_weights[1], out_bias.to(low) if out_bias is not None else None)
            out = out.view(batch, seqlen, -1)  # [B, L, d_model]
        ctx.save_for_backward(h2, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_weight, A, D,
                              out_weight, out_bias, xz, x_dbl, torch.from_numpy(p))
        ctx.kernel_state = (conv, scan, checkpoints, low_weights)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, gout):
        match_torch_threads()
        (h2, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_weight, A, D, out_weight, out_bias, xz,
         x_dbl, p) = ctx.saved_tensors
        conv, scan, checkpoints, low_weights = ctx.kernel_state
        low = ctx.low
        batch, seqlen, dim = p.shape
        dt_rank, dstate = dt_weight.shape[1], A.shape[1]
        g2 = gout.reshape(batch * seqlen, -1)  # [M, d_model]
        g2 = g2.float() if low is None else g2.to(low)
        x_np, z_np = xz[0].numpy(), xz[1].numpy()  # [B, L, E] each
        d_out_weight = _out_proj_weight_grad(g2, p, xz[1])
        d_out_bias = gout.reshape(batch * seqlen, -1).sum(0, dtype=torch.float32) if out_bias is not None else None
        gz = torch.empty(batch, seqlen, dim, dtype=torch.float32)  # the gradient of y, then (in place) dz [B, L, E]
        if low is None:
            torch.mm(g2, out_weight, out=gz.view(-1, dim))
        else:
            gz.view(-1, dim).copy_(torch.mm(g2, low_weights[1]))
        du = torch.from_numpy(conv_forward_np(x_np, *conv))  # u, then (in place) du [B, L, E]
        ddelta = F.linear(x_dbl[..., :dt_rank], dt_weight)  # delta, then (in place) ddelta [B, L, E]
        _, _, _, dA, dB, dC, dD, ddt_bias, _ = scan_backward_np(
            du.numpy(), ddelta.numpy(), *scan, *_bc_arrays(x_dbl, dt_rank, dstate), to_f32(D), z_np, None, conv[2],
            True, conv[3], p.numpy(), checkpoints, gz.numpy(), None, du=du.numpy(), ddelta=ddelta.numpy(),
            dz=gz.numpy())
        d_x_dbl, d_dt_weight = _x_dbl_grad(ddelta, x_dbl, dt_weight, dB, dC)
        del ddelta
        d_in_bias_z = gz.view(-1, dim).sum(0) if in_bias is not None else None
        if low is None:  # z's half of in_proj now, so that gz is freed before u is recomputed
            d_in_weight = torch.empty_like(in_weight)  # [2E, d_model]
            torch.mm(gz.view(-1, dim).t(), h2, out=d_in_weight[dim:])
            dh = torch.mm(gz.view(-1, dim), in_weight[dim:])  # [M, d_model]
        else:
            dxz = torch.empty(batch * seqlen, 2 * dim, dtype=low)  # [M, 2E]: dx and dz, the factors of in_proj
            dxz[:, dim:].copy_(gz.view(-1, dim))
        del gz
        u = torch.from_numpy(conv_forward_np(x_np, *conv))  # recomputed once more, for x_proj's weight gradient
        d_x_proj_weight = torch.mm(d_x_dbl.t(), u.view(-1, dim))  # [R + 2N, E]
        del u
        du.view(-1, dim).addmm_(d_x_dbl, x_proj_weight)  # + the gradient through x_proj
        _, dtaps, d_conv_bias = conv_backward_np(x_np, *conv, gy=du.numpy(), dx=du.numpy())  # du becomes dx
        if low is None:
            dh.addmm_(du.view(-1, dim), in_weight[:dim])
            torch.mm(du.view(-1, dim).t(), h2, out=d_in_weight[:dim])
        else:  # both halves of in_proj in one product each
            dxz[:, :dim].copy_(du.view(-1, dim))
            dh = torch.mm(dxz, low_weights[0])  # [M, d_model] in ``low``
            d_in_weight = torch.mm(dxz.t(), h2).float()  # [2E, d_model]
        d_in_bias = torch.cat([du.view(-1, dim).sum(0), d_in_bias_z]) if in_bias is not None else None
        d_conv_weight = torch.from_numpy(dtaps).t().reshape(conv_weight.shape)  # [E, 1, W]
        return (dh.view(ctx.h_shape).to(ctx.h_dtype), d_in_weight, d_in_bias, d_conv_weight,
                torch.from_numpy(d_conv_bias) if conv_bias is not None else None, d_x_proj_weight, d_dt_weight,
                torch.from_numpy(ddt_bias), torch.from_numpy(dA), torch.from_numpy(dD), d_out_weight, d_out_bias,
                None, None, None)


def _out_proj_weight_grad(g2: torch.Tensor, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """out_proj's weight gradient [d_model, E] in float32 from g2 [M, d_model] (float32, or the low dtype of
    the products), recomputing y = p * silu(z) [B, L, E] (freed on return)."""
    y = torch.from_numpy(gate_np(p.numpy(), z.numpy())).view(-1, p.shape[-1])  # [M, E]
    return torch.mm(g2.t(), y.to(g2.dtype)).float()


def _x_dbl_grad(ddelta: torch.Tensor, x_dbl: torch.Tensor, dt_weight: torch.Tensor, dB: np.ndarray,
                dC: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of x_dbl [M, R + 2N] (from ddelta [B, L, E], dB, dC [B, L, 1, N]) and of dt_proj.weight [E, R].

    The rank-R products are ordered as in ``ssmkit.core.narrow_linear`` (fast on the CPU BLAS).
    """
    dim, dt_rank = dt_weight.shape
    dstate = dB.shape[-1]
    g2 = ddelta.view(-1, dim)  # [M, E]
    dt2 = x_dbl.view(-1, x_dbl.shape[-1])[:, :dt_rank]  # [M, R]
    d_x_dbl = x_dbl.new_empty(g2.shape[0], dt_rank + 2 * dstate)  # [M, R + 2N]
    d_x_dbl[:, :dt_rank] = (dt_weight.t() @ g2.t()).t()
    d_x_dbl[:, dt_rank:dt_rank + dstate] = torch.from_numpy(dB).view(-1, dstate)
    d_x_dbl[:, dt_rank + dstate:] = torch.from_numpy(dC).view(-1, dstate)
    return d_x_dbl, (dt2.t() @ g2).t()


@torch.compiler.disable  # dynamo must not trace into numba
def mamba_inner_cpu(h: torch.Tensor, in_weight: torch.Tensor, in_bias: torch.Tensor | None, conv_weight: torch.Tensor,
                    conv_bias: torch.Tensor | None, x_proj_weight: torch.Tensor, dt_weight: torch.Tensor,
                    dt_bias: torch.Tensor, A: torch.Tensor, D: torch.Tensor, out_weight: torch.Tensor,
                    out_bias: torch.Tensor | None, lengths: torch.Tensor | None = None,
                    reverse: bool = False, matmul_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mamba-1's in_proj -> conv1d + SiLU -> x_proj -> dt_proj -> selective scan (softplus, gate z) -> out_proj.

    Float32 CPU weights (validated by the caller, ``ssmkit.core.mixers.Mamba``); h float32, or any float dtype
    when ``matmul_dtype`` is set. Equal up to float rounding to
    the composition of ``F.linear``, ``causal_conv1d`` (``anticausal_conv1d`` with ``reverse``) and ``selective_scan``
    (module docstring), with less memory kept for the backward.

    Args:
        h: input [B, L, d_model].
        in_weight: [2E, d_model]; in_bias: [2E] or None.
        conv_weight: [E, 1, W]; conv_bias: [E] or None.
        x_proj_weight: [R + 2N, E].
        dt_weight: [E, R]; dt_bias: [E] (the scan's ``delta_bias``, softplus on).
        A: [E, N] (``-exp(A_log)``); D: [E].
        out_weight: [d_out, E]; out_bias: [d_out] or None.
        lengths: [B] integers in [1, L] (checked by the caller) or None.
        reverse: anti-causal convolution and right-to-left scan.
        matmul_dtype: None (float32 throughout), or the autocast dtype (bfloat16): then the products of in_proj and
            out_proj and their gradients (the large ones) take factors in that dtype, as ``torch.autocast`` runs
            ``F.linear``; x_proj, dt_proj, the convolution and the scan stay in float32.

    Returns:
        [B, L, d_out] in float32, or in ``matmul_dtype`` when set (as autocast's F.linear returns it);
        differentiable in h (gradient in h's dtype) and every weight (float32 gradients), not in lengths.
    """
    with torch.autocast("cpu", enabled=False):  # the dtypes are chosen here, not by an enclosing autocast
        return _MambaInnerCPU.apply(h, in_weight, in_bias, conv_weight, conv_bias, x_proj_weight, dt_weight, dt_bias,
                                    A, D, out_weight, out_bias, lengths, bool(reverse), matmul_dtype)
