"""Selective scan, Triton backend: fused forward and backward kernels (state on chip, recompute in backward).

Design (layout [B, L, D]; B and C arrive as [B, L, G, N]; see naive.py for the glossary). Two forward kernels, one
backward; ``reverse`` and ``lengths`` are index arithmetic everywhere (step ``s`` reads time ``t = s`` or
``t = len - 1 - s`` and the loops stop at ``len``); nothing is flipped or copied.

* Forward, "rows" kernel (``_fwd_rows_kernel``, used up to ``_ROWS_MAX_DSTATE`` = 32 states): one channel per
  thread, 32 channels per one-warp program, grid ``(batch, G * tiles_per_group)``. A thread keeps its channel's N
  states as N float32 registers (a tuple of ``[BLOCK_D]`` vectors, unrolled over N), so the sum over N for y and
  the broadcast of B_t / C_t need no shuffles and no shared memory: per state and step it is two multiplies
  (``dt * A log2 e``, ``dt u * B_t``), one ``ex2.approx`` and two FMAs. B_t / C_t rows are read as whole 8-byte
  words when the rows allow it (``_packable``). The loads of the next ``PREFETCH`` steps are issued before the
  current step computes (a ring of loaded values carried by the loop, unrolled ``PREFETCH`` times): the kernel is
  latency-bound and this is what pays. Every ``CHUNK = 32`` steps it stores a float32 checkpoint of the state,
  ``ckpt [B, ceil(L / CHUNK), D, N]``, and at the end the final state. ``_ROWS_LANES`` = 2 or 4 splits a channel's
  states over that many threads (more warps for the same work, y summed over them by a shuffle); it is tested
  (interpreter) but not yet measured on a GPU, so the default is 1.
* Forward, "tile" kernel (``_fwd_kernel``, any N): a program owns ``BLOCK_D`` channels of one group and all N
  states as a ``[BLOCK_D, BLOCK_N]`` register tile of ``_TILE_VALUES_FWD`` values and walks its steps in groups of
  ``_UNROLL_FWD``, one 2-D load per input per group; same checkpoints and outputs.
* Backward walks the chunks in reverse. For each chunk it recomputes the chunk's states from the checkpoint into a
  per-program float32 scratch ``[CHUNK, BLOCK_D, BLOCK_N]`` (8 KiB at 256 values: meant to stay in L1/L2), then
  runs the adjoint recurrence backwards through the chunk: ``g_h += dy_pre * C_t``, gradients of the step,
  ``g_h *= exp(dt A)``. du / ddelta / dz are written directly. dB and dC are summed over the tile's channels and
  written as per-tile float32 partials ``[B, L, G, tiles_per_group, N]``; dA, dD and d(delta_bias) as per-batch
  partials ``[B, D, N]`` / ``[B, D]``. The partials are reduced afterwards with torch: deterministic, no atomics.
  The backward runs one step per iteration (UNROLL = 1: at 150-200 registers it has no room for more).
  The partials take B L G T N floats each: at N = 32 and D = 128 (Mamba4Rec) 4-channel tiles make that 2 bytes per
  state value and token, 3.2 GiB of a 7.0 GiB training step at batch 2048 x 200. ``_BWD_MAX_TILES`` caps T with wider
  tiles on proportionally more warps (tested; its speed is not yet measured on a GPU, so the default is no cap).
* Backward, "rows" kernel (``_bwd_rows_kernel``, ``_BWD_KIND = "rows"``, up to ``_ROWS_MAX_DSTATE`` states; off by
  default until measured on a GPU): the rows forward's layout for the backward. One channel per thread
  (``_BWD_ROWS_BLOCK_D`` channels per program), its N states, their adjoints and dA sums as N-register tuples, so
  y, the gate, gB and ddelta need no shuffles; only dB / dC (sums over the program's channels) use warp reductions.
  The recomputed chunk goes to a per-program scratch ``[CHUNK, N, BLOCK_D]`` (each thread reads back what it
  wrote), and the grid is persistent (at most ``_BWD_ROWS_PER_SM`` programs per SM loop over the (batch, group,
  tile) items), so the scratch is bounded by the GPU, not by B x D. Compiled for sm_90 (bf16, N = 16, all gates):
  786 instructions per step for 16 state values (49 per value) in the adjoint loop and 138 (9 per value) in the
  recompute loop, against 93 and 26 per value for the tile backward; 168 registers, no spill at N = 16 without
  lengths / reverse / dfinal, small spills (16-32 bytes) at N = 32. ``_BWD_ROWS_TILE_SUMS`` writes each thread's
  2N dB / dC terms to a ``[2N, BLOCK_D]`` scratch tile and sums it after a barrier, instead of one warp reduction
  per value: 547 instructions per step (34 per value; shuffles 160 -> 24); it spills more at N = 32 (up to 88
  bytes in float32), so it is a separate setting.
* Math is float32 whatever the I/O dtype (fp32 / bf16 / fp16). Softplus uses threshold 20, as the spec. On a GPU
  the rows kernel uses the approximate ``ex2`` / ``lg2`` instructions (``FAST``); the interpreter uses tl.exp2 /
  tl.log2.

Bytes moved per (batch, token), s = I/O element size, T = tiles per group (G * T = D / BLOCK_D):
  forward  ``4 s D + 2 s G N`` (u, delta, z in; y out; B_t, C_t) plus ``4 D N / CHUNK`` of checkpoints;
  backward ``7 s D + 2 s G N`` (u, delta, z, dy in; du, ddelta, dz out; B_t, C_t), re-read once more from L2 by the
  recompute pass, plus ``2 * 4 * G * T * N`` of dB/dC partials written and read again by the reduction (at N = 16
  and the default BLOCK_D = 8 that is 16 D bytes, more than the 14 D of bf16 I/O: the price of no atomics, also in
  memory), plus the scratch (L1/L2).
  B_t / C_t rows are re-read by every program of a group (L2 traffic, not HBM). One exp per (d, n) per step forward,
  two in backward: at N >= 16 the special-function unit, not HBM, bounds an H100 (reference/kernels.md section 4).
Measured on an H200 (benchmarks/results/kernels-gpu.md; B=8, L=4096, D=1536, N=16, bf16): forward 2.05 ms with the
tile kernel, 1.12-1.16 ms with the rows kernel at PREFETCH = 4 (the default; 1.02 ms at 6, which was not run
through the CUDA test suite), i.e. 17 % of the exp floor (0.19 ms); forward+backward 8.9 -> 8.4 ms. The rows kernel
is still latency-bound: 384 one-warp programs leave one warp or none per scheduler, and ptxas moves part of the
prefetched values into other registers a step after their load, which waits on it. Reaching the floor needs more
independent work per scheduler (a time-split pass, or a channel's states spread over 2-4 lanes).
"""


