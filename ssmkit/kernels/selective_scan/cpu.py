"""Selective scan, fused CPU kernel (numba): forward and backward without any [B, L, D, N] tensor.

Work split: one prange task per (batch row b, tile of TD channels), TD a divisor of D // G (so a tile lies in one
group of B/C) of at most 128 channels. A task keeps its state h [N, TD] in a small local array, computes
exp(dt A) = 2^(dt A log2 e) on the fly with ``fast_exp2`` (A is passed transposed and pre-multiplied by log2 e), and
loops over channels innermost (contiguous in the [B, L, D] layout), so each step is a few SIMD instructions per state
row. softplus, the silu(z) gate and their derivatives run per (t, d) inside the same kernels.

Memory for backward: the forward saves the state every K steps (``checkpoints`` [B, ceil(L / K), N, D]) and writes
dt and the pre-gate output p [B, L, D] (no N axis). The backward walks the chunks from last to first, recomputes the
K states of a chunk into a local buffer [K + 1, N, TD] (and the K decays exp(dt A), reused by the reverse walk), then
walks that chunk in reverse with the state adjoint. Gradients that sum over channels (dB, dC) are written per tile
into partial buffers [B, L, D / TD, N]; those that sum over batch rows (dA, dD, ddelta_bias) into per-row buffers;
both are reduced afterwards in torch (skipped where there is a single part), so the results do not depend on the
thread count. See ``ssmkit/kernels/README.md`` for the math and the measurements.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._numba_utils import (
    EXP2_CONSTS,
    JIT_OPTIONS,
    LOG2E,
    exp2_consts,
    fast_exp2,
    sigmoid,
    softplus,
    softplus_grad,
    tile_width,
    to_f32,
)

__all__ = ["selective_scan"]

CHUNK = 32  # K: steps between saved states (the backward recomputes one chunk at a time)
MAX_TILE = 128  # TD: channels per task, at most (wide tiles amortize the per-(t, n) loop overhead)
TILE_STATE = 2048  # and TD * N at most this, so that a chunk's buffers [K + 1, N, TD] stay near L2 size

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)


@numba.njit(**JIT_OPTIONS)
def _forward(u, delta, bias, AT2, Bm, Cm, Dv, z, h0T, lengths, expc, has_z, softplus_on, reverse, tile, chunk,
             y, p, dt_out, finalT, checkpoints):
    """Fused forward over all (batch, channel-tile) tasks; fills y, p, dt_out, finalT and checkpoints in place.

    Args (float32 unless said): u, delta, z [B, L, D] (z [1, 1, 1] when has_z is False); bias [D];
    AT2 = A^T log2(e) [N, D]; Bm, Cm [B, L, G, N]; Dv [D]; h0T [B, N, D] (the initial state, transposed so that a
    task reads contiguous rows); lengths int64 [B]; expc = EXP2_CONSTS;
    flags are runtime booleans; tile, chunk int.
    Outputs: y [B, L, D]; p [B, L, D] the output before the gate (written only when has_z); dt_out [B, L, D] the
    step sizes (saved for the backward); positions >= length are left as the caller filled them. finalT [B, N, D],
    checkpoints [B, ceil(L / chunk), N, D].
    """
    batch, _, dim = u.shape
    dstate = AT2.shape[0]
    per_group = dim // Bm.shape[2]
    ntiles = dim // tile
    for task in numba.prange(batch * ntiles):
        ek = exp2_consts(expc)  # runtime constants: kept in registers, not rematerialized in the loops
        b = task // ntiles
        d0 = (task % ntiles) * tile
        d1 = d0 + tile
        g = d0 // per_group
        length = lengths[b]
        # [B, L, D] rows are indexed with unsigned integers: no negative-index fix-up (the loops vectorize) and no
        # per-step array views (each costs a reference-count update)
        ub, ud0, utile = np.uint64(b), np.uint64(d0), np.uint64(tile)
        a_loc = np.empty((dstate, tile), dtype=np.float32)  # A^T log2(e) tile [N, TD]
        h = np.empty((dstate, tile), dtype=np.float32)  # state [N, TD]
        for n in range(dstate):
            a_row = AT2[n, d0:d1]
            h0_row = h0T[b, n, d0:d1]
            for j in range(tile):
                a_loc[n, j] = a_row[j]
                h[n, j] = h0_row[j]
        dv = Dv[d0:d1]
        bias_t = bias[d0:d1]
        dtl = np.empty(tile, dtype=np.float32)  # dt of the step
        dtu = np.empty(tile, dtype=np.float32)
        acc = np.empty(tile, dtype=np.float32)
        for s in range(length):
            t = length - 1 - s if reverse else s
            ut = np.uint64(t)
            if s % chunk == 0:
                c = s // chunk
                for n in range(dstate):
                    ck_row = checkpoints[b, c, n, d0:d1]
                    for j in range(tile):
                        ck_row[j] = h[n, j]
            # small single-purpose loops: each one vectorizes (few arrays -> few runtime alias checks)
            for j in range(utile):
                dtl[j] = delta[ub, ut, ud0 + j] + bias_t[j]
            if softplus_on:
                for j in range(utile):
                    dtl[j] = softplus(dtl[j], ek)
            for j in range(utile):
                dt_out[ub, ut, ud0 + j] = dtl[j]
            for j in range(utile):
                uj = u[ub, ut, ud0 + j]
                dtu[j] = dtl[j] * uj
                acc[j] = dv[j] * uj
            for n in range(dstate):
                bn = Bm[b, t, g, n]
                cn = Cm[b, t, g, n]
                for j in range(tile):
                    hn = fast_exp2(dtl[j] * a_loc[n, j], ek) * h[n, j] + dtu[j] * bn
                    h[n, j] = hn
                    acc[j] += hn * cn
            if has_z:
                for j in range(utile):
                    p[ub, ut, ud0 + j] = acc[j]
                for j in range(utile):
                    zj = z[ub, ut, ud0 + j]
                    y[ub, ut, ud0 + j] = acc[j] * (zj * sigmoid(zj, ek))
            else:
                for j in range(utile):
                    y[ub, ut, ud0 + j] = acc[j]
        for n in range(dstate):
            final_row = finalT[b, n, d0:d1]
            for j in range(tile):
                final_row[j] = h[n, j]


@numba.njit(**JIT_OPTIONS)
def _backward(u, delta, bias, dt, AT, AT2, Bm, Cm, Dv, z, p, lengths, expc, has_z, softplus_on, reverse, tile, chunk,
              checkpoints, gy, gfinalT, du, ddelta, dz, dA_rows, dB_tiles, dC_tiles, dD_rows, dbias_rows, dh0T):
    """Fused backward with chunked recomputation; fills the gradient buffers in place.

    Args: the forward inputs and flags (plus AT = A^T [N, D]), dt and p (p = y without z) from the forward,
    checkpoints, gy [B, L, D], gfinalT [B, N, D]. Outputs: du, ddelta, dz [B, L, D] (zero-filled by the caller where
    some positions are >= length); dA_rows [B, N, D]; dB_tiles, dC_tiles [B, L, D / tile, N] (same rule);
    dD_rows, dbias_rows [B, D]; dh0T [B, N, D]. States and their gradients are [B, N, D] so that rows are contiguous.
    """
    batch, _, dim = u.shape
    dstate = AT.shape[0]
    per_group = dim // Bm.shape[2]
    ntiles = dim // tile
    for task in numba.prange(batch * ntiles):
        ek = exp2_consts(expc)
        b = task // ntiles
        k_tile = task % ntiles
        d0 = k_tile * tile
        d1 = d0 + tile
        g = d0 // per_group
        length = lengths[b]
        ub, ud0, utile = np.uint64(b), np.uint64(d0), np.uint64(tile)
        rows = min(chunk, length)  # short sequences get small buffers
        hbuf = np.empty((rows + 1, dstate, tile), dtype=np.float32)  # states of one chunk [K + 1, N, TD]
        ebuf = np.empty((rows, dstate, tile), dtype=np.float32)  # decays exp(dt * A) of one chunk [K, N, TD]
        dtbuf = np.empty((rows, tile), dtype=np.float32)  # dt of one chunk [K, TD]
        dh = np.empty((dstate, tile), dtype=np.float32)  # adjoint of the state after the current step [N, TD]
        a_loc = np.empty((dstate, tile), dtype=np.float32)  # A^T tile [N, TD]
        a2_loc = np.empty((dstate, tile), dtype=np.float32)  # A^T log2(e) tile [N, TD]
        dA_loc = np.zeros((dstate, tile), dtype=np.float32)
        dD_loc = np.zeros(tile, dtype=np.float32)
        dbias_loc = np.zeros(tile, dtype=np.float32)
        q = np.empty(tile, dtype=np.float32)  # gradient of the output before the gate
        sum_gb = np.empty(tile, dtype=np.float32)  # sum_n G~_n B_n  (-> du and ddt)
        sum_wa = np.empty(tile, dtype=np.float32)  # sum_n G~_n a_n h_{t-1,n} A_n  (-> ddt)
        dtu = np.empty(tile, dtype=np.float32)
        w = np.empty(tile, dtype=np.float32)
        for n in range(dstate):
            a_row = AT[n, d0:d1]
            a2_row = AT2[n, d0:d1]
            gf_row = gfinalT[b, n, d0:d1]
            for j in range(tile):
                a_loc[n, j] = a_row[j]
                a2_loc[n, j] = a2_row[j]
                dh[n, j] = gf_row[j]
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
                ut = np.uint64(t)
                for j in range(utile):
                    dtbuf[k, j] = dt[ub, ut, ud0 + j]
                for j in range(utile):
                    dtu[j] = dtbuf[k, j] * u[ub, ut, ud0 + j]
                for n in range(dstate):
                    bn = Bm[b, t, g, n]
                    for j in range(tile):
                        e = fast_exp2(dtbuf[k, j] * a2_loc[n, j], ek)
                        ebuf[k, n, j] = e
                        hbuf[k + 1, n, j] = e * hbuf[k, n, j] + dtu[j] * bn
            for k in range(count - 1, -1, -1):  # walk the chunk in reverse
                t = length - 1 - (s0 + k) if reverse else s0 + k
                ut = np.uint64(t)
                if has_z:
                    for j in range(utile):
                        w[j] = sigmoid(z[ub, ut, ud0 + j], ek)  # scratch
                    for j in range(utile):
                        zj = z[ub, ut, ud0 + j]
                        gyj = gy[ub, ut, ud0 + j]
                        sz = w[j]
                        dz[ub, ut, ud0 + j] = gyj * p[ub, ut, ud0 + j] * sz * (_ONE + zj * (_ONE - sz))
                        q[j] = gyj * zj * sz
                else:
                    for j in range(utile):
                        q[j] = gy[ub, ut, ud0 + j]
                for j in range(utile):
                    uj = u[ub, ut, ud0 + j]
                    dD_loc[j] += q[j] * uj
                    dtu[j] = dtbuf[k, j] * uj
                for j in range(tile):
                    sum_gb[j] = _ZERO
                    sum_wa[j] = _ZERO
                # one state row at a time, in small loops that each touch few arrays: LLVM vectorizes a loop only
                # when its runtime alias checks stay few (a single loop over ten arrays stays scalar)
                for n in range(dstate):
                    bn = Bm[b, t, g, n]
                    cn = Cm[b, t, g, n]
                    acc_b = _ZERO
                    acc_c = _ZERO
                    for j in range(tile):
                        gh = dh[n, j] + q[j] * cn  # adjoint of h_t
                        acc_b += gh * dtu[j]
                        acc_c += q[j] * hbuf[k + 1, n, j]
                        dh_prev = gh * ebuf[k, n, j]  # adjoint of h_{t-1}
                        dh[n, j] = dh_prev
                        wj = dh_prev * hbuf[k, n, j]  # G~ exp(dt A) h_{t-1}
                        sum_gb[j] += gh * bn
                        dA_loc[n, j] += wj * dtbuf[k, j]
                        sum_wa[j] += wj * a_loc[n, j]
                    dB_tiles[b, t, k_tile, n] = acc_b
                    dC_tiles[b, t, k_tile, n] = acc_c
                for j in range(utile):
                    du[ub, ut, ud0 + j] = q[j] * dv[j] + sum_gb[j] * dtbuf[k, j]
                for j in range(utile):
                    w[j] = sum_wa[j] + sum_gb[j] * u[ub, ut, ud0 + j]  # d dt
                if softplus_on:
                    for j in range(utile):
                        w[j] *= softplus_grad(delta[ub, ut, ud0 + j] + bias_t[j], ek)
                for j in range(utile):
                    ddelta[ub, ut, ud0 + j] = w[j]
                    dbias_loc[j] += w[j]
        for n in range(dstate):
            dA_row = dA_rows[b, n, d0:d1]
            dh0_row = dh0T[b, n, d0:d1]
            for j in range(tile):
                dA_row[j] = dA_loc[n, j]
                dh0_row[j] = dh[n, j]
        for j in range(tile):
            dD_rows[b, d0 + j] = dD_loc[j]
            dbias_rows[b, d0 + j] = dbias_loc[j]


def _lengths_np(lengths: torch.Tensor | None, batch: int, seqlen: int) -> np.ndarray:
    if lengths is None:
        return np.full(batch, seqlen, dtype=np.int64)
    return lengths.detach().to(torch.int64).contiguous().numpy()


def _row_sum(rows: np.ndarray) -> torch.Tensor:
    """Sum over the leading axis in a fixed order (no copy when there is one row)."""
    t = torch.from_numpy(rows)
    return t[0] if t.shape[0] == 1 else t.sum(0)


def _as(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``grad`` in the dtype of ``like`` (returned as is when it matches)."""
    return grad if grad.dtype == like.dtype else grad.to(like.dtype)


