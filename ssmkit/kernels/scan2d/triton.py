"""2-D scan, Triton backend: fused forward and backward, one program per (batch row, channel block).

Design (layout [B, T, V, D] contiguous; glossary and recurrence in naive.py):

* Grid ``(B, ceil(D / BLOCK_D))``. A program walks the V variates in scan order; per variate ("column") it makes two
  passes over time in tiles of ``BLOCK_T`` steps, each tile a coalesced 2-D load ``[BLOCK_T, BLOCK_D]``:
  pass A writes the variate state ``h2[:, v] = a3 h1[:, v-1] + a4 h2[:, v-1] + u2`` (reading the previous column
  back from the outputs); pass B solves the temporal state ``h1[t] = a1[t] h1[t-1] + (a2[t] h2[t-1] + u1[t])`` with a
  ``tl.associative_scan`` per tile and a float32 carry between tiles (``h2[t-1]`` is re-read one row earlier).
  A ``tl.debug_barrier`` separates the passes because the program re-reads what its own threads just stored.
  ``reverse`` is index arithmetic on the variate (nothing is flipped).
* Backward (adjoints ``l1 = dL/dh1``, ``l2 = dL/dh2``, incoming output gradients ``g1``, ``g2``), columns in the
  reverse of the scan order (``v + 1`` below is the next variate in scan order)::

      l1[t, v] = g1[t, v] + a1[t+1, v] l1[t+1, v] + a3[t, v+1] l2[t, v+1]      (reverse scan along time)
      l2[t, v] = g2[t, v] + a2[t+1, v] l1[t+1, v] + a4[t, v+1] l2[t, v+1]      (elementwise, after l1)
      du1 = l1, du2 = l2, da1 = l1 h1[t-1, v], da2 = l1 h2[t-1, v], da3 = l2 h1[t, v-1], da4 = l2 h2[t, v-1]
      d initial_state[:, 0, v] = a1[0, v] l1[0, v],   d initial_state[:, 1, v] = a2[0, v] l1[0, v]

  pass A' runs the reverse associative scan for l1 (stored in du1), pass B' computes l2 and the four decay
  gradients. The forward outputs h1, h2 are saved (they are outputs anyway), so nothing is recomputed; every
  gradient is written once, with no atomics (deterministic). Math is float32 whatever the I/O dtype; h1, h2 are
  stored in the I/O dtype and re-read from it.

Parallelism is ``B * D / BLOCK_D`` programs, each sequential over V and over the T / BLOCK_T tiles: suited to the
few-variate, many-channel grids of Chimera (V = 7, D = channels x states).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["scan2d"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)
_BLOCK_T = 32


def _block_d(dim: int) -> int:
    return min(32, triton.next_power_of_2(dim))


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _fwd_kernel(
    a1_ptr, a2_ptr, a3_ptr, a4_ptr, u1_ptr, u2_ptr, init_ptr, h1_ptr, h2_ptr, seqlen, nvars, dim,
    HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    dmask = d < dim
    rows = tl.arange(0, BLOCK_T)  # [BT]
    n_tiles = tl.cdiv(seqlen, BLOCK_T)
    for s in range(0, nvars):
        if REVERSE:
            v = nvars - 1 - s
            vp = v + 1
        else:
            v = s
            vp = v - 1
        has_prev = s > 0
        # pass A: variate state of this column from the previous column
        for k in range(0, n_tiles):
            t = k * BLOCK_T + rows  # [BT]
            m = (t < seqlen)[:, None] & dmask[None, :]  # [BT, BD]
            off = ((pid_b * seqlen + t) * nvars + v)[:, None] * dim + d[None, :]  # [BT, BD]
            off_p = ((pid_b * seqlen + t) * nvars + vp)[:, None] * dim + d[None, :]
            m_p = m & has_prev
            h1p = tl.load(h1_ptr + off_p, mask=m_p, other=0.0).to(tl.float32)  # [BT, BD] h1[t, v-1]
            h2p = tl.load(h2_ptr + off_p, mask=m_p, other=0.0).to(tl.float32)  # [BT, BD] h2[t, v-1]
            a3 = tl.load(a3_ptr + off, mask=m, other=0.0).to(tl.float32)
            a4 = tl.load(a4_ptr + off, mask=m, other=0.0).to(tl.float32)
            u2 = tl.load(u2_ptr + off, mask=m, other=0.0).to(tl.float32)
            tl.store(h2_ptr + off, a3 * h1p + a4 * h2p + u2, mask=m)
        tl.debug_barrier()
        # pass B: temporal state, a first-order scan along time
        init_off = (pid_b * 2 * nvars + v) * dim + d  # [BD] initial_state[b, 0, v]
        if HAS_INIT:
            carry = tl.load(init_ptr + init_off, mask=dmask, other=0.0).to(tl.float32)  # [BD]
            h2_first = tl.load(init_ptr + init_off + nvars * dim, mask=dmask, other=0.0).to(tl.float32)  # [BD]
        else:
            carry = tl.zeros([BLOCK_D], dtype=tl.float32)
            h2_first = tl.zeros([BLOCK_D], dtype=tl.float32)
        for k in range(0, n_tiles):
            t = k * BLOCK_T + rows  # [BT]
            m = (t < seqlen)[:, None] & dmask[None, :]
            off = ((pid_b * seqlen + t) * nvars + v)[:, None] * dim + d[None, :]
            m_up = ((t >= 1) & (t < seqlen))[:, None] & dmask[None, :]
            h2_up = tl.load(h2_ptr + off - nvars * dim, mask=m_up, other=0.0).to(tl.float32)  # [BT, BD] h2[t-1, v]
            h2_up += tl.where((t == 0)[:, None], h2_first[None, :], 0.0)
            a1 = tl.load(a1_ptr + off, mask=m, other=1.0).to(tl.float32)
            a2 = tl.load(a2_ptr + off, mask=m, other=0.0).to(tl.float32)
            u1 = tl.load(u1_ptr + off, mask=m, other=0.0).to(tl.float32)
            a_cum, b_cum = tl.associative_scan((a1, a2 * h2_up + u1), axis=0, combine_fn=_combine)
            h1 = a_cum * carry[None, :] + b_cum  # [BT, BD]
            tl.store(h1_ptr + off, h1, mask=m)
            carry = tl.sum(tl.where((rows == BLOCK_T - 1)[:, None], h1, 0.0), axis=0)  # [BD] (masked rows: identity)
        tl.debug_barrier()


@triton.jit
def _bwd_kernel(
    a1_ptr, a2_ptr, a3_ptr, a4_ptr, init_ptr, h1_ptr, h2_ptr, g1_ptr, g2_ptr,
    da1_ptr, da2_ptr, da3_ptr, da4_ptr, du1_ptr, du2_ptr, dinit_ptr, seqlen, nvars, dim,
    HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    dmask = d < dim
    rows = tl.arange(0, BLOCK_T)  # [BT]
    n_tiles = tl.cdiv(seqlen, BLOCK_T)
    row = nvars * dim  # elements between t and t + 1
    for s in range(0, nvars):
        # columns in the reverse of the scan order; vn: next variate in scan order, vp: previous one
        if REVERSE:
            v = s
            vn = v - 1
            vp = v + 1
        else:
            v = nvars - 1 - s
            vn = v + 1
            vp = v - 1
        has_next = s > 0
        has_prev = s < nvars - 1
        init_off = (pid_b * 2 * nvars + v) * dim + d  # [BD]
        # pass A': l1 by a reverse scan along time, stored in du1
        g_carry = tl.zeros([BLOCK_D], dtype=tl.float32)
        for kk in range(0, n_tiles):
            t = (n_tiles - 1 - kk) * BLOCK_T + rows  # [BT]
            m = (t < seqlen)[:, None] & dmask[None, :]
            off = ((pid_b * seqlen + t) * nvars + v)[:, None] * dim + d[None, :]
            off_n = off + (vn - v) * dim
            m_n = m & has_next
            l2n = tl.load(du2_ptr + off_n, mask=m_n, other=0.0).to(tl.float32)  # [BT, BD] l2[t, v+1]
            a3n = tl.load(a3_ptr + off_n, mask=m_n, other=0.0).to(tl.float32)
            g1 = tl.load(g1_ptr + off, mask=m, other=0.0).to(tl.float32)
            m_next = ((t + 1) < seqlen)[:, None] & dmask[None, :]
            a1_next = tl.load(a1_ptr + off + row, mask=m_next, other=1.0).to(tl.float32)  # [BT, BD] a1[t+1, v]
            qa, qb = tl.associative_scan((a1_next, g1 + a3n * l2n), axis=0, combine_fn=_combine, reverse=True)
            l1 = qa * g_carry[None, :] + qb  # [BT, BD]
            tl.store(du1_ptr + off, l1, mask=m)
            g_carry = tl.sum(tl.where((rows == 0)[:, None], l1, 0.0), axis=0)  # [BD] l1 at the tile's first step
        tl.debug_barrier()
        # pass B': l2 and the decay gradients
        if HAS_INIT:
            h1_first = tl.load(init_ptr + init_off, mask=dmask, other=0.0).to(tl.float32)  # [BD]
            h2_first = tl.load(init_ptr + init_off + nvars * dim, mask=dmask, other=0.0).to(tl.float32)
        else:
            h1_first = tl.zeros([BLOCK_D], dtype=tl.float32)
            h2_first = tl.zeros([BLOCK_D], dtype=tl.float32)
        for k in range(0, n_tiles):
            t = k * BLOCK_T + rows  # [BT]
            m = (t < seqlen)[:, None] & dmask[None, :]
            off = ((pid_b * seqlen + t) * nvars + v)[:, None] * dim + d[None, :]
            off_n = off + (vn - v) * dim
            off_p = off + (vp - v) * dim
            m_n = m & has_next
            m_p = m & has_prev
            m_next = ((t + 1) < seqlen)[:, None] & dmask[None, :]
            m_up = ((t >= 1) & (t < seqlen))[:, None] & dmask[None, :]
            l1 = tl.load(du1_ptr + off, mask=m, other=0.0).to(tl.float32)  # [BT, BD]
            l1_next = tl.load(du1_ptr + off + row, mask=m_next, other=0.0).to(tl.float32)  # l1[t+1, v]
            a2_next = tl.load(a2_ptr + off + row, mask=m_next, other=0.0).to(tl.float32)  # a2[t+1, v]
            l2n = tl.load(du2_ptr + off_n, mask=m_n, other=0.0).to(tl.float32)  # l2[t, v+1]
            a4n = tl.load(a4_ptr + off_n, mask=m_n, other=0.0).to(tl.float32)  # a4[t, v+1]
            g2 = tl.load(g2_ptr + off, mask=m, other=0.0).to(tl.float32)
            l2 = g2 + a2_next * l1_next + a4n * l2n  # [BT, BD]
            tl.store(du2_ptr + off, l2, mask=m)
            is_first = (t == 0)[:, None]
            h1_up = tl.load(h1_ptr + off - row, mask=m_up, other=0.0).to(tl.float32)  # h1[t-1, v]
            h2_up = tl.load(h2_ptr + off - row, mask=m_up, other=0.0).to(tl.float32)  # h2[t-1, v]
            h1_up += tl.where(is_first, h1_first[None, :], 0.0)
            h2_up += tl.where(is_first, h2_first[None, :], 0.0)
            h1p = tl.load(h1_ptr + off_p, mask=m_p, other=0.0).to(tl.float32)  # h1[t, v-1]
            h2p = tl.load(h2_ptr + off_p, mask=m_p, other=0.0).to(tl.float32)  # h2[t, v-1]
            tl.store(da1_ptr + off, l1 * h1_up, mask=m)
            tl.store(da2_ptr + off, l1 * h2_up, mask=m)
            tl.store(da3_ptr + off, l2 * h1p, mask=m)
            tl.store(da4_ptr + off, l2 * h2p, mask=m)
        tl.debug_barrier()
        # initial states enter h1[0, v] through a1[0, v] and a2[0, v]
        off0 = (pid_b * seqlen * nvars + v) * dim + d  # [BD] (t = 0)
        l1_0 = tl.load(du1_ptr + off0, mask=dmask, other=0.0).to(tl.float32)
        a1_0 = tl.load(a1_ptr + off0, mask=dmask, other=0.0).to(tl.float32)
        a2_0 = tl.load(a2_ptr + off0, mask=dmask, other=0.0).to(tl.float32)
        tl.store(dinit_ptr + init_off, a1_0 * l1_0, mask=dmask)
        tl.store(dinit_ptr + init_off + nvars * dim, a2_0 * l1_0, mask=dmask)


class _Scan2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a1, a2, a3, a4, u1, u2, initial_state, reverse):
        a1, a2, a3, a4, u1, u2 = (x.contiguous() for x in (a1, a2, a3, a4, u1, u2))
        init = None if initial_state is None else initial_state.contiguous()
        batch, seqlen, nvars, dim = a1.shape
        block_d = _block_d(dim)
        h1 = torch.empty_like(a1)  # [B, T, V, D]
        h2 = torch.empty_like(a1)  # [B, T, V, D]
        _fwd_kernel[(batch, triton.cdiv(dim, block_d))](
            a1, a2, a3, a4, u1, u2, a1 if init is None else init, h1, h2, seqlen, nvars, dim,
            HAS_INIT=init is not None, REVERSE=reverse, BLOCK_T=_BLOCK_T, BLOCK_D=block_d, num_warps=4,
        )
        ctx.save_for_backward(a1, a2, a3, a4, init, h1, h2)
        ctx.reverse = reverse
        return h1, h2

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g1, g2):
        a1, a2, a3, a4, init, h1, h2 = ctx.saved_tensors
        batch, seqlen, nvars, dim = a1.shape
        block_d = _block_d(dim)
        g1 = torch.zeros_like(h1) if g1 is None else g1.contiguous()  # [B, T, V, D]
        g2 = torch.zeros_like(h2) if g2 is None else g2.contiguous()  # [B, T, V, D]
        grads = [torch.empty_like(a1) for _ in range(4)]  # da1..da4 [B, T, V, D]
        du1 = torch.empty(a1.shape, device=a1.device, dtype=torch.float32)  # l1, re-read by the kernel
        du2 = torch.empty(a1.shape, device=a1.device, dtype=torch.float32)  # l2, re-read by the kernel
        dinit = torch.empty(batch, 2, nvars, dim, device=a1.device, dtype=torch.float32)  # [B, 2, V, D]
        _bwd_kernel[(batch, triton.cdiv(dim, block_d))](
            a1, a2, a3, a4, a1 if init is None else init, h1, h2, g1, g2, *grads, du1, du2, dinit,
            seqlen, nvars, dim, HAS_INIT=init is not None, REVERSE=ctx.reverse, BLOCK_T=_BLOCK_T, BLOCK_D=block_d,
            num_warps=4,
        )
        dinit = None if init is None else dinit.to(init.dtype)
        return (*grads, du1.to(a1.dtype), du2.to(a1.dtype), dinit, None)


@torch.compiler.disable
def scan2d(a1, a2, a3, a4, u1, u2, initial_state, reverse):
    """Triton 2-D scan on validated inputs.

    Returns:
        h1, h2 [B, T, V, D] in a1.dtype; differentiable in every input and in initial_state.
    """
    for name, t in (("a1", a1), ("initial_state", initial_state)):
        if t is not None and t.dtype not in _SUPPORTED:
            raise TypeError(f"scan2d: backend 'triton' needs {name} in float32/bfloat16/float16, found {t.dtype}; "
                            "use backend='torch' for float64")
    return _Scan2dFn.apply(a1, a2, a3, a4, u1, u2, initial_state, bool(reverse))
