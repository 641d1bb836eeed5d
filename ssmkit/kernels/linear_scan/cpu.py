"""Linear scan ``h_t = a_t * h_{t-1} + b_t``, fused CPU kernel (numba): forward and backward.

One prange task per (batch row b, tile of channels); the channel loop is innermost (contiguous in [B, L, D]) and
vectorizes. The op is memory-bound (two reads and one write per element), so the forward keeps its float32 output
h for the backward instead of recomputing it. Backward (g = incoming gradient of h, G the adjoint of the state):
    G_t = g_t + a_{t+1} G_{t+1},   db_t = G_t,   da_t = G_t * h_{t-1},   d initial_state = a_first * G_first
(indices follow the scan direction; positions >= length get zero gradients). Every task writes disjoint outputs,
so the result does not depend on the thread count.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._numba_utils import JIT_OPTIONS, match_torch_threads, tile_width, to_f32

__all__ = ["linear_scan"]

MAX_TILE = 64  # channels per task


@numba.njit(**JIT_OPTIONS)
def _forward(a, b, h0, lengths, reverse, tile, h, final):
    """Forward over all (batch, channel-tile) tasks.

    Args (float32): a, b [B, L, D]; h0 [B, D]; lengths int64 [B]; reverse runtime boolean; tile int.
    Outputs: h [B, L, D] (zero-filled by the caller), final [B, D].
    """
    batch, _, dim = a.shape
    ntiles = dim // tile
    for task in numba.prange(batch * ntiles):
        r = task // ntiles
        d0 = (task % ntiles) * tile
        length = lengths[r]
        state = np.empty(tile, dtype=np.float32)
        for j in range(tile):
            state[j] = h0[r, d0 + j]
        for s in range(length):
            t = length - 1 - s if reverse else s
            for j in range(tile):
                state[j] = a[r, t, d0 + j] * state[j] + b[r, t, d0 + j]
                h[r, t, d0 + j] = state[j]
        for j in range(tile):
            final[r, d0 + j] = state[j]


@numba.njit(**JIT_OPTIONS)
def _backward(a, h0, h, lengths, reverse, tile, gh, gfinal, da, db, dh0):
    """Backward over all (batch, channel-tile) tasks.

    Args (float32): a [B, L, D]; h0 [B, D]; h [B, L, D] the forward output; lengths int64 [B]; reverse, tile;
    gh [B, L, D] and gfinal [B, D] the incoming gradients. Outputs: da, db [B, L, D] (zero-filled), dh0 [B, D].
    """
    batch, _, dim = a.shape
    ntiles = dim // tile
    for task in numba.prange(batch * ntiles):
        r = task // ntiles
        d0 = (task % ntiles) * tile
        length = lengths[r]
        carry = np.empty(tile, dtype=np.float32)  # adjoint of the state after the current step
        for j in range(tile):
            carry[j] = gfinal[r, d0 + j]
        for s in range(length - 1, -1, -1):
            t = length - 1 - s if reverse else s
            tp = t + 1 if reverse else t - 1  # position of the previous state (when s > 0)
            for j in range(tile):
                g = carry[j] + gh[r, t, d0 + j]
                prev = h[r, tp, d0 + j] if s > 0 else h0[r, d0 + j]
                db[r, t, d0 + j] = g
                da[r, t, d0 + j] = g * prev
                carry[j] = g * a[r, t, d0 + j]
        for j in range(tile):
            dh0[r, d0 + j] = carry[j]


class _LinearScanCPU(torch.autograd.Function):
    """autograd wrapper around the numba kernels."""

    @staticmethod
    def forward(ctx, a, b, initial_state, lengths, reverse):
        match_torch_threads()
        batch, seqlen, dim = a.shape
        tile = tile_width(dim, MAX_TILE)
        a_np = to_f32(a)
        h0 = to_f32(initial_state) if initial_state is not None else np.zeros((batch, dim), dtype=np.float32)
        len_np = (lengths.detach().to(torch.int64).contiguous().numpy() if lengths is not None
                  else np.full(batch, seqlen, dtype=np.int64))
        h = np.zeros((batch, seqlen, dim), dtype=np.float32)
        final = np.empty((batch, dim), dtype=np.float32)
        _forward(a_np, to_f32(b), h0, len_np, reverse, tile, h, final)
        ctx.save_for_backward(a, initial_state)  # saved tensors keep torch's in-place modification check
        ctx.arrays = (h, len_np)
        ctx.flags = (reverse, tile, b.dtype)
        return torch.from_numpy(h).to(a.dtype), torch.from_numpy(final)

    @staticmethod
    def backward(ctx, gh, gfinal):
        a, initial_state = ctx.saved_tensors
        h, len_np = ctx.arrays
        reverse, tile, b_dtype = ctx.flags
        match_torch_threads()
        batch, seqlen, dim = a.shape
        a_np = to_f32(a)
        h0 = to_f32(initial_state) if initial_state is not None else np.zeros((batch, dim), dtype=np.float32)
        gh_np = to_f32(gh) if gh is not None else np.zeros((batch, seqlen, dim), dtype=np.float32)
        gf_np = to_f32(gfinal) if gfinal is not None else np.zeros((batch, dim), dtype=np.float32)
        da = np.zeros((batch, seqlen, dim), dtype=np.float32)
        db = np.zeros((batch, seqlen, dim), dtype=np.float32)
        dh0 = np.empty((batch, dim), dtype=np.float32)
        _backward(a_np, h0, h, len_np, reverse, tile, gh_np, gf_np, da, db, dh0)
        d_init = torch.from_numpy(dh0).to(initial_state.dtype) if initial_state is not None else None
        return torch.from_numpy(da).to(a.dtype), torch.from_numpy(db).to(b_dtype), d_init, None, None


@torch.compiler.disable  # dynamo must not trace into numba
def linear_scan(a, b, initial_state, reverse, lengths):
    """Fused CPU linear scan on validated inputs.

    Args:
        a, b: [B, L, D].
        initial_state: [B, D] or None (zeros).
        reverse: scan from position length - 1 down to 0.
        lengths: int64 [B] in [1, L] or None.

    Returns:
        h [B, L, D] in a.dtype and final_state [B, D] in float32; differentiable in a, b and initial_state.
    """
    return _LinearScanCPU.apply(a, b, initial_state, lengths, bool(reverse))