from __future__ import annotations

import torch
import triton
import triton.language as tl

from ssmkit.kernels._backend import triton_interpret

__all__ = ["selective_scan"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
_UNROLL_FWD = 4  # forward: steps per group, loaded as [U, BLOCK_D] / [U, N] tiles before the group's math
_UNROLL_BWD = 1  # backward: one step per iteration (its register pressure leaves no room for unrolling)
_TILE_VALUES_FWD = 128  # float32 state values per forward program (BLOCK_D * BLOCK_N)
_TILE_VALUES_BWD = 128  # float32 state values per backward program
_NUM_WARPS_FWD = 1
_NUM_WARPS_BWD = 1
_NUM_STAGES_FWD = 3
_NUM_STAGES_BWD = 3
# forward "rows" kernel (one channel per thread, its N states in registers): used when N <= _ROWS_MAX_DSTATE
_FWD_KIND = "rows"  # "rows" or "tile" (the [BLOCK_D, BLOCK_N] tile kernel, any N)
_ROWS_MAX_DSTATE = 32
_ROWS_NUM_WARPS = 1  # BLOCK_D = 32 * warps channels per program
_ROWS_PREFETCH = 4  # steps loaded ahead of the one being computed (1 above 16 states: registers)
_ROWS_PACK = True  # load B_t / C_t rows as 8-byte words (when N and the pointers allow it)
_BWD_MAX_TILES = 0  # > 0: at most this many backward tiles per group (less partial memory; not yet measured)
_ROWS_LANES = 1  # threads per channel, each with N / LANES of its states (2 or 4: more warps; not yet measured)
_BWD_KIND = "tile"  # "tile" or "rows" (one channel per thread, up to _ROWS_MAX_DSTATE states; not yet measured)
_BWD_ROWS_BLOCK_D = 32  # rows backward: channels per program (a multiple of 32 * warps: channels per thread)
_BWD_ROWS_NUM_WARPS = 1
_BWD_ROWS_PER_SM = 16  # rows backward: persistent programs per SM (each holds a [CHUNK, N, BLOCK_D] scratch)
_BWD_ROWS_TILE_SUMS = False  # rows backward: dB / dC sums from a [2N, BLOCK_D] scratch tile, not per-value reductions
_BWD_ROWS_MAX_PROGRAMS = 0  # > 0: at most this many programs (tests: several work items per program, any device)
_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)


def _chunk_size() -> int:
    """Steps between forward checkpoints (and rows of the backward scratch)."""
    return 32


