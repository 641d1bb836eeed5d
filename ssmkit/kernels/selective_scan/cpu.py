"""Selective scan, fused CPU kernel (numba): forward and backward without any [B, L, D, N] tensor.

Work split: one prange task per (batch row b, tile of TD channels), TD a divisor of D // G (so a tile lies in one
group of B/C) of at most 256 channels (and at most 4096 / N). A task keeps its state h [N, TD] in a small local array,
computes exp(dt A) = 2^(dt A log2 e) on the fly with ``fast_exp2`` (each task copies its slice of A, transposed and
multiplied by log2 e, into a local [N, TD] array), and loops over channels innermost (contiguous in the [B, L, D]
layout), so each step is a few SIMD instructions per state row. softplus, the silu(z) gate and their derivatives run
per (t, d) inside the same kernels.

Memory for backward: the forward saves the state every K steps after the first chunk (``checkpoints``
[B, ceil(L / K) - 1, N, D]; the first chunk starts from the initial state) and the pre-gate output p [B, L, D]
(no N axis). The backward walks the chunks from last to first, recomputes the step sizes dt = softplus(delta +
bias), the K states of a chunk into a local buffer [K + 1, N, TD] (and the K decays exp(dt A), reused by the
reverse walk), then walks that chunk in reverse with the state adjoint. Like mamba_ssm's ``selective_scan_bwd`` it
keeps no dt [B, L, D] from the forward. Its [B, L, D] outputs du, ddelta and dz may share memory with its inputs u,
delta and gy (each element is read before it is overwritten), which ``ssmkit.kernels.mamba_inner_cpu`` uses to keep
fewer buffers. Gradients that sum over channels (dB, dC) are written per tile into partial buffers
[B, L, D / TD, N]; those that sum over batch rows (dA, dD, ddelta_bias) into per-row buffers; both are reduced after
the parallel loop by serial numba loops in a fixed order (skipped where there is a single part), so the results do
not depend on the thread count. The initial / final states and d initial_state are read and written in their
[B, D, N] layout by the tasks themselves (N * TD strided values per task, once), so the wrapper runs no torch
transposes or reductions: small problems (B=32, L=16, D=64) pay little besides the two kernel calls. See
``ssmkit/kernels/README.md`` for the math and the measurements.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .._numba_utils import (
    _HELPER_OPTIONS,
    EXP2_CONSTS,
    JIT_OPTIONS,
    LOG2E,
    exp2_consts,
    fast_exp2,
    match_torch_threads,
    sigmoid,
    softplus,
    softplus_grad,
    tile_width,
    to_f32,
)

__all__ = ["selective_scan"]

CHUNK = 32  # K: steps between saved states (the backward recomputes one chunk at a time)
# TD: channels per task, at most MAX_TILE (wide tiles amortize the per-(t, n) and per-(t, d) loop overhead, and a
# task that spans the whole group writes dB / dC directly instead of per-tile partials that need a reduction), and
# TD * N at most TILE_STATE. 4096 (TD = 256 at N = 16, 128 at N = 32) was measured 6-15 % faster forward+backward
# than 2048 at B=2 L=1024 D=256, B=256 L=50 D=128 N=32 (Mamba4Rec) and B=2 L=512 D=1536 (interleaved A/B, one
# thread, 2026-12-04), although a chunk's buffers [K + 1, N, TD] then exceed L2.
MAX_TILE = 256
TILE_STATE = 4096

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_LOG2E64 = np.float64(LOG2E)
# the serial reductions of the backward: strict IEEE order (no fastmath), so their sums are fully specified
_REDUCE_OPTIONS = dict(cache=True, nogil=True, error_model="numpy")


@numba.njit(**JIT_OPTIONS)
def _forward(u, delta, bias, A, Bm, Cm, Dv, z, h0, lengths, expc, has_z, has_h0, softplus_on, reverse, tile, chunk,
             y, p, final, checkpoints):
    """Fused forward over all (batch, channel-tile) tasks; fills y, p, final and checkpoints in place.

    Args (float32 unless said): u, delta, z [B, L, D] (z [1, 1, 1] when has_z is False); bias [D]; A [D, N];
    Bm, Cm [B, L, G, N]; Dv [D]; h0 [B, D, N] (the initial state; [1, 1, 1] when has_h0 is False: zeros);
    lengths int64 [B]; expc = EXP2_CONSTS; flags are runtime booleans; tile, chunk int.
    Outputs: y [B, L, D]; p [B, L, D] the output before the gate (written only when has_z); positions >= length are
    left as the caller filled them. final [B, D, N], checkpoints [B, ceil(L / chunk) - 1, N, D] (the state before
    step s for s = chunk, 2 chunk, ...).
    """
    batch, _, dim = u.shape
    dstate = A.shape[1]
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
        # the task's slices of A^T log2(e) (rounded once from float64) and of the state, transposed to [N, TD]
        a_loc = np.empty((dstate, tile), dtype=np.float32)  # A^T log2(e) tile [N, TD]
        h = np.zeros((dstate, tile), dtype=np.float32)  # state [N, TD]
        for j in range(tile):
            for n in range(dstate):
                a_loc[n, j] = np.float32(np.float64(A[d0 + j, n]) * _LOG2E64)
                if has_h0:
                    h[n, j] = h0[b, d0 + j, n]
        dv = Dv[d0:d1]
        bias_t = bias[d0:d1]
        dtl = np.empty(tile, dtype=np.float32)  # dt of the step
        dtu = np.empty(tile, dtype=np.float32)
        acc = np.empty(tile, dtype=np.float32)
        for s in range(length):
            t = length - 1 - s if reverse else s
            ut = np.uint64(t)
            if s % chunk == 0 and s > 0:
                c = s // chunk - 1
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
        for j in range(tile):
            for n in range(dstate):
                final[b, d0 + j, n] = h[n, j]


@numba.njit(**JIT_OPTIONS)
def _backward(u, delta, bias, A, Bm, Cm, Dv, z, h0, p, lengths, expc, has_z, has_h0, has_gfinal, softplus_on,
              reverse, tile, chunk, checkpoints, gy, gfinal, du, ddelta, dz, dA_rows, dB_tiles, dC_tiles, dD_rows,
              dbias_rows, dh0, dA, dD, dbias, dB, dC):
    """Fused backward with chunked recomputation; fills the gradient buffers in place.

    Args: the forward inputs and flags, p (p = y without z) and checkpoints from the forward, gy [B, L, D], gfinal
    [B, D, N] ([1, 1, 1] when has_gfinal is False: zeros). Outputs: du, ddelta, dz [B, L, D] (0 at positions >=
    length); dh0 [B, D, N]; per-task partial sums dA_rows [B, N, D], dD_rows, dbias_rows [B, D] and dB_tiles,
    dC_tiles [B, L, D / tile, N] (0 at positions >= length), reduced after the parallel loop, in a fixed order,
    into dA [D, N], dD, dbias [D] and (when there are more tiles than groups) dB, dC [B, L, G, N]. du may be u,
    ddelta may be delta and dz may be gy (the same array): every element is read before it is written.
    """
    batch, seqlen, dim = u.shape
    dstate = A.shape[1]
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
        for j in range(tile):
            for n in range(dstate):
                a_loc[n, j] = A[d0 + j, n]
                a2_loc[n, j] = np.float32(np.float64(A[d0 + j, n]) * _LOG2E64)
                dh[n, j] = gfinal[b, d0 + j, n] if has_gfinal else _ZERO
        dv = Dv[d0:d1]
        bias_t = bias[d0:d1]
        nchunks = (length + chunk - 1) // chunk
        for c in range(nchunks - 1, -1, -1):
            s0 = c * chunk
            count = min(chunk, length - s0)
            if c > 0:
                for n in range(dstate):
                    ck_row = checkpoints[b, c - 1, n, d0:d1]
                    for j in range(tile):
                        hbuf[0, n, j] = ck_row[j]
            else:  # the first chunk starts from the initial state
                for j in range(tile):
                    for n in range(dstate):
                        hbuf[0, n, j] = h0[b, d0 + j, n] if has_h0 else _ZERO
            for k in range(count):  # recompute the chunk's step sizes, states and decays
                t = length - 1 - (s0 + k) if reverse else s0 + k
                ut = np.uint64(t)
                for j in range(utile):
                    dtbuf[k, j] = delta[ub, ut, ud0 + j] + bias_t[j]
                if softplus_on:
                    for j in range(utile):
                        dtbuf[k, j] = softplus(dtbuf[k, j], ek)
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
                    for j in range(utile):  # writes only local arrays: vectorizes even when dz is gy
                        zj = z[ub, ut, ud0 + j]
                        gyj = gy[ub, ut, ud0 + j]
                        sz = w[j]
                        q[j] = gyj * zj * sz
                        w[j] = gyj * p[ub, ut, ud0 + j] * sz * (_ONE + zj * (_ONE - sz))  # dz
                    for j in range(utile):
                        dz[ub, ut, ud0 + j] = w[j]
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
                    w[j] = sum_wa[j] + sum_gb[j] * u[ub, ut, ud0 + j]  # d dt (u read before du may overwrite it)
                for j in range(utile):
                    du[ub, ut, ud0 + j] = q[j] * dv[j] + sum_gb[j] * dtbuf[k, j]
                if softplus_on:
                    for j in range(utile):
                        w[j] *= softplus_grad(delta[ub, ut, ud0 + j] + bias_t[j], ek)
                for j in range(utile):
                    ddelta[ub, ut, ud0 + j] = w[j]
                    dbias_loc[j] += w[j]
        _zero_tail(length, ub, ud0, utile, k_tile, has_z, du, ddelta, dz, dB_tiles, dC_tiles)
        for n in range(dstate):
            dA_row = dA_rows[b, n, d0:d1]
            for j in range(tile):
                dA_row[j] = dA_loc[n, j]
        for j in range(tile):
            for n in range(dstate):
                dh0[b, d0 + j, n] = dh[n, j]
        for j in range(tile):
            dD_rows[b, d0 + j] = dD_loc[j]
            dbias_rows[b, d0 + j] = dbias_loc[j]
    _reduce_rows(dA_rows, dD_rows, dbias_rows, dA, dD, dbias)
    if dB.shape[2] != dB_tiles.shape[2]:
        _reduce_tiles(dB_tiles, dB)
        _reduce_tiles(dC_tiles, dC)


@numba.njit(**_HELPER_OPTIONS)
def _zero_tail(length, ub, ud0, utile, k_tile, has_z, du, ddelta, dz, dB_tiles, dC_tiles):
    """Zero one task's gradients at the positions the scan skips (t >= length, in both directions), so the output
    buffers need no zero fill and may hold the aliased inputs."""
    seqlen = du.shape[1]
    dstate = dB_tiles.shape[3]
    b = np.int64(ub)
    for t in range(length, seqlen):
        ut = np.uint64(t)
        for j in range(utile):
            du[ub, ut, ud0 + j] = _ZERO
            ddelta[ub, ut, ud0 + j] = _ZERO
        if has_z:
            for j in range(utile):
                dz[ub, ut, ud0 + j] = _ZERO
        for n in range(dstate):
            dB_tiles[b, t, k_tile, n] = _ZERO
            dC_tiles[b, t, k_tile, n] = _ZERO


@numba.njit(**_REDUCE_OPTIONS)
def _reduce_rows(dA_rows, dD_rows, dbias_rows, dA, dD, dbias):
    """Sums over the batch rows in the order b = 0, 1, ...: dA [D, N] from dA_rows [B, N, D], dD, dbias [D]."""
    batch, dstate, dim = dA_rows.shape
    acc = dA_rows[0].copy()  # [N, D]
    for b in range(1, batch):
        for n in range(dstate):
            for d in range(dim):
                acc[n, d] += dA_rows[b, n, d]
    for d in range(dim):
        for n in range(dstate):
            dA[d, n] = acc[n, d]
    for d in range(dim):
        dD[d] = dD_rows[0, d]
        dbias[d] = dbias_rows[0, d]
    for b in range(1, batch):
        for d in range(dim):
            dD[d] += dD_rows[b, d]
            dbias[d] += dbias_rows[b, d]


@numba.njit(**_REDUCE_OPTIONS)
def _reduce_tiles(tiles, out):
    """Sums the channel tiles of each group in tile order: tiles [B, L, T, N] -> out [B, L, G, N] (T multiple of G)."""
    batch, seqlen, ntiles, dstate = tiles.shape
    per_group = ntiles // out.shape[2]
    for b in range(batch):
        for t in range(seqlen):
            for g in range(out.shape[2]):
                for n in range(dstate):
                    acc = tiles[b, t, g * per_group, n]
                    for k in range(1, per_group):
                        acc += tiles[b, t, g * per_group + k, n]
                    out[b, t, g, n] = acc


def _lengths_np(lengths: torch.Tensor | None, batch: int, seqlen: int) -> np.ndarray:
    if lengths is None:
        return np.full(batch, seqlen, dtype=np.int64)
    return lengths.detach().to(torch.int64).contiguous().numpy()


def _as(grad: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """``grad`` as a tensor in the dtype of ``like`` (no copy when it is float32)."""
    t = torch.from_numpy(grad)
    return t if like.dtype == torch.float32 else t.to(like.dtype)


_DUMMY = np.zeros((1, 1, 1), dtype=np.float32)  # stands in for an absent [B, L, D] or [B, D, N] array (never read)


def scan_tile(dim: int, groups: int, dstate: int) -> int:
    """Channels per task TD: a divisor of D / G of at most MAX_TILE channels and TILE_STATE / N states."""
    return tile_width(dim // groups, min(MAX_TILE, max(8, TILE_STATE // dstate)))


def scan_forward_np(u, delta, bias, A, Bm, Cm, Dv, z, h0, lengths, softplus_on: bool, reverse: bool, partial: bool):
    """The forward kernel on float32 numpy arrays (C-contiguous; None for an absent z or h0).

    Args:
        u, delta, z: [B, L, D]; bias, Dv: [D]; A: [D, N]; Bm, Cm: [B, L, G, N]; h0: [B, D, N]; lengths: int64 [B].
        softplus_on, reverse: as ``selective_scan``.
        partial: some length is below L (the outputs are then zero-filled first: 0 at the skipped positions).

    Returns:
        (y, p, final, checkpoints): y [B, L, D]; p [B, L, D] the output before the gate (y itself when z is None);
        final [B, D, N]; checkpoints [B, ceil(L / CHUNK) - 1, N, D] (kept for ``scan_backward_np``).
    """
    batch, seqlen, dim = u.shape
    dstate, groups = A.shape[1], Bm.shape[2]
    new = np.zeros if partial else np.empty
    y = new((batch, seqlen, dim), dtype=np.float32)
    p = new((batch, seqlen, dim), dtype=np.float32) if z is not None else y
    final = np.empty((batch, dim, dstate), dtype=np.float32)
    checkpoints = np.empty((batch, max(0, (seqlen - 1) // CHUNK), dstate, dim), dtype=np.float32)
    _forward(u, delta, bias, A, Bm, Cm, Dv, z if z is not None else _DUMMY, h0 if h0 is not None else _DUMMY,
             lengths, EXP2_CONSTS, z is not None, h0 is not None, softplus_on, reverse, scan_tile(dim, groups, dstate),
             CHUNK, y, p, final, checkpoints)
    return y, p, final, checkpoints


def scan_backward_np(u, delta, bias, A, Bm, Cm, Dv, z, h0, lengths, softplus_on: bool, reverse: bool, p, checkpoints,
                     gy, gfinal, du=None, ddelta=None, dz=None):
    """The backward kernel on float32 numpy arrays (forward inputs as in ``scan_forward_np``, then its p and
    checkpoints, gy [B, L, D] and gfinal [B, D, N] or None).

    ``du``, ``ddelta`` and ``dz`` are output buffers [B, L, D] or None (new arrays); they may be ``u``, ``delta`` and
    ``gy`` themselves, which are then overwritten by their gradients.

    Returns:
        (du, ddelta, dz, dA [D, N], dB [B, L, G, N], dC, dD [D], dbias [D], dh0 [B, D, N]); dz is None without z.
    """
    batch, seqlen, dim = u.shape
    dstate, groups = A.shape[1], Bm.shape[2]
    tile = scan_tile(dim, groups, dstate)
    ntiles = dim // tile
    f32 = np.float32
    du = np.empty((batch, seqlen, dim), dtype=f32) if du is None else du
    ddelta = np.empty((batch, seqlen, dim), dtype=f32) if ddelta is None else ddelta
    if z is not None and dz is None:
        dz = np.empty((batch, seqlen, dim), dtype=f32)
    dB_tiles = np.empty((batch, seqlen, ntiles, dstate), dtype=f32)
    dC_tiles = np.empty((batch, seqlen, ntiles, dstate), dtype=f32)
    dB = dB_tiles if ntiles == groups else np.empty((batch, seqlen, groups, dstate), dtype=f32)
    dC = dC_tiles if ntiles == groups else np.empty((batch, seqlen, groups, dstate), dtype=f32)
    dA_rows, dD_rows, dbias_rows = np.empty((batch, dstate, dim), f32), np.empty((batch, dim), f32), np.empty(
        (batch, dim), f32)
    dA, dD, dbias = np.empty((dim, dstate), f32), np.empty(dim, f32), np.empty(dim, f32)
    dh0 = np.empty((batch, dim, dstate), dtype=f32)
    _backward(u, delta, bias, A, Bm, Cm, Dv, z if z is not None else _DUMMY, h0 if h0 is not None else _DUMMY, p,
              lengths, EXP2_CONSTS, z is not None, h0 is not None, gfinal is not None, softplus_on, reverse, tile,
              CHUNK, checkpoints, gy, gfinal if gfinal is not None else _DUMMY, du, ddelta,
              dz if dz is not None else _DUMMY, dA_rows, dB_tiles, dC_tiles, dD_rows, dbias_rows, dh0, dA, dD, dbias,
              dB, dC)
    return du, ddelta, dz, dA, dB, dC, dD, dbias, dh0


class _SelectiveScanCPU(torch.autograd.Function):
    """autograd wrapper: numba forward, numba backward with recomputation.

    The float32 inputs are handed to numba as numpy views (copies only for other dtypes or strides), the kernels
    read and write A [D, N] and the states [B, D, N] in place (no transposes in torch) and reduce the gradients
    over batch rows and channel tiles themselves, so the wrapper adds few torch operations to the two kernel calls.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, lengths, delta_softplus, reverse):
        match_torch_threads()
        batch, seqlen, dim = u.shape
        arrays = (to_f32(u), to_f32(delta),
                  to_f32(delta_bias) if delta_bias is not None else np.zeros(dim, dtype=np.float32),
                  to_f32(A), to_f32(B), to_f32(C), to_f32(D) if D is not None else np.zeros(dim, dtype=np.float32),
                  to_f32(z) if z is not None else None, to_f32(initial_state) if initial_state is not None else None,
                  _lengths_np(lengths, batch, seqlen))
        partial = lengths is not None and bool((lengths < seqlen).any())
        y, p, final, checkpoints = scan_forward_np(*arrays, delta_softplus, reverse, partial)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, lengths)
        ctx.kernel_state = (arrays, p, checkpoints)  # the float32 views / copies, reused
        ctx.flags = (delta_softplus, reverse)
        ctx.set_materialize_grads(False)  # an unused output gets no zero-filled gradient
        y_t = torch.from_numpy(y)
        return (y_t if u.dtype == torch.float32 else y_t.to(u.dtype)), torch.from_numpy(final)  # [B, D, N]

    @staticmethod
    def backward(ctx, gy, gfinal):
        u, delta, A, B, C, D, z, delta_bias, initial_state, lengths = ctx.saved_tensors
        arrays, p, checkpoints = ctx.kernel_state
        match_torch_threads()
        gy_np = to_f32(gy) if gy is not None else np.zeros(u.shape, dtype=np.float32)
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0 = scan_backward_np(
            *arrays, *ctx.flags, p, checkpoints, gy_np, to_f32(gfinal) if gfinal is not None else None)
        # gradients in the inputs' dtypes (no cast or copy when they are float32)
        grads = (
            _as(du, u), _as(ddelta, delta), _as(dA, A), _as(dB, B), _as(dC, C),
            _as(dD, D) if D is not None else None,
            _as(dz, z) if z is not None else None,
            _as(dbias, delta_bias) if delta_bias is not None else None,
            _as(dh0, initial_state) if initial_state is not None else None,
        )
        return (*grads, None, None, None)


@torch.compiler.disable  # dynamo must not trace into numba
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


@numba.njit(**JIT_OPTIONS)
def _gate(p, z, expc, y):
    """y = p * silu(z) over [B, L, D], with the forward kernel's arithmetic (so it reproduces its y bit for bit)."""
    batch, seqlen, dim = p.shape
    for b in numba.prange(batch):
        ek = exp2_consts(expc)
        ub = np.uint64(b)
        for t in range(seqlen):
            ut = np.uint64(t)
            for j in range(np.uint64(dim)):
                zj = z[ub, ut, j]
                y[ub, ut, j] = p[ub, ut, j] * (zj * sigmoid(zj, ek))


def gate_np(p: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The gated output ``p * silu(z)`` [B, L, D] of ``scan_forward_np`` recomputed from its p and z (float32)."""
    y = np.empty(p.shape, dtype=np.float32)
    _gate(p, z, EXP2_CONSTS, y)
    return y
