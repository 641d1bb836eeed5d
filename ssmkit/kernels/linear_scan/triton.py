"""Linear scan ``h_t = a_t * h_{t-1} + b_t``, Triton backend: fused forward and backward kernels.

Design (layout [B, L, D]; see naive.py for the glossary):

* Grid ``(batch, ceil(D / BLOCK_D))``. A program owns ``BLOCK_D`` channels of one batch row and walks its valid
  steps in tiles of ``BLOCK_T`` steps. Each tile is ONE coalesced 2-D load ``[BLOCK_T, BLOCK_D]`` of a and of b
  (rows of the [B, L, D] layout are contiguous over D), so every program keeps ``2 * BLOCK_T * BLOCK_D`` elements in
  flight instead of one row per step; inside the tile the recurrence is a ``tl.associative_scan`` over the time axis
  with the operator ``(a1, b1) o (a2, b2) = (a1 a2, a2 b1 + b2)``, and the float32 carry ``h`` (``[BLOCK_D]``) links
  the tiles. ``reverse`` and ``lengths`` are index arithmetic: step ``s`` reads time ``t = s`` or
  ``t = len - 1 - s``; steps ``>= len`` are masked to the identity ``(1, 0)`` and not stored. Nothing is flipped.
* Forward writes h (a.dtype), the final state and the float32 carry at the start of every tile,
  ``ckpt [B, ceil(L / BLOCK_T), D]`` (``4 / BLOCK_T`` bytes per element).
* Backward walks the tiles in reverse. Per tile it recomputes the previous states ``h_{s-1}`` from the tile's
  checkpoint (a scan of a, b loaded one step earlier) and solves the adjoint recurrence
  ``g_s = dh_s + a_{s+1} g_{s+1}`` (``g_{len-1}`` also receives the final-state gradient) with a reverse
  associative scan; then ``da_s = g_s h_{s-1}``, ``db_s = g_s`` and ``d initial_state = a_first g_first``.
  Everything is written directly: no atomics, no partial sums, deterministic.
* Math is float32 whatever the I/O dtype.

Bytes moved per element (s = element size): forward ``3 s`` (read a, b; write h) + ``4 / BLOCK_T``; backward
``5 s`` (read a, b, dh; write da, db) + ``4 / BLOCK_T``: the shifted re-reads of a and b (one step earlier / later)
hit the tile just loaded, i.e. L1/L2. This is the copy-bandwidth floor of the op (reference/kernels.md section 4c,
with recomputation instead of a saved h). Parallelism is ``B * D / BLOCK_D`` programs; BLOCK_D shrinks to 16 when
that count is small (under ~2 waves of an H100's 132 SMs), and a time-split (chunk-parallel) pass is not
implemented, so very small ``B * D`` with very long L remains latency-bound.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["linear_scan"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
_BLOCK_T = 64
_BLOCK_D_MAX = 32
_NUM_WARPS = 4
_NUM_STAGES = 3


def _block_d(batch: int, dim: int) -> int:
    """Channels per program: 32 (128-byte fp32 rows), 16 when fewer than ~264 programs would run."""
    block = min(_BLOCK_D_MAX, triton.next_power_of_2(dim))
    if batch * triton.cdiv(dim, block) < 264:
        block = min(block, 16)
    return block


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _fwd_kernel(
    a_ptr, b_ptr, init_ptr, len_ptr, h_ptr, final_ptr, ckpt_ptr, seqlen, dim, n_tiles,
    HAS_INIT: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    dmask = d < dim
    rows = tl.arange(0, BLOCK_T)  # [BT]
    if HAS_LENGTHS:
        length = tl.load(len_ptr + pid_b)
    else:
        length = seqlen
    if HAS_INIT:
        carry = tl.load(init_ptr + pid_b * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    else:
        carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    for k in range(0, tl.cdiv(length, BLOCK_T)):
        tl.store(ckpt_ptr + (pid_b * n_tiles + k) * dim + d, carry, mask=dmask)
        s = k * BLOCK_T + rows  # [BT] steps
        if REVERSE:
            t = length - 1 - s
        else:
            t = s
        m = (s < length)[:, None] & dmask[None, :]  # [BT, BD]
        off = (pid_b * seqlen + t)[:, None] * dim + d[None, :]  # [BT, BD]
        a = tl.load(a_ptr + off, mask=m, other=1.0).to(tl.float32)  # [BT, BD]
        b = tl.load(b_ptr + off, mask=m, other=0.0).to(tl.float32)  # [BT, BD]
        a_cum, b_cum = tl.associative_scan((a, b), axis=0, combine_fn=_combine)  # [BT, BD] each
        h = a_cum * carry[None, :] + b_cum  # [BT, BD]
        tl.store(h_ptr + off, h, mask=m)
        carry = tl.sum(tl.where((rows == BLOCK_T - 1)[:, None], h, 0.0), axis=0)  # [BD] last row (masked = identity)
    tl.store(final_ptr + pid_b * dim + d, carry, mask=dmask)


@triton.jit
def _bwd_kernel(
    a_ptr, b_ptr, dh_ptr, dfinal_ptr, ckpt_ptr, len_ptr, da_ptr, db_ptr, dinit_ptr, seqlen, dim, n_tiles,
    HAS_DFINAL: tl.constexpr, HAS_LENGTHS: tl.constexpr, REVERSE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    dmask = d < dim
    rows = tl.arange(0, BLOCK_T)  # [BT]
    if HAS_LENGTHS:
        length = tl.load(len_ptr + pid_b)
    else:
        length = seqlen
    if HAS_DFINAL:
        g_carry = tl.load(dfinal_ptr + pid_b * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    else:
        g_carry = tl.zeros([BLOCK_D], dtype=tl.float32)
    base = pid_b * seqlen
    n_valid = tl.cdiv(length, BLOCK_T)
    for kk in range(0, n_valid):
        k = n_valid - 1 - kk
        s = k * BLOCK_T + rows  # [BT] steps of this tile
        if REVERSE:
            t, t_prev, t_next = length - 1 - s, length - s, length - 2 - s
        else:
            t, t_prev, t_next = s, s - 1, s + 1
        valid = s < length
        # previous states h_{s-1}: scan of (a, b) one step earlier, seeded by the tile's checkpoint
        m_prev = ((rows >= 1) & valid)[:, None] & dmask[None, :]  # [BT, BD]
        off_prev = (base + t_prev)[:, None] * dim + d[None, :]
        a_prev = tl.load(a_ptr + off_prev, mask=m_prev, other=1.0).to(tl.float32)  # [BT, BD]
        b_prev = tl.load(b_ptr + off_prev, mask=m_prev, other=0.0).to(tl.float32)  # [BT, BD]
        pa, pb = tl.associative_scan((a_prev, b_prev), axis=0, combine_fn=_combine)
        h_carry = tl.load(ckpt_ptr + (pid_b * n_tiles + k) * dim + d, mask=dmask, other=0.0)  # [BD]
        h_prev = pa * h_carry[None, :] + pb  # [BT, BD]
        # adjoint g_s = dh_s + a_{s+1} g_{s+1}, seeded by the next tile's g (or the final-state gradient)
        m = valid[:, None] & dmask[None, :]
        off = (base + t)[:, None] * dim + d[None, :]
        m_next = (s + 1 < length)[:, None] & dmask[None, :]
        a_next = tl.load(a_ptr + (base + t_next)[:, None] * dim + d[None, :], mask=m_next, other=1.0).to(tl.float32)
        dh = tl.load(dh_ptr + off, mask=m, other=0.0).to(tl.float32)  # [BT, BD]
        qa, qb = tl.associative_scan((a_next, dh), axis=0, combine_fn=_combine, reverse=True)
        g = qa * g_carry[None, :] + qb  # [BT, BD]
        tl.store(da_ptr + off, g * h_prev, mask=m)
        tl.store(db_ptr + off, g, mask=m)
        g_carry = tl.sum(tl.where((rows == 0)[:, None], g, 0.0), axis=0)  # [BD] g at the tile's first step
    if REVERSE:
        t_first = length - 1
    else:
        t_first = 0
    a_first = tl.load(a_ptr + (base + t_first) * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    tl.store(dinit_ptr + pid_b * dim + d, a_first * g_carry, mask=dmask)


def _opt(t: torch.Tensor | None, fallback: torch.Tensor) -> torch.Tensor:
    """Contiguous tensor, or a placeholder pointer for an absent optional input (never read: its flag is off)."""
    return fallback if t is None else t.contiguous()


class _LinearScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, initial_state, reverse, lengths):
        a, b = a.contiguous(), b.contiguous()
        batch, seqlen, dim = a.shape
        block_d, n_tiles = _block_d(batch, dim), triton.cdiv(seqlen, _BLOCK_T)
        alloc = torch.zeros if lengths is not None else torch.empty  # skipped positions must read 0
        h = alloc(batch, seqlen, dim, device=a.device, dtype=a.dtype)  # [B, L, D]
        final = torch.empty(batch, dim, device=a.device, dtype=torch.float32)  # [B, D]
        ckpt = torch.empty(batch, n_tiles, dim, device=a.device, dtype=torch.float32)  # [B, L / BLOCK_T, D]
        _fwd_kernel[(batch, triton.cdiv(dim, block_d))](
            a, b, _opt(initial_state, a), _opt(lengths, a), h, final, ckpt, seqlen, dim, n_tiles,
            HAS_INIT=initial_state is not None, HAS_LENGTHS=lengths is not None, REVERSE=reverse,
            BLOCK_T=_BLOCK_T, BLOCK_D=block_d, num_warps=_NUM_WARPS, num_stages=_NUM_STAGES,
        )
        ctx.save_for_backward(a, b, initial_state, lengths, ckpt)
        ctx.reverse = reverse
        return h, final

    @staticmethod
    def backward(ctx, dh, dfinal):
        a, b, initial_state, lengths, ckpt = ctx.saved_tensors
        batch, seqlen, dim = a.shape
        block_d, n_tiles = _block_d(batch, dim), ckpt.shape[1]
        dh = torch.zeros_like(a) if dh is None else dh.contiguous()  # [B, L, D]
        alloc = torch.zeros if lengths is not None else torch.empty  # skipped positions get 0 gradient
        da = alloc(batch, seqlen, dim, device=a.device, dtype=a.dtype)  # [B, L, D]
        db = alloc(batch, seqlen, dim, device=a.device, dtype=b.dtype)  # [B, L, D]
        dinit = torch.empty(batch, dim, device=a.device, dtype=torch.float32)  # [B, D]
        _bwd_kernel[(batch, triton.cdiv(dim, block_d))](
            a, b, dh, _opt(dfinal, a), ckpt, _opt(lengths, a), da, db, dinit, seqlen, dim, n_tiles,
            HAS_DFINAL=dfinal is not None, HAS_LENGTHS=lengths is not None, REVERSE=ctx.reverse,
            BLOCK_T=_BLOCK_T, BLOCK_D=block_d, num_warps=_NUM_WARPS, num_stages=_NUM_STAGES,
        )
        dinit = dinit.to(initial_state.dtype) if initial_state is not None else None  # [B, D]
        return da, db, dinit, None, None


@torch.compiler.disable
def linear_scan(a, b, initial_state, reverse, lengths):
    """Triton linear scan on validated inputs.

    Args:
        a, b: [B, L, D].   initial_state: [B, D] or None.   reverse: scan direction.
        lengths: int64 [B] in [1, L] or None.

    Returns:
        h [B, L, D] in a.dtype and the final state [B, D] in float32; differentiable in a, b and initial_state.
    """
    for name, t in (("a", a), ("b", b), ("initial_state", initial_state)):
        if t is not None and t.dtype not in _SUPPORTED:
            raise TypeError(f"linear_scan: backend 'triton' needs {name} in float32/bfloat16/float16, found "
                            f"{t.dtype}; use backend='torch' for float64")
    return _LinearScanFn.apply(a, b, initial_state, bool(reverse), lengths)
