"""Selective scan, fused CPU kernel (numba): forward and backward without any [B, L, D, N] tensor.

Split of the work: the per-(b, t, d) elementwise parts (dt = softplus(delta + delta_bias), the silu(z) gate and
their derivatives) run in torch, vectorized over [B, L, D]; the numba kernels run only the recurrence over the state,
where all the (b, t, d, n) work is. Saved for the backward: dt and the pre-gate output p [B, L, D] (no N axis).

Kernel work split: one prange task per (batch row b, tile of TD channels), TD a divisor of D // G (so a tile lies in
one group of B/C). A task keeps its state h [N, TD] in a small local array (L1 resident), computes
exp(dt A) = 2^(dt A log2 e) on the fly with ``fast_exp2`` (A is passed transposed and pre-multiplied by log2 e), and
loops over channels innermost (contiguous in the [B, L, D] layout), so each step is a few SIMD instructions per state
row.

Memory for backward: the forward saves the state every K steps (``checkpoints`` [B, ceil(L / K), N, D]). The backward
walks the chunks from last to first, recomputes the K states of a chunk into a local buffer [K + 1, N, TD] (and the K
decays exp(dt A), reused by the reverse walk), then walks that chunk in reverse with the state adjoint. Gradients that
sum over channels (dB, dC) are written per tile into partial buffers [B, D / TD, L, N]; those that sum over batch rows
(dA, dD) into per-row buffers; both are reduced afterwards in torch (skipped where there is a single part), so the
results do not depend on the thread count. See ``ssmkit/kernels/README.md`` for the math.
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
def _forward(u, delta, bias, AT2, Bm, Cm, Dv, z, h0, lengths, expc, has_z, softplus_on, reverse, tile, chunk,
             y, p, dt_out, final, checkpoints):
    """Fused forward over all (batch, channel-tile) tasks; fills y, p, dt_out, final and checkpoints in place.

    Args (float32 unless said): u, delta, z [B, L, D] (z [1, 1, 1] when has_z is False); bias [D];
    AT2 = A^T log2(e) [N, D]; Bm, Cm [B, L, G, N]; Dv [D]; h0 [B, D, N]; lengths int64 [B]; expc = EXP2_CONSTS;
    flags are runtime booleans; tile, chunk int.
    Outputs: y [B, L, D]; p [B, L, D] the output before the gate (written only when has_z); dt_out [B, L, D] the
    step sizes (saved for the backward); positions >= length are left as the caller filled them. final [B, D, N],
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
        # per-task copies and row views: the hot loops index with j only (no negative-index checks, SIMD loads)
        a_loc = np.empty((dstate, tile), dtype=np.float32)  # A^T log2(e) tile [N, TD]
        h = np.empty((dstate, tile), dtype=np.float32)  # state [N, TD]
        for n in range(dstate):
            a_row = AT2[n, d0:d1]
            for j in range(tile):
                a_loc[n, j] = a_row[j]
                h[n, j] = h0[b, d0 + j, n]
        dv = Dv[d0:d1]
        bias_t = bias[d0:d1]
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
            dt_row = dt_out[b, t, d0:d1]
            # small single-purpose loops: each one vectorizes (few arrays -> few runtime alias checks)
            for j in range(tile):
                dt_row[j] = delta_row[j] + bias_t[j]
            if softplus_on:
                for j in range(tile):
                    dt_row[j] = softplus(dt_row[j], ek)
            for j in range(tile):
                dtu[j] = dt_row[j] * u_row[j]
                acc[j] = dv[j] * u_row[j]
            for n in range(dstate):
                bn = Bm[b, t, g, n]
                cn = Cm[b, t, g, n]
                for j in range(tile):
                    hn = fast_exp2(dt_row[j] * a_loc[n, j], ek) * h[n, j] + dtu[j] * bn
                    h[n, j] = hn
                    acc[j] += hn * cn
            y_row = y[b, t, d0:d1]
            if has_z:
                z_row = z[b, t, d0:d1]
                p_row = p[b, t, d0:d1]
                for j in range(tile):
                    p_row[j] = acc[j]
                for j in range(tile):
                    y_row[j] = acc[j] * (z_row[j] * sigmoid(z_row[j], ek))
            else:
                for j in range(tile):
                    y_row[j] = acc[j]
        for n in range(dstate):
            for j in range(tile):
                final[b, d0 + j, n] = h[n, j]