_DUMMY_BLD = np.zeros((1, 1, 1), dtype=np.float32)  # stands in for an absent [B, L, D] tensor (never read)


class _SelectiveScanCPU(torch.autograd.Function):
    """autograd wrapper: numba forward, numba backward with recomputation."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, lengths, delta_softplus, reverse):
        batch, seqlen, dim = u.shape
        dstate, groups = A.shape[1], B.shape[2]
        tile = tile_width(dim // groups, min(MAX_TILE, max(8, TILE_STATE // dstate)))
        arrays = dict(
            u=to_f32(u), delta=to_f32(delta),
            bias=to_f32(delta_bias) if delta_bias is not None else np.zeros(dim, dtype=np.float32),
            AT=to_f32(A.t()), AT2=to_f32(A.detach().t().double() * LOG2E), Bm=to_f32(B), Cm=to_f32(C),
            Dv=to_f32(D) if D is not None else np.zeros(dim, dtype=np.float32),
            z=to_f32(z) if z is not None else _DUMMY_BLD, lengths=_lengths_np(lengths, batch, seqlen),
        )
        h0T = (to_f32(initial_state.transpose(1, 2)) if initial_state is not None
               else np.zeros((batch, dstate, dim), dtype=np.float32))  # [B, N, D]
        partial = lengths is not None and bool((lengths < seqlen).any())
        new = np.zeros if partial else np.empty  # positions >= length must read as 0
        y = new((batch, seqlen, dim), dtype=np.float32)
        p = new((batch, seqlen, dim), dtype=np.float32) if z is not None else y
        dt = np.empty((batch, seqlen, dim), dtype=np.float32)
        finalT = np.empty((batch, dstate, dim), dtype=np.float32)
        checkpoints = np.empty((batch, (seqlen + CHUNK - 1) // CHUNK, dstate, dim), dtype=np.float32)
        a = arrays
        _forward(a["u"], a["delta"], a["bias"], a["AT2"], a["Bm"], a["Cm"], a["Dv"], a["z"], h0T, a["lengths"],
                 EXP2_CONSTS, z is not None, delta_softplus, reverse, tile, CHUNK, y, p, dt, finalT, checkpoints)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, lengths)
        ctx.kernel_state = (arrays, dt, p, checkpoints, partial)  # the float32 views / copies, reused
        ctx.flags = (delta_softplus, reverse, tile)
        return _as(torch.from_numpy(y), u), torch.from_numpy(finalT).transpose(1, 2).contiguous()  # [B, D, N]

    @staticmethod
    def backward(ctx, gy, gfinal):
        u, delta, A, B, C, D, z, delta_bias, initial_state, lengths = ctx.saved_tensors
        a, dt, p, checkpoints, partial = ctx.kernel_state
        delta_softplus, reverse, tile = ctx.flags
        batch, seqlen, dim = u.shape
        dstate, groups = A.shape[1], B.shape[2]
        ntiles = dim // tile
        gy_np = to_f32(gy) if gy is not None else np.zeros((batch, seqlen, dim), dtype=np.float32)
        gfT = (to_f32(gfinal.transpose(1, 2)) if gfinal is not None
               else np.zeros((batch, dstate, dim), dtype=np.float32))  # [B, N, D]
        new = np.zeros if partial else np.empty  # positions >= length must read as 0
        du = new((batch, seqlen, dim), dtype=np.float32)
        ddelta = new((batch, seqlen, dim), dtype=np.float32)
        dz = new((batch, seqlen, dim), dtype=np.float32) if z is not None else _DUMMY_BLD
        dB_tiles = new((batch, seqlen, ntiles, dstate), dtype=np.float32)
        dC_tiles = new((batch, seqlen, ntiles, dstate), dtype=np.float32)
        dA_rows = np.empty((batch, dstate, dim), dtype=np.float32)
        dD_rows = np.empty((batch, dim), dtype=np.float32)
        dbias_rows = np.empty((batch, dim), dtype=np.float32)
        dh0T = np.empty((batch, dstate, dim), dtype=np.float32)
        _backward(a["u"], a["delta"], a["bias"], dt, a["AT"], a["AT2"], a["Bm"], a["Cm"], a["Dv"], a["z"], p,
                  a["lengths"], EXP2_CONSTS, z is not None, delta_softplus, reverse, tile, CHUNK, checkpoints, gy_np,
                  gfT, du, ddelta, dz, dA_rows, dB_tiles, dC_tiles, dD_rows, dbias_rows, dh0T)

        def group_sum(tiles: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(tiles)  # [B, L, ntiles, N]
            return t if ntiles == groups else t.view(batch, seqlen, groups, ntiles // groups, dstate).sum(3)

        # contiguous gradients in the inputs' dtypes (no cast or copy when they already match)
        grads = (
            _as(torch.from_numpy(du), u),
            _as(torch.from_numpy(ddelta), delta),
            _as(_row_sum(dA_rows).t().contiguous(), A),  # [D, N]
            _as(group_sum(dB_tiles), B),  # [B, L, G, N]
            _as(group_sum(dC_tiles), C),
            _as(_row_sum(dD_rows), D) if D is not None else None,
            _as(torch.from_numpy(dz), z) if z is not None else None,
            _as(_row_sum(dbias_rows), delta_bias) if delta_bias is not None else None,
            _as(torch.from_numpy(dh0T).transpose(1, 2).contiguous(), initial_state) if initial_state is not None
            else None,
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
