"""Depthwise 1-D convolution along L with an optional SiLU, fused CPU kernels (numba), forward and backward.

The convolution of the Mamba mixers (``ssmkit.core.conv``): in the [B, L, D] layout, kernel width W (2 to 4),

    causal       pre_t = bias + sum_k w[k] x_{t - (W - 1) + k}
    anti-causal  pre_t = bias + sum_k w[k] x_{t + (W - 1) - k}
    y_t = silu(pre_t) (``silu``) or pre_t

where inputs outside [0, length) read as 0 (``lengths`` [B]; the output is computed at every t < L, as the torch
path of ``core.conv`` does after masking the inputs).

Why a kernel: in PyTorch the convolution is W multiply-adds over [B, L, D] plus a padded copy, and its autograd
backward zero-fills a padded [B, L + W - 1, D] gradient per tap and multiplies W more full-size tensors. At the
recommendation shapes (B = 256, L = 50, D = 128) those temporaries dominated a Mamba4Rec training step. Here one
pass per (batch row, channel tile) writes y; the backward recomputes pre_t, and writes dx, the per-row tap and bias
gradients (reduced over rows after the parallel loop, in row order), without any [B, L, D] temporary.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from ._numba_utils import (
    _HELPER_OPTIONS,
    EXP2_CONSTS,
    JIT_OPTIONS,
    exp2_consts,
    match_torch_threads,
    sigmoid,
    tile_width,
    to_f32,
)

__all__ = ["depthwise_conv1d_cpu"]

MAX_TILE = 256  # channels per task
_ONE = np.float32(1.0)
_REDUCE_OPTIONS = dict(cache=True, nogil=True, error_model="numpy")


@numba.njit(**_HELPER_OPTIONS)
def _pre_activation(x, taps, bias, ub, t, length, reverse, ud0, utile, acc):
    """acc[j] = bias + sum_k w[k] x_src (src in [0, length)) for the channels ud0 .. ud0 + utile of row ub at t."""
    width = taps.shape[0]
    for j in range(utile):
        acc[j] = bias[ud0 + j]
    for k in range(width):
        src = t + (width - 1) - k if reverse else t - (width - 1) + k
        if 0 <= src < length:
            usrc, uk = np.uint64(src), np.uint64(k)
            for j in range(utile):
                acc[j] += taps[uk, ud0 + j] * x[ub, usrc, ud0 + j]


@numba.njit(**JIT_OPTIONS)
def _forward(x, taps, bias, lengths, expc, reverse, silu, tile, y):
    """x [B, L, D], taps [W, D], bias [D], lengths int64 [B] -> y [B, L, D] (filled in place).

    [B, L, D] rows are indexed with unsigned integers, as in the scan kernels: with signed indices the channel loops
    stay scalar.
    """
    batch, seqlen, dim = x.shape
    ntiles = dim // tile
    for task in numba.prange(batch * ntiles):
        ek = exp2_consts(expc)
        b = task // ntiles
        d0 = (task % ntiles) * tile
        length = lengths[b]
        ub, ud0, utile = np.uint64(b), np.uint64(d0), np.uint64(tile)
        acc = np.empty(tile, dtype=np.float32)
        for t in range(seqlen):
            ut = np.uint64(t)
            _pre_activation(x, taps, bias, ub, t, length, reverse, ud0, utile, acc)
            if silu:
                for j in range(utile):
                    a = acc[j]
                    y[ub, ut, ud0 + j] = a * sigmoid(a, ek)
            else:
                for j in range(utile):
                    y[ub, ut, ud0 + j] = acc[j]


@numba.njit(**JIT_OPTIONS)
def _backward(x, taps, bias, lengths, expc, reverse, silu, tile, gy, dx, dtaps_rows, dbias_rows, dtaps, dbias):
    """Gradients of ``_forward``: dx [B, L, D] (0 at t >= length), dtaps [W, D], dbias [D] (via per-row partials)."""
    batch, seqlen, dim = x.shape
    width = taps.shape[0]
    ntiles = dim // tile
    for task in numba.prange(batch * ntiles):
        ek = exp2_consts(expc)
        b = task // ntiles
        d0 = (task % ntiles) * tile
        length = lengths[b]
        ub, ud0, utile = np.uint64(b), np.uint64(d0), np.uint64(tile)
        g = np.empty((seqlen, tile), dtype=np.float32)  # gradient of pre_t [L, TD]
        acc = np.empty(tile, dtype=np.float32)
        gtap = np.zeros((width, tile), dtype=np.float32)
        gb = np.zeros(tile, dtype=np.float32)
        for t in range(seqlen):
            ut = np.uint64(t)
            if silu:  # recompute pre_t, then d silu(a) / da = s (1 + a (1 - s))
                _pre_activation(x, taps, bias, ub, t, length, reverse, ud0, utile, acc)
                for j in range(utile):
                    a = acc[j]
                    s = sigmoid(a, ek)
                    g[ut, j] = gy[ub, ut, ud0 + j] * s * (_ONE + a * (_ONE - s))
            else:
                for j in range(utile):
                    g[ut, j] = gy[ub, ut, ud0 + j]
            for j in range(utile):
                gb[j] += g[ut, j]
            for k in range(width):
                src = t + (width - 1) - k if reverse else t - (width - 1) + k
                if 0 <= src < length:
                    usrc, uk = np.uint64(src), np.uint64(k)
                    for j in range(utile):
                        gtap[uk, j] += g[ut, j] * x[ub, usrc, ud0 + j]
        for s_ in range(seqlen):  # dx_s = sum_k w[k] g_t over the outputs t that read x_s
            us = np.uint64(s_)
            for j in range(utile):
                acc[j] = 0.0
            if s_ < length:
                for k in range(width):
                    t = s_ - (width - 1) + k if reverse else s_ + (width - 1) - k
                    if 0 <= t < seqlen:
                        ut, uk = np.uint64(t), np.uint64(k)
                        for j in range(utile):
                            acc[j] += taps[uk, ud0 + j] * g[ut, j]
            for j in range(utile):
                dx[ub, us, ud0 + j] = acc[j]
        for k in range(width):
            for j in range(tile):
                dtaps_rows[b, k, d0 + j] = gtap[k, j]
        for j in range(tile):
            dbias_rows[b, d0 + j] = gb[j]
    _reduce_rows(dtaps_rows, dbias_rows, dtaps, dbias)


@numba.njit(**_REDUCE_OPTIONS)
def _reduce_rows(dtaps_rows, dbias_rows, dtaps, dbias):
    """Sums over batch rows in the order b = 0, 1, ...: [B, W, D] -> [W, D] and [B, D] -> [D]."""
    batch, width, dim = dtaps_rows.shape
    for k in range(width):
        for d in range(dim):
            dtaps[k, d] = dtaps_rows[0, k, d]
    for d in range(dim):
        dbias[d] = dbias_rows[0, d]
    for b in range(1, batch):
        for k in range(width):
            for d in range(dim):
                dtaps[k, d] += dtaps_rows[b, k, d]
        for d in range(dim):
            dbias[d] += dbias_rows[b, d]


def conv_taps(weight: torch.Tensor) -> np.ndarray:
    """The taps of a depthwise weight [D, 1, W] or [D, W] as a float32 array [W, D] (a copy)."""
    return to_f32(weight.detach().reshape(weight.shape[0], -1).t().contiguous())


def conv_forward_np(x: np.ndarray, taps: np.ndarray, bias: np.ndarray, lengths: np.ndarray, reverse: bool,
                    silu: bool) -> np.ndarray:
    """The forward kernel on float32 arrays: x [B, L, D], taps [W, D], bias [D], lengths int64 [B] -> y [B, L, D]."""
    y = np.empty(x.shape, dtype=np.float32)
    _forward(x, taps, bias, lengths, EXP2_CONSTS, reverse, silu, tile_width(x.shape[2], MAX_TILE), y)
    return y


def conv_backward_np(x: np.ndarray, taps: np.ndarray, bias: np.ndarray, lengths: np.ndarray, reverse: bool,
                     silu: bool, gy: np.ndarray, dx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                                           np.ndarray]:
    """The backward kernel on float32 arrays (as ``conv_forward_np``, gy [B, L, D] the gradient of y).

    ``dx`` is an output buffer [B, L, D] or None (a new array); it may be ``gy`` itself: each task reads its rows of
    gy into a local buffer before it writes them.

    Returns:
        (dx [B, L, D], dtaps [W, D], dbias [D]).
    """
    batch, _, dim = x.shape
    width = taps.shape[0]
    f32 = np.float32
    dx = np.empty(x.shape, dtype=f32) if dx is None else dx
    dtaps, dbias = np.empty((width, dim), dtype=f32), np.empty(dim, dtype=f32)
    _backward(x, taps, bias, lengths, EXP2_CONSTS, reverse, silu, tile_width(dim, MAX_TILE), gy, dx,
              np.empty((batch, width, dim), dtype=f32), np.empty((batch, dim), dtype=f32), dtaps, dbias)
    return dx, dtaps, dbias


class _DepthwiseConv1dCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, lengths, reverse, silu):
        match_torch_threads()
        batch, seqlen, dim = x.shape
        bias_np = to_f32(bias) if bias is not None else np.zeros(dim, dtype=np.float32)
        lengths_np = (np.full(batch, seqlen, dtype=np.int64) if lengths is None
                      else lengths.detach().to(torch.int64).contiguous().numpy())
        taps = conv_taps(weight)
        y = conv_forward_np(to_f32(x), taps, bias_np, lengths_np, reverse, silu)
        ctx.save_for_backward(x, weight, bias)
        # x is converted again in the backward: a strided x (a half of in_proj's output) would otherwise keep a
        # contiguous copy alive from the forward to the backward
        ctx.kernel_state = (taps, bias_np, lengths_np, reverse, silu)
        return torch.from_numpy(y)

    @staticmethod
    def backward(ctx, gy):
        match_torch_threads()
        x, weight, bias = ctx.saved_tensors
        taps, bias_np, lengths_np, reverse, silu = ctx.kernel_state
        dx, dtaps, dbias = conv_backward_np(to_f32(x), taps, bias_np, lengths_np, reverse, silu, to_f32(gy))
        dweight = torch.from_numpy(dtaps).t().reshape(weight.shape).to(weight.dtype)  # [D, 1, W] or [D, W]
        return (torch.from_numpy(dx), dweight, torch.from_numpy(dbias) if bias is not None else None,
                None, None, None)


@torch.compiler.disable  # dynamo must not trace into numba
def depthwise_conv1d_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         lengths: torch.Tensor | None, reverse: bool, silu: bool) -> torch.Tensor:
    """Fused depthwise convolution (+ SiLU) on validated float32 CPU inputs.

    Args:
        x: [B, L, D] float32.
        weight: [D, 1, W] or [D, W] float32.
        bias: [D] float32 or None.
        lengths: [B] integers in [1, L] (checked by the caller) or None.
        reverse: anti-causal (``y_t`` reads x_t .. x_{t+W-1}) instead of causal.
        silu: apply SiLU to the output.

    Returns:
        y [B, L, D] float32, differentiable in x, weight and bias.
    """
    return _DepthwiseConv1dCPU.apply(x, weight, bias, lengths, bool(reverse), bool(silu))