@numba.njit(**JIT_OPTIONS)
def _backward(u, delta, bias, dt, AT, AT2, Bm, Cm, Dv, z, p, lengths, expc, has_z, softplus_on, reverse, tile, chunk,
              checkpoints, gy, gfinal, du, ddelta, dz, dA_rows, dB_tiles, dC_tiles, dD_rows, dbias_rows, dh0):
    """Fused backward with chunked recomputation; fills the gradient buffers in place.

    Args: the forward inputs and flags (plus AT = A^T [N, D]), dt and p (p = y without z) from the forward,
    checkpoints, gy [B, L, D], gfinal [B, D, N]. Outputs: du, ddelta, dz [B, L, D] (zero-filled by the caller where
    some positions are >= length); dA_rows [B, N, D]; dB_tiles, dC_tiles [B, D / tile, L, N] (same rule);
    dD_rows, dbias_rows [B, D]; dh0 [B, D, N].
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
        hbuf = np.empty((chunk + 1, dstate, tile), dtype=np.float32)  # states of one chunk [K + 1, N, TD]
        ebuf = np.empty((chunk, dstate, tile), dtype=np.float32)  # decays exp(dt * A) of one chunk [K, N, TD]
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
            for j in range(tile):
                a_loc[n, j] = a_row[j]
                a2_loc[n, j] = a2_row[j]
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
                dt_row = dt[b, t, d0:d1]
                for j in range(tile):
                    dtu[j] = dt_row[j] * u_row[j]
                for n in range(dstate):
                    bn = Bm[b, t, g, n]
                    for j in range(tile):
                        e = fast_exp2(dt_row[j] * a2_loc[n, j], ek)
                        ebuf[k, n, j] = e
                        hbuf[k + 1, n, j] = e * hbuf[k, n, j] + dtu[j] * bn
            for k in range(count - 1, -1, -1):  # walk the chunk in reverse
                t = length - 1 - (s0 + k) if reverse else s0 + k
                u_row = u[b, t, d0:d1]
                dt_row = dt[b, t, d0:d1]
                gy_row = gy[b, t, d0:d1]
                if has_z:
                    z_row = z[b, t, d0:d1]
                    p_row = p[b, t, d0:d1]
                    dz_row = dz[b, t, d0:d1]
                    for j in range(tile):
                        w[j] = sigmoid(z_row[j], ek)  # scratch
                    for j in range(tile):
                        zj = z_row[j]
                        sz = w[j]
                        dz_row[j] = gy_row[j] * p_row[j] * sz * (_ONE + zj * (_ONE - sz))
                        q[j] = gy_row[j] * zj * sz
                else:
                    for j in range(tile):
                        q[j] = gy_row[j]
                for j in range(tile):
                    dD_loc[j] += q[j] * u_row[j]
                    dtu[j] = dt_row[j] * u_row[j]
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
                        dh[n, j] = gh
                        acc_b += gh * dtu[j]
                        acc_c += q[j] * hbuf[k + 1, n, j]
                    dB_tiles[b, k_tile, t, n] = acc_b
                    dC_tiles[b, k_tile, t, n] = acc_c
                    for j in range(tile):
                        gh = dh[n, j]
                        e = ebuf[k, n, j]
                        w[j] = gh * e * hbuf[k, n, j]  # G~ exp(dt A) h_{t-1}
                        sum_gb[j] += gh * bn
                        dh[n, j] = gh * e
                    for j in range(tile):
                        dA_loc[n, j] += w[j] * dt_row[j]
                        sum_wa[j] += w[j] * a_loc[n, j]
                ddelta_row = ddelta[b, t, d0:d1]
                du_row = du[b, t, d0:d1]
                for j in range(tile):
                    ddelta_row[j] = sum_wa[j] + sum_gb[j] * u_row[j]  # d dt
                    du_row[j] = q[j] * dv[j] + sum_gb[j] * dt_row[j]
                if softplus_on:
                    delta_row = delta[b, t, d0:d1]
                    for j in range(tile):
                        w[j] = delta_row[j] + bias_t[j]  # scratch: the softplus argument
                    for j in range(tile):
                        ddelta_row[j] *= softplus_grad(w[j], ek)
                for j in range(tile):
                    dbias_loc[j] += ddelta_row[j]
        for n in range(dstate):
            dA_row = dA_rows[b, n, d0:d1]
            for j in range(tile):
                dA_row[j] = dA_loc[n, j]
                dh0[b, d0 + j, n] = dh[n, j]
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
        h0 = (to_f32(initial_state) if initial_state is not None
              else np.zeros((batch, dim, dstate), dtype=np.float32))
        partial = lengths is not None and bool((lengths < seqlen).any())
        new = np.zeros if partial else np.empty  # positions >= length must read as 0
        y = new((batch, seqlen, dim), dtype=np.float32)
        p = new((batch, seqlen, dim), dtype=np.float32) if z is not None else y
        dt = np.empty((batch, seqlen, dim), dtype=np.float32)
        final = np.empty((batch, dim, dstate), dtype=np.float32)
        checkpoints = np.empty((batch, (seqlen + CHUNK - 1) // CHUNK, dstate, dim), dtype=np.float32)
        a = arrays
        _forward(a["u"], a["delta"], a["bias"], a["AT2"], a["Bm"], a["Cm"], a["Dv"], a["z"], h0, a["lengths"],
                 EXP2_CONSTS, z is not None, delta_softplus, reverse, tile, CHUNK, y, p, dt, final, checkpoints)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, lengths)
        ctx.kernel_state = (arrays, dt, p, checkpoints, partial)  # the float32 views / copies, reused
        ctx.flags = (delta_softplus, reverse, tile)
        return torch.from_numpy(y).to(u.dtype), torch.from_numpy(final)

    @staticmethod
    def backward(ctx, gy, gfinal):
        u, delta, A, B, C, D, z, delta_bias, initial_state, lengths = ctx.saved_tensors
        a, dt, p, checkpoints, partial = ctx.kernel_state
        delta_softplus, reverse, tile = ctx.flags
        batch, seqlen, dim = u.shape
        dstate, groups = A.shape[1], B.shape[2]
        ntiles = dim // tile
        gy_np = to_f32(gy) if gy is not None else np.zeros((batch, seqlen, dim), dtype=np.float32)
        gf_np = to_f32(gfinal) if gfinal is not None else np.zeros((batch, dim, dstate), dtype=np.float32)
        new = np.zeros if partial else np.empty  # positions >= length must read as 0
        du = new((batch, seqlen, dim), dtype=np.float32)
        ddelta = new((batch, seqlen, dim), dtype=np.float32)
        dz = new((batch, seqlen, dim), dtype=np.float32) if z is not None else _DUMMY_BLD
        dB_tiles = new((batch, ntiles, seqlen, dstate), dtype=np.float32)
        dC_tiles = new((batch, ntiles, seqlen, dstate), dtype=np.float32)
        dA_rows = np.empty((batch, dstate, dim), dtype=np.float32)
        dD_rows = np.empty((batch, dim), dtype=np.float32)
        dbias_rows = np.empty((batch, dim), dtype=np.float32)
        dh0 = np.empty((batch, dim, dstate), dtype=np.float32)
        _backward(a["u"], a["delta"], a["bias"], dt, a["AT"], a["AT2"], a["Bm"], a["Cm"], a["Dv"], a["z"], p,
                  a["lengths"], EXP2_CONSTS, z is not None, delta_softplus, reverse, tile, CHUNK, checkpoints, gy_np,
                  gf_np, du, ddelta, dz, dA_rows, dB_tiles, dC_tiles, dD_rows, dbias_rows, dh0)

        def group_sum(tiles: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(tiles)  # [B, ntiles, L, N]
            per_group = t if ntiles == groups else t.view(batch, groups, ntiles // groups, seqlen, dstate).sum(2)
            return per_group.permute(0, 2, 1, 3)  # [B, L, G, N]

        grads = (
            torch.from_numpy(du).to(u.dtype),
            torch.from_numpy(ddelta).to(delta.dtype),
            _row_sum(dA_rows).t().to(A.dtype),  # [D, N]
            group_sum(dB_tiles).to(B.dtype),
            group_sum(dC_tiles).to(C.dtype),
            _row_sum(dD_rows).to(D.dtype) if D is not None else None,
            torch.from_numpy(dz).to(z.dtype) if z is not None else None,
            _row_sum(dbias_rows).to(delta_bias.dtype) if delta_bias is not None else None,
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
