"""Selective scan, fused CPU kernel (numba): forward and backward without any [B, L, D, N] tensor.

Work split: one prange task per (batch row b, tile of TD channels), TD a divisor of D // G (so a tile lies in one
group of B/C). A task keeps its state h [N, TD] in a small local array (L1/L2 resident), computes exp(dt * A) on
the fly with a vectorizable exp, and loops over channels innermost (contiguous in the [B, L, D] layout; A is passed
transposed [N, D]), so each step is a few SIMD instructions per state row.

Memory for backward: the forward saves the state every K steps (``checkpoints`` [B, ceil(L / K), N, D]). The backward
walks the chunks from last to first, recomputes the K states of a chunk into a local buffer [K + 1, N, TD] (and the K
decays exp(dt * A)), then walks that chunk in reverse with the state adjoint. Gradients that sum over channels (dB,
dC) are written per tile into partial buffers [B, D / TD, L, N]; those that sum over batch rows (dA, dD, ddelta_bias)
into per-row buffers; both are reduced afterwards in torch, so the results do not depend on the thread count.
See ``ssmkit/kernels/README.md`` for the math.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._numba_utils import JIT_OPTIONS, fast_exp, sigmoid, softplus, softplus_grad, tile_width, to_f32

__all__ = ["selective_scan"]

CHUNK = 32  # K: steps between saved states (the backward recomputes one chunk at a time)
MAX_TILE = 32  # TD: channels per task (a multiple of the SIMD width when D allows it)

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@numba.njit(**JIT_OPTIONS)
def _forward(u, delta, AT, Bm, Cm, Dv, z, bias, h0, lengths, has_z, softplus_on, reverse, tile, chunk,
             y, final, checkpoints):
    """Fused forward over all (batch, channel-tile) tasks; fills y, final and checkpoints in place.

    Args (float32 unless said): u, delta, z [B, L, D] (z [1, 1, 1] when has_z is False); AT [N, D];
    Bm, Cm [B, L, G, N]; Dv, bias [D]; h0 [B, D, N]; lengths int64 [B]; flags are runtime booleans; tile, chunk int.
    Outputs: y [B, L, D] (zero-filled by the caller), final [B, D, N], checkpoints [B, ceil(L / chunk), N, D].
    """
    batch, _, dim = u.shape
    dstate = AT.shape[0]
    per_group = dim // Bm.shape[2]
    ntiles = dim // tile
    for task in numba.prange(batch * ntiles):
        b = task // ntiles
        d0 = (task % ntiles) * tile
        d1 = d0 + tile
        g = d0 // per_group
        length = lengths[b]
        # per-task copies and row views: the hot loops index with j only (no negative-index checks, SIMD loads)
        a_loc = np.empty((dstate, tile), dtype=np.float32)  # A^T tile [N, TD]
        h = np.empty((dstate, tile), dtype=np.float32)  # state [N, TD]
        for n in range(dstate):
            a_row = AT[n, d0:d1]
            for j in range(tile):
                a_loc[n, j] = a_row[j]
                h[n, j] = h0[b, d0 + j, n]
        dv = Dv[d0:d1]
        bias_t = bias[d0:d1]
        dt = np.empty(tile, dtype=np.float32)
        dtu = np.empty(tile, dtype=np.float32)
        acc = np.empty(tile, dtype=np.float32)
        for s in range(length):
            t = length - 1 - s if reverse else s
            if s % chunk == 0:
                c = s // chunk
                for n in range(dstate):
                    ck_row = checkpoints[b, c, n, d0:d1]
                    for j in range(tile):
                        ck_row[j] = h[n, j]
            u_row = u[b, t, d0:d1]
            delta_row = delta[b, t, d0:d1]
            # small single-purpose loops: each one vectorizes (few arrays -> few runtime alias checks)
            for j in range(tile):
                dt[j] = delta_row[j] + bias_t[j]
            if softplus_on:
                for j in range(tile):
                    dt[j] = softplus(dt[j])
            for j in range(tile):
                dtu[j] = dt[j] * u_row[j]
                acc[j] = _ZERO
            for n in range(dstate):
                bn = Bm[b, t, g, n]
                cn = Cm[b, t, g, n]
                for j in range(tile):
                    hn = fast_exp(dt[j] * a_loc[n, j]) * h[n, j] + dtu[j] * bn
                    h[n, j] = hn
                    acc[j] += hn * cn
            y_row = y[b, t, d0:d1]
            for j in range(tile):
                acc[j] += dv[j] * u_row[j]
            if has_z:
                z_row = z[b, t, d0:d1]
                for j in range(tile):
                    dtu[j] = z_row[j] * sigmoid(z_row[j])  # silu(z), scratch
                for j in range(tile):
                    acc[j] *= dtu[j]
            for j in range(tile):
                y_row[j] = acc[j]
        for n in range(dstate):
            for j in range(tile):
                final[b, d0 + j, n] = h[n, j]


@numba.njit(**JIT_OPTIONS)
def _backward(u, delta, AT, Bm, Cm, Dv, z, bias, lengths, has_z, softplus_on, reverse, tile, chunk, checkpoints,
              gy, gfinal, du, ddelta, dz, dA_rows, dB_tiles, dC_tiles, dD_rows, dbias_rows, dh0):
    """Fused backward with chunked recomputation; fills the gradient buffers in place.

    Args: the forward inputs and flags, checkpoints from the forward, gy [B, L, D], gfinal [B, D, N].
    Outputs (zero-filled by the caller): du, ddelta, dz [B, L, D]; dA_rows [B, N, D]; dB_tiles, dC_tiles
    [B, D / tile, L, N]; dD_rows, dbias_rows [B, D]; dh0 [B, D, N].
    """
    batch, _, dim = u.shape
    dstate = AT.shape[0]
    per_group = dim // Bm.shape[2]
    ntiles = dim // tile
    for task in numba.prange(batch * ntiles):
        b = task // ntiles
        k_tile = task % ntiles
        d0 = k_tile * tile
        d1 = d0 + tile
        g = d0 // per_group
        length = lengths[b]
        hbuf = np.empty((chunk + 1, dstate, tile), dtype=np.float32)  # states of one chunk [K + 1, N, TD]
        ebuf = np.empty((chunk, dstate, tile), dtype=np.float32)  # decays exp(dt * A) of one chunk [K, N, TD]
        dtbuf = np.empty((chunk, tile), dtype=np.float32)  # dt of one chunk [K, TD]
        dh = np.empty((dstate, tile), dtype=np.float32)  # adjoint of the state after the current step [N, TD]
        a_loc = np.empty((dstate, tile), dtype=np.float32)  # A^T tile [N, TD]
        dA_loc = np.zeros((dstate, tile), dtype=np.float32)
        dD_loc = np.zeros(tile, dtype=np.float32)
        dbias_loc = np.zeros(tile, dtype=np.float32)
        dys = np.empty(tile, dtype=np.float32)
        ddt = np.empty(tile, dtype=np.float32)
        du_loc = np.empty(tile, dtype=np.float32)
        dtu = np.empty(tile, dtype=np.float32)
        w = np.empty(tile, dtype=np.float32)
        for n in range(dstate):
            a_row = AT[n, d0:d1]
            for j in range(tile):
                a_loc[n, j] = a_row[j]
                dh[n, j] = gfinal[b, d0 + j, n]
        dv = Dv[d0:d1]
        bias_t = bias[d0:d1]
        nchunks = (length + chunk - 1) // chunk
        for c in range(nchunks - 1, -1, -1):
            s0 = c * chunk
            count = min(chunk, length - s0)
            for n in range(dstate):
                ck_row = checkpoints[b, c, n, d0:d1]
                for j in range(tile):
                    hbuf[0, n, j] = ck_row[j]
            for k in range(count):  # recompute the chunk's states and decays
                t = length - 1 - (s0 + k) if reverse else s0 + k
                u_row = u[b, t, d0:d1]
                delta_row = delta[b, t, d0:d1]
                for j in range(tile):
                    ddt[j] = delta_row[j] + bias_t[j]
                if softplus_on:
                    for j in range(tile):
                        ddt[j] = softplus(ddt[j])
                for j in range(tile):
                    dtbuf[k, j] = ddt[j]
                    du_loc[j] = ddt[j] * u_row[j]  # dt * u, scratch
                for n in range(dstate):
                    bn = Bm[b, t, g, n]
                    for j in range(tile):
                        e = fast_exp(dtbuf[k, j] * a_loc[n, j])
                        ebuf[k, n, j] = e
                        hbuf[k + 1, n, j] = e * hbuf[k, n, j] + du_loc[j] * bn
            for k in range(count - 1, -1, -1):  # walk the chunk in reverse
                t = length - 1 - (s0 + k) if reverse else s0 + k
                u_row = u[b, t, d0:d1]
                gy_row = gy[b, t, d0:d1]
                if has_z:
                    z_row = z[b, t, d0:d1]
                    dz_row = dz[b, t, d0:d1]
                    for j in range(tile):
                        du_loc[j] = dv[j] * u_row[j]  # y before the gate, scratch
                    for n in range(dstate):
                        cn = Cm[b, t, g, n]
                        for j in range(tile):
                            du_loc[j] += hbuf[k + 1, n, j] * cn
                    for j in range(tile):
                        ddt[j] = sigmoid(z_row[j])  # scratch
                    for j in range(tile):
                        zj = z_row[j]
                        sz = ddt[j]
                        dz_row[j] = gy_row[j] * du_loc[j] * sz * (_ONE + zj * (_ONE - sz))
                        dys[j] = gy_row[j] * zj * sz
                else:
                    for j in range(tile):
                        dys[j] = gy_row[j]
                for j in range(tile):
                    dD_loc[j] += dys[j] * u_row[j]
                    du_loc[j] = dys[j] * dv[j]
                    ddt[j] = _ZERO
                for j in range(tile):
                    dtu[j] = dtbuf[k, j] * u_row[j]
                # one state row at a time, in small loops that each touch few arrays: LLVM vectorizes a loop only
                # when its runtime alias checks stay few, and a single fused loop over ten arrays stays scalar
                for n in range(dstate):
                    bn = Bm[b, t, g, n]
                    cn = Cm[b, t, g, n]
                    for j in range(tile):
                        gh = dh[n, j] + dys[j] * cn  # adjoint of h_t
                        dh[n, j] = gh
                        w[j] = gh * ebuf[k, n, j] * hbuf[k, n, j]  # gh * exp(dt A) * h_{t-1}
                    acc_b = _ZERO
                    acc_c = _ZERO
                    for j in range(tile):
                        acc_b += dh[n, j] * dtu[j]
                        acc_c += dys[j] * hbuf[k + 1, n, j]
                    dB_tiles[b, k_tile, t, n] = acc_b
                    dC_tiles[b, k_tile, t, n] = acc_c
                    for j in range(tile):
                        dA_loc[n, j] += w[j] * dtbuf[k, j]
                    for j in range(tile):
                        ddt[j] += w[j] * a_loc[n, j] + dh[n, j] * u_row[j] * bn
                    for j in range(tile):
                        du_loc[j] += dh[n, j] * dtbuf[k, j] * bn
                        dh[n, j] *= ebuf[k, n, j]
                delta_row = delta[b, t, d0:d1]
                ddelta_row = ddelta[b, t, d0:d1]
                du_row = du[b, t, d0:d1]
                if softplus_on:
                    for j in range(tile):
                        dys[j] = delta_row[j] + bias_t[j]  # scratch
                    for j in range(tile):
                        ddt[j] *= softplus_grad(dys[j])
                for j in range(tile):
                    ddelta_row[j] = ddt[j]
                    dbias_loc[j] += ddt[j]
                    du_row[j] = du_loc[j]
        for n in range(dstate):
            dA_row = dA_rows[b, n, d0:d1]
            for j in range(tile):
                dA_row[j] = dA_loc[n, j]
                dh0[b, d0 + j, n] = dh[n, j]
        for j in range(tile):
            dD_rows[b, d0 + j] = dD_loc[j]
            dbias_rows[b, d0 + j] = dbias_loc[j]


def _prepare(u, delta, A, B, C, D, z, delta_bias, lengths):
    """float32 C-contiguous numpy arrays for the kernels (dummy arrays stand in for None)."""
    batch, seqlen, dim = u.shape
    arrays = dict(
        u=to_f32(u), delta=to_f32(delta), AT=to_f32(A.t()), Bm=to_f32(B), Cm=to_f32(C),
        Dv=to_f32(D) if D is not None else np.zeros(dim, dtype=np.float32),
        z=to_f32(z) if z is not None else np.zeros((1, 1, 1), dtype=np.float32),
        bias=to_f32(delta_bias) if delta_bias is not None else np.zeros(dim, dtype=np.float32),
        lengths=(lengths.detach().to(torch.int64).contiguous().numpy() if lengths is not None
                 else np.full(batch, seqlen, dtype=np.int64)),
    )
    return arrays


class _SelectiveScanCPU(torch.autograd.Function):
    """autograd wrapper: numba forward, numba backward with recomputation."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, lengths, delta_softplus, reverse):
        batch, seqlen, dim = u.shape
        dstate, groups = A.shape[1], B.shape[2]
        tile = tile_width(dim // groups, MAX_TILE)
        arr = _prepare(u, delta, A, B, C, D, z, delta_bias, lengths)
        h0 = (to_f32(initial_state) if initial_state is not None
              else np.zeros((batch, dim, dstate), dtype=np.float32))
        y = np.zeros((batch, seqlen, dim), dtype=np.float32)
        final = np.empty((batch, dim, dstate), dtype=np.float32)
        checkpoints = np.empty((batch, (seqlen + CHUNK - 1) // CHUNK, dstate, dim), dtype=np.float32)
        _forward(arr["u"], arr["delta"], arr["AT"], arr["Bm"], arr["Cm"], arr["Dv"], arr["z"], arr["bias"], h0,
                 arr["lengths"], z is not None, delta_softplus, reverse, tile, CHUNK, y, final, checkpoints)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, lengths)
        ctx.checkpoints = checkpoints
        ctx.flags = (delta_softplus, reverse, tile)
        return torch.from_numpy(y).to(u.dtype), torch.from_numpy(final)

    @staticmethod
    def backward(ctx, gy, gfinal):
        u, delta, A, B, C, D, z, delta_bias, initial_state, lengths = ctx.saved_tensors
        delta_softplus, reverse, tile = ctx.flags
        batch, seqlen, dim = u.shape
        dstate, groups = A.shape[1], B.shape[2]
        arr = _prepare(u, delta, A, B, C, D, z, delta_bias, lengths)
        gy_np = to_f32(gy) if gy is not None else np.zeros((batch, seqlen, dim), dtype=np.float32)
        gf_np = to_f32(gfinal) if gfinal is not None else np.zeros((batch, dim, dstate), dtype=np.float32)
        ntiles = dim // tile
        du = np.zeros((batch, seqlen, dim), dtype=np.float32)
        ddelta = np.zeros((batch, seqlen, dim), dtype=np.float32)
        dz = np.zeros((batch, seqlen, dim), dtype=np.float32) if z is not None else np.zeros((1, 1, 1), np.float32)
        dA_rows = np.empty((batch, dstate, dim), dtype=np.float32)
        dB_tiles = np.zeros((batch, ntiles, seqlen, dstate), dtype=np.float32)
        dC_tiles = np.zeros((batch, ntiles, seqlen, dstate), dtype=np.float32)
        dD_rows = np.empty((batch, dim), dtype=np.float32)
        dbias_rows = np.empty((batch, dim), dtype=np.float32)
        dh0 = np.empty((batch, dim, dstate), dtype=np.float32)
        _backward(arr["u"], arr["delta"], arr["AT"], arr["Bm"], arr["Cm"], arr["Dv"], arr["z"], arr["bias"],
                  arr["lengths"], z is not None, delta_softplus, reverse, tile, CHUNK, ctx.checkpoints, gy_np, gf_np,
                  du, ddelta, dz, dA_rows, dB_tiles, dC_tiles, dD_rows, dbias_rows, dh0)

        def group_sum(tiles: np.ndarray) -> torch.Tensor:
            per_group = torch.from_numpy(tiles).view(batch, groups, ntiles // groups, seqlen, dstate).sum(2)
            return per_group.permute(0, 2, 1, 3)  # [B, L, G, N]

        grads = (
            torch.from_numpy(du).to(u.dtype),
            torch.from_numpy(ddelta).to(delta.dtype),
            torch.from_numpy(dA_rows).sum(0).t().to(A.dtype),  # [D, N]
            group_sum(dB_tiles).to(B.dtype),
            group_sum(dC_tiles).to(C.dtype),
            torch.from_numpy(dD_rows).sum(0).to(D.dtype) if D is not None else None,
            torch.from_numpy(dz).to(z.dtype) if z is not None else None,
            torch.from_numpy(dbias_rows).sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
            torch.from_numpy(dh0).to(initial_state.dtype) if initial_state is not None else None,
        )
        return (*grads, None, None, None)


def selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse, lengths):
    """Fused CPU selective scan on validated inputs (B and C already [B, L, G, N]).

    Args:
        u, delta, z: [B, L, D] (z may be None).
        A: [D, N].
        B, C: [B, L, G, N], G divides D.
        D, delta_bias: [D] or None.
        delta_softplus: apply softplus (threshold 20) to delta + delta_bias.
        initial_state: [B, D, N] or None.
        reverse: scan from position length - 1 down to 0.
        lengths: int64 [B] in [1, L] or None.

    Returns:
        y [B, L, D] in u.dtype and final_state [B, D, N] in float32; differentiable in every float input.
    """
    return _SelectiveScanCPU.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, lengths,
                                   bool(delta_softplus), bool(reverse))