def _block_sizes(dim_per_group: int, dstate: int, tile_values: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_N): the state tile holds at most ``tile_values`` float32 values."""
    block_n = triton.next_power_of_2(dstate)
    block_d = max(1, min(triton.next_power_of_2(dim_per_group), tile_values // block_n, 128))
    return block_d, block_n


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(x, 20.0))), x)


@triton.jit
def _fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, len_ptr,
    y_ptr, final_ptr, ckpt_ptr,
    seqlen, dim, groups, dim_per_group, tiles_per_group, dstate, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, UNROLL: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    g = pid_t // tiles_per_group
    dloc = (pid_t % tiles_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    dmask = dloc < dim_per_group
    d = g * dim_per_group + dloc  # [BD] channel index
    n = tl.arange(0, BLOCK_N)  # [BN]
    nmask = n < dstate
    m2 = dmask[:, None] & nmask[None, :]
    dn = d[:, None] * dstate + n[None, :]  # [BD, BN] offsets inside a [D, N] matrix
    A = tl.load(A_ptr + dn, mask=m2, other=0.0).to(tl.float32)  # [BD, BN]
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    if HAS_INIT:
        h = tl.load(init_ptr + pid_b * dim * dstate + dn, mask=m2, other=0.0).to(tl.float32)  # [BD, BN]
    else:
        h = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    if HAS_LENGTHS:
        length = tl.load(len_ptr + pid_b)
    else:
        length = seqlen
    group_rows = tl.arange(0, UNROLL)  # [U]
    for k in range(0, tl.cdiv(length, CHUNK)):
        tl.store(ckpt_ptr + (pid_b * n_chunks + k) * dim * dstate + dn, h, mask=m2)
        end = tl.minimum(k * CHUNK + CHUNK, length)
        for s_group in range(k * CHUNK, end, UNROLL):
            # one 2-D load per input for UNROLL steps (all issued before any math), then the steps in order
            s_vec = s_group + group_rows  # [U]
            if REVERSE:
                t_vec = length - 1 - s_vec
            else:
                t_vec = s_vec
            row_vec = pid_b * seqlen + t_vec  # [U] flat (batch, time) index
            valid_vec = s_vec < end
            off = row_vec[:, None] * dim + d[None, :]  # [U, BD]
            m = valid_vec[:, None] & dmask[None, :]
            off_bc = (row_vec[:, None] * groups + g) * dstate + n[None, :]  # [U, BN]
            m_bc = valid_vec[:, None] & nmask[None, :]
            u_group = tl.load(u_ptr + off, mask=m, other=0.0).to(tl.float32)  # [U, BD]
            dt_group = tl.load(delta_ptr + off, mask=m, other=0.0).to(tl.float32)  # [U, BD]
            B_group = tl.load(B_ptr + off_bc, mask=m_bc, other=0.0).to(tl.float32)  # [U, BN]
            C_group = tl.load(C_ptr + off_bc, mask=m_bc, other=0.0).to(tl.float32)  # [U, BN]
            if HAS_Z:
                z_group = tl.load(z_ptr + off, mask=m, other=0.0).to(tl.float32)  # [U, BD]
            if HAS_BIAS:
                dt_group = dt_group + bias[None, :]
            if SOFTPLUS:
                dt_group = _softplus(dt_group)
            dtu_group = dt_group * u_group  # [U, BD]
            y_group = tl.zeros([UNROLL, BLOCK_D], dtype=tl.float32)  # [U, BD]
            for j in tl.static_range(UNROLL):
                pick = (group_rows == j)[:, None]  # [U, 1] selects step s_group + j
                dt = tl.sum(tl.where(pick, dt_group, 0.0), axis=0)  # [BD]
                dtu = tl.sum(tl.where(pick, dtu_group, 0.0), axis=0)  # [BD]
                Bt = tl.sum(tl.where(pick, B_group, 0.0), axis=0)  # [BN]
                Ct = tl.sum(tl.where(pick, C_group, 0.0), axis=0)  # [BN]
                h_new = tl.exp(dt[:, None] * A) * h + dtu[:, None] * Bt[None, :]  # [BD, BN]
                h = tl.where(s_group + j < end, h_new, h)
                y = tl.sum(h * Ct[None, :], axis=1)  # [BD]
                y_group = tl.where(pick, y[None, :], y_group)
            if HAS_D:
                y_group = y_group + Dv[None, :] * u_group
            if HAS_Z:
                y_group = y_group * z_group * tl.sigmoid(z_group)
            tl.store(y_ptr + off, y_group, mask=m)
    tl.store(final_ptr + pid_b * dim * dstate + dn, h, mask=m2)


@triton.jit
def _exp2(x, FAST: tl.constexpr):
    """2**x: the bare ``ex2.approx.ftz`` instruction on a GPU (FAST), ``tl.exp2`` in the interpreter."""
    if FAST:
        return tl.inline_asm_elementwise("ex2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return tl.exp2(x)


@triton.jit
def _log2(x, FAST: tl.constexpr):
    """log2(x): ``lg2.approx.ftz`` on a GPU (FAST), ``tl.log2`` in the interpreter."""
    if FAST:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return tl.log2(x)


@triton.jit
def _softplus2(x, FAST: tl.constexpr):
    """Softplus with threshold 20 through ``_exp2`` / ``_log2`` (the rows kernels' form of ``_softplus``)."""
    return tl.where(x <= 20.0, _LN2 * _log2(1.0 + _exp2(tl.minimum(x, 20.0) * _LOG2E, FAST), FAST), x)


@triton.jit
def _load_bc_row(ptr, ok, COUNT: tl.constexpr, PACK: tl.constexpr):
    """COUNT values of a B_t or C_t row from ``ptr``, as loaded (unconverted, so the load is not waited on): a
    tuple of COUNT values, or with PACK a tuple of 8-byte words (each word holds 8 // element-size values)."""
    row = ()
    if PACK:
        words = ptr.to(tl.pointer_type(tl.uint64))
        for w in tl.static_range(COUNT * ptr.dtype.element_ty.primitive_bitwidth // 64):
            row = row + (tl.load(words + w, mask=ok, other=0),)
    else:
        for i in tl.static_range(COUNT):
            row = row + (tl.load(ptr + i, mask=ok, other=0.0),)
    return row


@triton.jit
def _bc_value(row, i: tl.constexpr, ELEM: tl.constexpr, PACK: tl.constexpr):
    """Value ``i`` of a row from ``_load_bc_row`` as float32 (ELEM: 0 float32, 1 bfloat16, 2 float16)."""
    if PACK:
        if ELEM == 0:
            word = row[i // 2]
            if i % 2 == 0:
                bits = word.to(tl.uint32)
            else:
                bits = (word >> 32).to(tl.uint32)
            return bits.to(tl.float32, bitcast=True)
        else:
            word = row[i // 4]
            if (i % 4) // 2 == 0:
                half = word.to(tl.uint32)
            else:
                half = (word >> 32).to(tl.uint32)
            if ELEM == 1:  # bfloat16: the value's 16 bits become the high half of a float32
                if i % 2 == 0:
                    return (half << 16).to(tl.float32, bitcast=True)
                else:
                    return (half & 0xFFFF0000).to(tl.float32, bitcast=True)
            else:
                if i % 2 == 0:
                    bits16 = half.to(tl.uint16)
                else:
                    bits16 = (half >> 16).to(tl.uint16)
                return bits16.to(tl.float16, bitcast=True).to(tl.float32)
    else:
        return row[i].to(tl.float32)


@triton.jit
def _load_step(u_ptr, delta_ptr, z_ptr, B_ptr, C_ptr, s, length, seqlen, dim, groups, g, pid_b, d, dmask, n0,
               HAS_Z: tl.constexpr, REVERSE: tl.constexpr, DSTATE: tl.constexpr, NS: tl.constexpr,
               PACK: tl.constexpr):
    """Issue the loads of step ``s`` (masked off past ``length``) and return them unconverted: u, delta, z of the
    thread's channel and its NS values of B_t and C_t, from state n0."""
    ok = s < length
    if REVERSE:
        t = length - 1 - s
    else:
        t = s
    row = pid_b * seqlen + t
    m = dmask & ok
    u = tl.load(u_ptr + row * dim + d, mask=m, other=0.0)  # [BD]
    dt = tl.load(delta_ptr + row * dim + d, mask=m, other=0.0)  # [BD]
    if HAS_Z:
        z = tl.load(z_ptr + row * dim + d, mask=m, other=0.0)  # [BD]
    else:
        z = u
    bc = (row * groups + g) * DSTATE + n0  # [BDL]
    return u, dt, z, _load_bc_row(B_ptr + bc, ok, NS, PACK), _load_bc_row(C_ptr + bc, ok, NS, PACK)


@triton.jit
def _fwd_rows_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, init_ptr, len_ptr,
    y_ptr, final_ptr, ckpt_ptr,
    seqlen, dim, groups, dim_per_group, tiles_per_group, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_INIT: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, DSTATE: tl.constexpr, LANES: tl.constexpr,
    PREFETCH: tl.constexpr, PACK: tl.constexpr, ELEM: tl.constexpr, FAST: tl.constexpr,
):
    NS: tl.constexpr = DSTATE // LANES  # states per thread
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    g = pid_t // tiles_per_group
    lane = tl.arange(0, BLOCK_D * LANES)  # [BDL] LANES consecutive threads share a channel
    dloc = (pid_t % tiles_per_group) * BLOCK_D + lane // LANES  # [BDL]
    dmask = dloc < dim_per_group
    d = g * dim_per_group + dloc  # [BDL] channel index
    n0 = (lane % LANES) * NS  # [BDL] first state of the thread
    A2 = ()  # NS x [BDL]: A[d, n0 + i] * log2(e), so that exp(dt A) = exp2(dt A2)
    h = ()  # NS x [BDL]: the state, float32 registers
    for i in tl.static_range(NS):
        A2 = A2 + (tl.load(A_ptr + d * DSTATE + n0 + i, mask=dmask, other=0.0).to(tl.float32) * _LOG2E,)
        if HAS_INIT:
            h = h + (tl.load(init_ptr + (pid_b * dim + d) * DSTATE + n0 + i, mask=dmask, other=0.0).to(tl.float32),)
        else:
            h = h + (tl.zeros([BLOCK_D * LANES], dtype=tl.float32),)
    dloc_c = (pid_t % tiles_per_group) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD] one per channel (y's store)
    dmask_c = dloc_c < dim_per_group
    d_c = g * dim_per_group + dloc_c
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)  # [BDL]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)  # [BDL]
    if HAS_LENGTHS:
        length = tl.load(len_ptr + pid_b)
    else:
        length = seqlen
    ring = ()  # loads of the next PREFETCH steps, in flight while the current step computes
    for p in tl.static_range(PREFETCH):
        ring = ring + (_load_step(u_ptr, delta_ptr, z_ptr, B_ptr, C_ptr, p, length, seqlen, dim, groups, g, pid_b, d,
                                  dmask, n0, HAS_Z, REVERSE, DSTATE, NS, PACK),)
    for s in tl.range(0, length, loop_unroll_factor=PREFETCH):
        if s % CHUNK == 0:  # checkpoint of the state before step s (read by the backward)
            ck = ckpt_ptr + ((pid_b * n_chunks + s // CHUNK) * dim + d) * DSTATE + n0  # [BDL]
            for i in tl.static_range(NS):
                tl.store(ck + i, h[i], mask=dmask)
        # convert step s's loads first (its ring slot is then free), then issue the loads of step s + PREFETCH
        cur = ring[0]
        u = cur[0].to(tl.float32)  # [BD]
        dt = cur[1].to(tl.float32)  # [BD]
        z = cur[2].to(tl.float32)  # [BD]
        B_row = ()
        C_row = ()
        for i in tl.static_range(NS):
            B_row = B_row + (_bc_value(cur[3], i, ELEM, PACK),)
            C_row = C_row + (_bc_value(cur[4], i, ELEM, PACK),)
        later = ()
        for p in tl.static_range(1, PREFETCH):
            later = later + (ring[p],)
        ring = later + (_load_step(u_ptr, delta_ptr, z_ptr, B_ptr, C_ptr, s + PREFETCH, length, seqlen, dim, groups,
                                   g, pid_b, d, dmask, n0, HAS_Z, REVERSE, DSTATE, NS, PACK),)
        if HAS_BIAS:
            dt = dt + bias
        if SOFTPLUS:
            dt = _softplus2(dt, FAST)
        dtu = dt * u  # [BDL]
        y = tl.zeros([BLOCK_D * LANES], dtype=tl.float32)  # [BDL] this thread's share of sum_n C h
        h_next = ()
        for i in tl.static_range(NS):
            h_i = _exp2(dt * A2[i], FAST) * h[i] + dtu * B_row[i]  # [BDL]
            y += h_i * C_row[i]
            h_next = h_next + (h_i,)
        h = h_next
        if HAS_D:
            y += tl.where(n0 == 0, Dv * u, 0.0)  # once per channel
        if HAS_Z:  # the gate is the same on the LANES threads of a channel: apply it before their sum
            y = tl.fdiv(y * z, 1.0 + _exp2(-z * _LOG2E, FAST), ieee_rounding=not FAST)  # y silu(z) = y z / (1 + e^-z)
        if REVERSE:
            t = length - 1 - s
        else:
            t = s
        if LANES == 1:
            tl.store(y_ptr + (pid_b * seqlen + t) * dim + d, y, mask=dmask)
        else:
            y_c = tl.sum(tl.reshape(y, [BLOCK_D, LANES]), axis=1)  # [BD]
            tl.store(y_ptr + (pid_b * seqlen + t) * dim + d_c, y_c, mask=dmask_c)
    fin = final_ptr + (pid_b * dim + d) * DSTATE + n0  # [BDL]
    for i in tl.static_range(NS):
        tl.store(fin + i, h[i], mask=dmask)


@triton.jit
def _bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, len_ptr, ckpt_ptr, dy_ptr, dfinal_ptr,
    scratch_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dinit_ptr,
    seqlen, dim, groups, dim_per_group, tiles_per_group, dstate, n_chunks,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DFINAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, UNROLL: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    g = pid_t // tiles_per_group
    tile = pid_t % tiles_per_group
    dloc = tile * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    dmask = dloc < dim_per_group
    d = g * dim_per_group + dloc  # [BD]
    n = tl.arange(0, BLOCK_N)  # [BN]
    nmask = n < dstate
    m2 = dmask[:, None] & nmask[None, :]
    dn = d[:, None] * dstate + n[None, :]  # [BD, BN]
    tile_nd = tl.arange(0, BLOCK_D)[:, None] * BLOCK_N + n[None, :]  # [BD, BN] offsets inside one scratch row
    scratch = scratch_ptr + (pid_b * groups * tiles_per_group + pid_t) * CHUNK * BLOCK_D * BLOCK_N
    A = tl.load(A_ptr + dn, mask=m2, other=0.0).to(tl.float32)  # [BD, BN]
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    if HAS_DFINAL:
        gh = tl.load(dfinal_ptr + pid_b * dim * dstate + dn, mask=m2, other=0.0).to(tl.float32)  # [BD, BN]
    else:
        gh = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dA_acc = tl.zeros([BLOCK_D, BLOCK_N], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_LENGTHS:
        length = tl.load(len_ptr + pid_b)
    else:
        length = seqlen
    n_valid = tl.cdiv(length, CHUNK)
    for kk in range(0, n_valid):
        k = n_valid - 1 - kk
        s0 = k * CHUNK
        s1 = tl.minimum(s0 + CHUNK, length)
        # 1) recompute the chunk: scratch[j] = state before step s0 + j
        h = tl.load(ckpt_ptr + (pid_b * n_chunks + k) * dim * dstate + dn, mask=m2, other=0.0).to(tl.float32)
        for s_group in range(s0, s1, UNROLL):
            for i in tl.static_range(UNROLL):
                s = s_group + i
                valid = s < s1
                tl.store(scratch + (s - s0) * BLOCK_D * BLOCK_N + tile_nd, h, mask=valid)
                if REVERSE:
                    t = length - 1 - s
                else:
                    t = s
                row = pid_b * seqlen + t
                vd = dmask & valid
                u = tl.load(u_ptr + row * dim + d, mask=vd, other=0.0).to(tl.float32)  # [BD]
                dt = tl.load(delta_ptr + row * dim + d, mask=vd, other=0.0).to(tl.float32)  # [BD]
                if HAS_BIAS:
                    dt = dt + bias
                if SOFTPLUS:
                    dt = _softplus(dt)
                Bt = tl.load(B_ptr + (row * groups + g) * dstate + n, mask=nmask & valid, other=0.0).to(tl.float32)
                h = tl.where(valid, tl.exp(dt[:, None] * A) * h + (dt * u)[:, None] * Bt[None, :], h)  # [BD, BN]
        tl.debug_barrier()
        # 2) adjoint recurrence backwards through the chunk
        for j_group in range(0, s1 - s0, UNROLL):
            for i in tl.static_range(UNROLL):
                s = s1 - 1 - j_group - i
                valid = s >= s0
                if REVERSE:
                    t = length - 1 - s
                else:
                    t = s
                row = pid_b * seqlen + t
                vd = dmask & valid  # an invalid step (past the chunk's start) reads zeros and writes nothing
                vn = nmask & valid
                h_prev = tl.load(scratch + (s - s0) * BLOCK_D * BLOCK_N + tile_nd, mask=valid, other=0.0)
                u = tl.load(u_ptr + row * dim + d, mask=vd, other=0.0).to(tl.float32)  # [BD]
                x = tl.load(delta_ptr + row * dim + d, mask=vd, other=0.0).to(tl.float32)  # [BD]
                if HAS_BIAS:
                    x = x + bias
                if SOFTPLUS:
                    dt = _softplus(x)
                else:
                    dt = x
                Bt = tl.load(B_ptr + (row * groups + g) * dstate + n, mask=vn, other=0.0).to(tl.float32)  # [BN]
                Ct = tl.load(C_ptr + (row * groups + g) * dstate + n, mask=vn, other=0.0).to(tl.float32)  # [BN]
                dy = tl.load(dy_ptr + row * dim + d, mask=vd, other=0.0).to(tl.float32)  # [BD]
                dA = tl.exp(dt[:, None] * A)  # [BD, BN]
                h = dA * h_prev + (dt * u)[:, None] * Bt[None, :]  # [BD, BN] state after step s
                y_pre = tl.sum(h * Ct[None, :], axis=1)  # [BD]
                if HAS_D:
                    y_pre = y_pre + Dv * u
                if HAS_Z:
                    zt = tl.load(z_ptr + row * dim + d, mask=vd, other=0.0).to(tl.float32)  # [BD]
                    sig = tl.sigmoid(zt)
                    dz = dy * y_pre * sig * (1.0 + zt * (1.0 - sig))  # [BD]
                    tl.store(dz_ptr + row * dim + d, dz, mask=vd)
                    dy = dy * zt * sig  # gradient of y before the gate
                if HAS_D:
                    dD_acc += dy * u
                    du = dy * Dv  # [BD]
                else:
                    du = tl.zeros([BLOCK_D], dtype=tl.float32)
                gh = gh + dy[:, None] * Ct[None, :]  # [BD, BN] total gradient of h_s
                dC = tl.sum(dy[:, None] * h, axis=0)  # [BN] summed over the tile's channels
                gh_dA = gh * h_prev * dA  # [BD, BN]
                dA_acc += gh_dA * dt[:, None]
                gB = tl.sum(gh * Bt[None, :], axis=1)  # [BD]
                ddt = tl.sum(gh_dA * A, axis=1) + gB * u  # [BD]
                du = du + gB * dt
                dB = tl.sum(gh * (dt * u)[:, None], axis=0)  # [BN]
                if SOFTPLUS:
                    ddt = tl.where(x <= 20.0, ddt * tl.sigmoid(x), ddt)
                dbias_acc += ddt
                tl.store(du_ptr + row * dim + d, du, mask=vd)
                tl.store(ddelta_ptr + row * dim + d, ddt, mask=vd)
                part = ((row * groups + g) * tiles_per_group + tile) * dstate + n  # [BN]
                tl.store(dB_ptr + part, dB, mask=vn)
                tl.store(dC_ptr + part, dC, mask=vn)
                gh = tl.where(valid, gh * dA, gh)
        tl.debug_barrier()
    tl.store(dinit_ptr + pid_b * dim * dstate + dn, gh, mask=m2)
    tl.store(dA_ptr + pid_b * dim * dstate + dn, dA_acc, mask=m2)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + d, dD_acc, mask=dmask)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + d, dbias_acc, mask=dmask)


@triton.jit
def _load_scan_row(u_ptr, delta_ptr, bias, row, dim, d, dmask, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                   FAST: tl.constexpr):
    """u, the pre-softplus x = delta (+ bias) and dt of the channels ``d`` at flat (batch, time) row ``row``."""
    u = tl.load(u_ptr + row * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    x = tl.load(delta_ptr + row * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    if HAS_BIAS:
        x = x + bias
    if SOFTPLUS:
        dt = _softplus2(x, FAST)
    else:
        dt = x
    return u, x, dt


@triton.jit
def _bwd_rows_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, len_ptr, ckpt_ptr, dy_ptr, dfinal_ptr,
    scratch_ptr, du_ptr, ddelta_ptr, dz_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, dinit_ptr,
    batch, seqlen, dim, groups, dim_per_group, tiles_per_group, n_chunks, n_programs,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_DFINAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, DSTATE: tl.constexpr, PACK: tl.constexpr, ELEM: tl.constexpr,
    FAST: tl.constexpr, SUMS_PAD: tl.constexpr,
):
    pid = tl.program_id(0)
    lane = tl.arange(0, BLOCK_D)  # [BD] one channel per thread (BLOCK_D / (32 warps) channels per thread)
    # this program's scratch: [CHUNK, N, BD] recomputed states, then (SUMS_PAD > 0) [2N, BD] for the dC / dB sums
    scratch = scratch_ptr + pid.to(tl.int64) * (CHUNK + 2) * DSTATE * BLOCK_D
    sums_in = scratch + CHUNK * DSTATE * BLOCK_D
    for work in range(pid, batch * groups * tiles_per_group, n_programs):  # persistent: (batch, group, tile) items
        pid_b = (work // (groups * tiles_per_group)).to(tl.int64)
        g = (work // tiles_per_group) % groups
        tile = work % tiles_per_group
        dloc = tile * BLOCK_D + lane  # [BD]
        dmask = dloc < dim_per_group
        d = g * dim_per_group + dloc  # [BD] channel index
        A2 = ()  # N x [BD]: A[d, n] log2(e), so that exp(dt A) = exp2(dt A2)
        gh = ()  # N x [BD]: gradient of the loss w.r.t. the state after the current step
        dA_acc = ()  # N x [BD]: sum over steps of the gradient w.r.t. A
        for i in tl.static_range(DSTATE):
            A2 = A2 + (tl.load(A_ptr + d * DSTATE + i, mask=dmask, other=0.0).to(tl.float32) * _LOG2E,)
            if HAS_DFINAL:
                gh = gh + (tl.load(dfinal_ptr + (pid_b * dim + d) * DSTATE + i, mask=dmask, other=0.0)
                           .to(tl.float32),)
            else:
                gh = gh + (tl.zeros([BLOCK_D], dtype=tl.float32),)
            dA_acc = dA_acc + (tl.zeros([BLOCK_D], dtype=tl.float32),)
        if HAS_D:
            Dv = tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
        else:
            Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
        else:
            bias = tl.zeros([BLOCK_D], dtype=tl.float32)
        dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        dbias_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        if HAS_LENGTHS:
            length = tl.load(len_ptr + pid_b)
        else:
            length = seqlen
        n_valid = tl.cdiv(length, CHUNK)
        for kk in range(0, n_valid):
            k = n_valid - 1 - kk
            s0 = k * CHUNK
            s1 = tl.minimum(s0 + CHUNK, length)
            # 1) recompute the chunk from its checkpoint: scratch[j, n] = state before step s0 + j
            h = ()
            for i in tl.static_range(DSTATE):
                h = h + (tl.load(ckpt_ptr + ((pid_b * n_chunks + k) * dim + d) * DSTATE + i, mask=dmask, other=0.0),)
            for s in range(s0, s1):
                for i in tl.static_range(DSTATE):
                    tl.store(scratch + ((s - s0) * DSTATE + i) * BLOCK_D + lane, h[i])
                if REVERSE:
                    t = length - 1 - s
                else:
                    t = s
                row = pid_b * seqlen + t
                u, x, dt = _load_scan_row(u_ptr, delta_ptr, bias, row, dim, d, dmask, HAS_BIAS, SOFTPLUS, FAST)
                B_row = _load_bc_row(B_ptr + (row * groups + g) * DSTATE, True, DSTATE, PACK)
                dtu = dt * u  # [BD]
                h_next = ()
                for i in tl.static_range(DSTATE):
                    h_next = h_next + (_exp2(dt * A2[i], FAST) * h[i] + dtu * _bc_value(B_row, i, ELEM, PACK),)
                h = h_next
            tl.debug_barrier()
            # 2) the adjoint recurrence backwards through the chunk
            for j in range(0, s1 - s0):
                s = s1 - 1 - j
                if REVERSE:
                    t = length - 1 - s
                else:
                    t = s
                row = pid_b * seqlen + t
                u, x, dt = _load_scan_row(u_ptr, delta_ptr, bias, row, dim, d, dmask, HAS_BIAS, SOFTPLUS, FAST)
                dy = tl.load(dy_ptr + row * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
                B_row = _load_bc_row(B_ptr + (row * groups + g) * DSTATE, True, DSTATE, PACK)
                C_row = _load_bc_row(C_ptr + (row * groups + g) * DSTATE, True, DSTATE, PACK)
                dtu = dt * u  # [BD]
                h_prev = ()  # N x [BD]: the state before step s
                decay = ()  # N x [BD]: exp(dt A)
                h = ()  # N x [BD]: the state after step s
                y_pre = Dv * u  # [BD] y before the gate
                for i in tl.static_range(DSTATE):
                    hp = tl.load(scratch + ((s - s0) * DSTATE + i) * BLOCK_D + lane)
                    e = _exp2(dt * A2[i], FAST)
                    h_i = e * hp + dtu * _bc_value(B_row, i, ELEM, PACK)
                    y_pre += h_i * _bc_value(C_row, i, ELEM, PACK)
                    h_prev = h_prev + (hp,)
                    decay = decay + (e,)
                    h = h + (h_i,)
                if HAS_Z:
                    zt = tl.load(z_ptr + row * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
                    sig = tl.sigmoid(zt)
                    tl.store(dz_ptr + row * dim + d, dy * y_pre * sig * (1.0 + zt * (1.0 - sig)), mask=dmask)
                    dy = dy * zt * sig  # gradient of y before the gate
                if HAS_D:
                    dD_acc += dy * u
                gB = tl.zeros([BLOCK_D], dtype=tl.float32)  # [BD] sum_n gh B_t
                gA = tl.zeros([BLOCK_D], dtype=tl.float32)  # [BD] sum_n gh h_prev exp(dt A) A log2(e)
                part = ((row * groups + g) * tiles_per_group + tile) * DSTATE
                gh_next = ()
                dA_next = ()
                for i in tl.static_range(DSTATE):
                    gh_i = gh[i] + dy * _bc_value(C_row, i, ELEM, PACK)  # total gradient of h_s
                    if SUMS_PAD > 0:  # summed below, over the tile's channels, from one [2N, BD] tile
                        tl.store(sums_in + i * BLOCK_D + lane, dy * h[i])
                        tl.store(sums_in + (DSTATE + i) * BLOCK_D + lane, gh_i * dtu)
                    else:  # summed over the tile's channels by warp reductions, one per value
                        tl.store(dC_ptr + part + i, tl.sum(dy * h[i], axis=0))
                        tl.store(dB_ptr + part + i, tl.sum(gh_i * dtu, axis=0))
                    gB += gh_i * _bc_value(B_row, i, ELEM, PACK)
                    gdA = gh_i * h_prev[i] * decay[i]
                    gA += gdA * A2[i]
                    dA_next = dA_next + (dA_acc[i] + gdA * dt,)
                    gh_next = gh_next + (gh_i * decay[i],)
                gh = gh_next
                dA_acc = dA_next
                if SUMS_PAD > 0:
                    tl.debug_barrier()  # the [2N, BD] tile is read across threads
                    n2 = tl.arange(0, SUMS_PAD)  # [P] dC values, then dB values
                    tile_in = tl.load(sums_in + n2[:, None] * BLOCK_D + lane[None, :], mask=(n2 < 2 * DSTATE)[:, None],
                                      other=0.0)  # [P, BD]
                    sums = tl.sum(tile_in, axis=1)  # [P]
                    tl.store(dC_ptr + part + n2, sums, mask=n2 < DSTATE)
                    tl.store(dB_ptr + part + n2 - DSTATE, sums, mask=(n2 >= DSTATE) & (n2 < 2 * DSTATE))
                    tl.debug_barrier()  # read before the next step overwrites it
                ddt = gA * _LN2 + gB * u  # [BD]
                if SOFTPLUS:
                    ddt = tl.where(x <= 20.0, ddt * tl.sigmoid(x), ddt)
                dbias_acc += ddt
                tl.store(du_ptr + row * dim + d, dy * Dv + gB * dt, mask=dmask)
                tl.store(ddelta_ptr + row * dim + d, ddt, mask=dmask)
            tl.debug_barrier()
        for i in tl.static_range(DSTATE):
            tl.store(dinit_ptr + (pid_b * dim + d) * DSTATE + i, gh[i], mask=dmask)
            tl.store(dA_ptr + (pid_b * dim + d) * DSTATE + i, dA_acc[i], mask=dmask)
        if HAS_D:
            tl.store(dD_ptr + pid_b * dim + d, dD_acc, mask=dmask)
        if HAS_BIAS:
            tl.store(dbias_ptr + pid_b * dim + d, dbias_acc, mask=dmask)


def _geometry(u: torch.Tensor, A: torch.Tensor, B: torch.Tensor, tile_values: int) -> dict:
    batch, seqlen, dim = u.shape
    groups, dstate = B.shape[2], A.shape[1]
    dim_per_group = dim // groups
    block_d, block_n = _block_sizes(dim_per_group, dstate, tile_values)
    chunk = _chunk_size()
    return dict(batch=batch, seqlen=seqlen, dim=dim, groups=groups, dstate=dstate, dim_per_group=dim_per_group,
                tiles_per_group=triton.cdiv(dim_per_group, block_d), n_chunks=triton.cdiv(seqlen, chunk),
                chunk=chunk, block_d=block_d, block_n=block_n)


_ELEM_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def _bwd_tile_values(dim_per_group: int, dstate: int) -> int:
    """State values per backward program: ``_TILE_VALUES_BWD``, or more (with as many more warps) when
    ``_BWD_MAX_TILES`` caps the tiles per group, which bounds the dB / dC partials at B L G max_tiles N floats each."""
    values = _TILE_VALUES_BWD
    if _BWD_MAX_TILES:
        block_d = triton.next_power_of_2(triton.cdiv(dim_per_group, _BWD_MAX_TILES))
        values = max(values, min(block_d * triton.next_power_of_2(dstate), 128 * triton.next_power_of_2(dstate)))
    return values


def _rows_prefetch(dstate: int) -> int:
    """Steps in flight for the rows forward: the ring costs about 3 + N / 2 registers per step (bf16, packed)."""
    return _ROWS_PREFETCH if dstate <= 16 else 1


def _packable(B: torch.Tensor, C: torch.Tensor, dstate: int) -> bool:
    """Whether B_t / C_t rows can be read as whole 8-byte words: same dtype, rows of a multiple of 8 bytes, aligned."""
    return (_ROWS_PACK and B.dtype == C.dtype and (dstate * B.element_size()) % 8 == 0
            and B.data_ptr() % 8 == 0 and C.data_ptr() % 8 == 0)


def _opt(t: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """Contiguous tensor, or a placeholder pointer for an absent optional input (never read: its flag is off)."""
    return fallback if t is None else t.contiguous()


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus, reverse, lengths):
        u, delta, A, B, C = (t.contiguous() for t in (u, delta, A, B, C))
        geo = _geometry(u, A, B, _TILE_VALUES_FWD)
        batch, seqlen, dim, dstate = geo["batch"], geo["seqlen"], geo["dim"], geo["dstate"]
        alloc = torch.zeros if lengths is not None else torch.empty  # skipped positions must read 0
        y = alloc(batch, seqlen, dim, device=u.device, dtype=u.dtype)  # [B, L, D]
        final = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32)  # [B, D, N]
        ckpt = torch.empty(batch, geo["n_chunks"], dim, dstate, device=u.device, dtype=torch.float32)
        flags = dict(HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
                     SOFTPLUS=delta_softplus, HAS_INIT=initial_state is not None, HAS_LENGTHS=lengths is not None,
                     REVERSE=reverse, CHUNK=geo["chunk"])
        inputs = (u, delta, A, B, C, _opt(D, u), _opt(z, u), _opt(delta_bias, u), _opt(initial_state, u),
                  _opt(lengths, u), y, final, ckpt)
        if _FWD_KIND == "rows" and dstate <= _ROWS_MAX_DSTATE:
            block_d = min(32 * _ROWS_NUM_WARPS, triton.next_power_of_2(geo["dim_per_group"]))
            lanes = _ROWS_LANES if dstate % _ROWS_LANES == 0 else 1
            block_d = block_d // lanes if block_d >= 32 else block_d  # 32 * warps threads per program
            tiles = triton.cdiv(geo["dim_per_group"], block_d)
            _fwd_rows_kernel[(batch, geo["groups"] * tiles)](
                *inputs, seqlen, dim, geo["groups"], geo["dim_per_group"], tiles, geo["n_chunks"], **flags,
                BLOCK_D=block_d, DSTATE=dstate, LANES=lanes,
                PREFETCH=_rows_prefetch(dstate // lanes), PACK=_packable(B, C, dstate // lanes),
                ELEM=_ELEM_CODE[B.dtype], FAST=not triton_interpret(), num_warps=max(1, block_d * lanes // 32),
            )
        else:
            _fwd_kernel[(batch, geo["groups"] * geo["tiles_per_group"])](
                *inputs, seqlen, dim, geo["groups"], geo["dim_per_group"], geo["tiles_per_group"], dstate,
                geo["n_chunks"], **flags, BLOCK_D=geo["block_d"], BLOCK_N=geo["block_n"], UNROLL=_UNROLL_FWD,
                num_warps=_NUM_WARPS_FWD, num_stages=_NUM_STAGES_FWD,
            )
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, initial_state, lengths, ckpt)
        ctx.flags = (delta_softplus, reverse)
        return y, final

    @staticmethod
    def backward(ctx, dy, dfinal):
        u, delta, A, B, C, D, z, delta_bias, initial_state, lengths, ckpt = ctx.saved_tensors
        delta_softplus, reverse = ctx.flags
        if _BWD_KIND == "rows" and A.shape[1] <= _ROWS_MAX_DSTATE:
            return _backward_rows(ctx, dy, dfinal)
        tile_values = _bwd_tile_values(u.shape[2] // B.shape[2], A.shape[1])
        geo = _geometry(u, A, B, tile_values)
        batch, groups, tiles = geo["batch"], geo["groups"], geo["tiles_per_group"]
        buf = _grad_buffers(ctx.saved_tensors, dy, groups, tiles)
        scratch = torch.empty(batch * groups * tiles * geo["chunk"] * geo["block_d"] * geo["block_n"],
                              device=u.device, dtype=torch.float32)
        _bwd_kernel[(batch, groups * tiles)](
            *_bwd_pointers(ctx.saved_tensors, buf, dfinal, scratch),
            geo["seqlen"], geo["dim"], groups, geo["dim_per_group"], tiles, geo["dstate"], geo["n_chunks"],
            HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            HAS_DFINAL=dfinal is not None, HAS_LENGTHS=lengths is not None, REVERSE=reverse,
            CHUNK=geo["chunk"], BLOCK_D=geo["block_d"], BLOCK_N=geo["block_n"], UNROLL=_UNROLL_BWD,
            num_warps=_NUM_WARPS_BWD * tile_values // _TILE_VALUES_BWD, num_stages=_NUM_STAGES_BWD,
        )
        return _reduce_grads(ctx.saved_tensors, buf)


def _grad_buffers(saved: tuple, dy: torch.Tensor | None, groups: int, tiles: int) -> dict:
    """The backward kernels' outputs: du, ddelta, dz [B, L, D] (zero-filled with lengths: skipped positions get 0),
    per-tile dB / dC partials [B, L, G, T, N], per-row dA [B, D, N] / dD / dbias [B, D] partials, dinit [B, D, N];
    and dy [B, L, D] made contiguous (zeros when only the final state has a gradient)."""
    u, delta, A, B, C, D, z, delta_bias, initial_state, lengths, ckpt = saved
    (batch, seqlen, dim), dstate = u.shape, A.shape[1]
    dev, f32 = u.device, torch.float32
    alloc = torch.zeros if lengths is not None else torch.empty
    return dict(
        dy=torch.zeros_like(u) if dy is None else dy.contiguous(),
        du=alloc(batch, seqlen, dim, device=dev, dtype=u.dtype),
        ddelta=alloc(batch, seqlen, dim, device=dev, dtype=delta.dtype),
        dz=alloc(batch, seqlen, dim, device=dev, dtype=z.dtype) if z is not None else None,
        dB_part=alloc(batch, seqlen, groups, tiles, dstate, device=dev, dtype=f32),
        dC_part=alloc(batch, seqlen, groups, tiles, dstate, device=dev, dtype=f32),
        dA_part=torch.empty(batch, dim, dstate, device=dev, dtype=f32),
        dD_part=torch.empty(batch, dim, device=dev, dtype=f32) if D is not None else None,
        dbias_part=torch.empty(batch, dim, device=dev, dtype=f32) if delta_bias is not None else None,
        dinit=torch.empty(batch, dim, dstate, device=dev, dtype=f32),
    )


def _bwd_pointers(saved: tuple, buf: dict, dfinal: torch.Tensor | None, scratch: torch.Tensor) -> tuple:
    """The pointer arguments shared by ``_bwd_kernel`` and ``_bwd_rows_kernel``, in their order."""
    u, delta, A, B, C, D, z, delta_bias, initial_state, lengths, ckpt = saved
    return (u, delta, A, B, C, _opt(D, u), _opt(z, u), _opt(delta_bias, u), _opt(lengths, u), ckpt, buf["dy"],
            _opt(dfinal, u), scratch, buf["du"], buf["ddelta"], _opt(buf["dz"], buf["du"]), buf["dB_part"],
            buf["dC_part"], buf["dA_part"], _opt(buf["dD_part"], buf["dA_part"]),
            _opt(buf["dbias_part"], buf["dA_part"]), buf["dinit"])


def _reduce_grads(saved: tuple, buf: dict) -> tuple:
    """Sum the partials (deterministic, no atomics) and return ``_SelectiveScanFn.backward``'s gradients."""
    u, delta, A, B, C, D, z, delta_bias, initial_state, lengths, ckpt = saved
    dB = buf["dB_part"].sum(3).to(B.dtype)  # [B, L, G, N]
    dC = buf["dC_part"].sum(3).to(C.dtype)  # [B, L, G, N]
    dA = buf["dA_part"].sum(0).to(A.dtype)  # [D, N]
    dD = buf["dD_part"].sum(0).to(D.dtype) if D is not None else None  # [D]
    dbias = buf["dbias_part"].sum(0).to(delta_bias.dtype) if delta_bias is not None else None  # [D]
    dinit = buf["dinit"].to(initial_state.dtype) if initial_state is not None else None  # [B, D, N]
    return buf["du"], buf["ddelta"], dA, dB, dC, dD, buf["dz"], dbias, dinit, None, None, None


def _backward_rows(ctx, dy: torch.Tensor | None, dfinal: torch.Tensor | None) -> tuple:
    """``_SelectiveScanFn.backward`` with the rows kernel: one channel per thread, a persistent grid."""
    u, delta, A, B, C, D, z, delta_bias, initial_state, lengths, ckpt = ctx.saved_tensors
    delta_softplus, reverse = ctx.flags
    geo = _geometry(u, A, B, _TILE_VALUES_BWD)
    batch, dstate, groups = geo["batch"], geo["dstate"], geo["groups"]
    block_d = min(_BWD_ROWS_BLOCK_D, triton.next_power_of_2(geo["dim_per_group"]))
    tiles = triton.cdiv(geo["dim_per_group"], block_d)
    n_work = batch * groups * tiles
    n_programs = n_work
    if u.is_cuda and not triton_interpret():
        sms = torch.cuda.get_device_properties(u.device).multi_processor_count
        n_programs = min(n_work, sms * _BWD_ROWS_PER_SM)
    if _BWD_ROWS_MAX_PROGRAMS > 0:
        n_programs = min(n_programs, _BWD_ROWS_MAX_PROGRAMS)
    buf = _grad_buffers(ctx.saved_tensors, dy, groups, tiles)
    scratch = torch.empty(n_programs * (geo["chunk"] + 2) * dstate * block_d, device=u.device, dtype=torch.float32)
    _bwd_rows_kernel[(n_programs,)](
        *_bwd_pointers(ctx.saved_tensors, buf, dfinal, scratch),
        batch, geo["seqlen"], geo["dim"], groups, geo["dim_per_group"], tiles, geo["n_chunks"], n_programs,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        HAS_DFINAL=dfinal is not None, HAS_LENGTHS=lengths is not None, REVERSE=reverse,
        CHUNK=geo["chunk"], BLOCK_D=block_d, DSTATE=dstate, PACK=_packable(B, C, dstate), ELEM=_ELEM_CODE[B.dtype],
        FAST=not triton_interpret(), SUMS_PAD=triton.next_power_of_2(2 * dstate) if _BWD_ROWS_TILE_SUMS else 0,
        num_warps=_BWD_ROWS_NUM_WARPS,
    )
    return _reduce_grads(ctx.saved_tensors, buf)


def _check_dtypes(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.dtype not in _SUPPORTED:
            raise TypeError(f"selective_scan: backend 'triton' needs {name} in float32/bfloat16/float16, found "
                            f"{t.dtype}; use backend='torch' for float64")


@torch.compiler.disable
def selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse, lengths):
    """Triton selective scan on validated inputs.

    Args:
        u, delta, z: [B, L, D] (z may be None).   A: [D, N].   B, C: [B, L, G, N].
        D, delta_bias: [D] or None.   initial_state: [B, D, N] or None.   lengths: int64 [B] in [1, L] or None.
        delta_softplus, reverse: flags, as in naive.py.

    Returns:
        y [B, L, D] in u.dtype and the final state [B, D, N] in float32; differentiable in every float input.
    """
    _check_dtypes(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    return _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, initial_state, bool(delta_softplus),
                                  bool(reverse), lengths)
