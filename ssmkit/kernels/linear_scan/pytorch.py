"""Linear scan, the ``torch`` backend: pure PyTorch, vectorized, with a hand-written backward.

Glossary (layout [B, L, D]):
    a, b   decay and input [B, L, D]        h   state: h_t = a_t * h_{t-1} + b_t
    T      block length of the two-level scan (``block``)      K   number of blocks, ceil(L / T)

Algorithm (``scan_time_major``, time on dim 0, any trailing shape): the sequence is cut into K blocks of T steps.
Pass 1 runs all K blocks at once from a zero state (T small ops on [K, ...] tensors) and takes the product of the
decays of each block; pass 2 chains the K block carries (K ops on [...] tensors); pass 3 reruns all blocks at once
from their true carries and writes the outputs; the last L mod T steps run as a plain loop from the carry (no padded
copies). About 2T + K ops instead of L, with no logarithm or division, so any sign of ``a`` (including 0) is exact.
Strided views are scanned in place, so the [B, L, D] tensors are never transposed or flipped.

The backward is the same scan run the other way on the output gradient (adjoint ``g_t = a_{t+1} g_{t+1} + dh_t``,
the final-state gradient entering at the last processed step), then ``da_t = g_t h_{t-1}``, ``db_t = g_t``.

``lengths`` is handled by masking: past a row's length the step is the identity (a = 1, b = 0) and the output is 0,
so a reverse scan starts at length - 1. Inputs are computed in float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import math

import torch


def _default_block(seqlen: int) -> int:
    """Block length minimising the op count 2T + L / T of the two-level scan."""
    return max(1, math.ceil(math.sqrt(seqlen / 2)))


def scan_time_major(
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None,
    reverse: bool,
    block: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``h_t = a_t * h_{t-1} + b_t`` along dim 0 (no autograd; strided views are fine, nothing is copied).

    Args:
        a: decay [L, *S].
        b: input [L, *S]; may be the same tensor as ``out`` (then it is overwritten).
        h0: state before the first processed step [*S] or None (zeros).
        reverse: process t = L-1, ..., 0 (``h_t = a_t * h_{t+1} + b_t``).
        block: block length T of the two-level scan; ``None`` picks about sqrt(L / 2); above L / 2 it is a plain loop.
        out: output [L, *S] or None (a new tensor).

    Returns:
        h [L, *S]; the final state is ``h[0]`` for a reverse scan, else ``h[-1]``.
    """
    seqlen = a.shape[0]
    out = torch.empty_like(b) if out is None else out
    block = _default_block(seqlen) if block is None else max(1, int(block))
    main = (seqlen // block) * block  # [0, main): two-level scan; [main, L): a plain loop over the short tail
    if main <= block:
        _loop(a, b, h0, reverse, out)
        return out
    if reverse:
        state = _loop(a[main:], b[main:], h0, True, out[main:]) if main < seqlen else h0
        _two_level(a[:main], b[:main], state, True, block, out[:main])
    else:
        state = _two_level(a[:main], b[:main], h0, False, block, out[:main])
        if main < seqlen:
            _loop(a[main:], b[main:], state, False, out[main:])
    return out


def _two_level(a, b, h0, reverse, block, out):
    """Two-level scan over dim 0 whose length is a multiple of ``block``; returns the final state."""
    nblocks = a.shape[0] // block
    rest = tuple(a.shape[1:])
    a4 = a.view((nblocks, block) + rest).transpose(0, 1)  # [T, K, *S]
    b4 = b.view((nblocks, block) + rest).transpose(0, 1)  # [T, K, *S]
    o4 = out.view((nblocks, block) + rest).transpose(0, 1)  # [T, K, *S]
    # pass 1: end state of every block from zero, and every block's decay product
    ends = _loop(a4, b4, None, reverse, None)  # [K, *S]
    prods = a4.prod(dim=0)  # [K, *S]
    # pass 2: chain the carries (the state entering each block, in processing order)
    carries = torch.empty_like(ends)  # [K, *S]
    state = ends.new_zeros(rest) if h0 is None else h0
    for k in (range(nblocks - 1, -1, -1) if reverse else range(nblocks)):
        carries[k] = state
        state = torch.addcmul(ends[k], prods[k], state)  # [*S]
    # pass 3: every block again from its true carry, writing every step
    _loop(a4, b4, carries, reverse, o4)
    return state


def _loop(a, b, h0, reverse, out):
    """Plain loop over dim 0: ``out[t] = a[t] * prev + b[t]``; with ``out=None`` only the last state is returned."""
    steps = range(a.shape[0] - 1, -1, -1) if reverse else range(a.shape[0])
    a_steps, b_steps = a.unbind(0), b.unbind(0)  # per-step views made in one call
    in_place = out is not None and out.data_ptr() == b.data_ptr() and out.stride() == b.stride()
    o_steps = b_steps if in_place else (None if out is None else out.unbind(0))
    prev = h0
    for t in steps:
        if o_steps is None:
            prev = b_steps[t].clone() if prev is None else torch.addcmul(b_steps[t], a_steps[t], prev)
        elif prev is None:
            if not in_place:
                o_steps[t].copy_(b_steps[t])
            prev = o_steps[t]
        elif in_place:
            prev = o_steps[t].addcmul_(a_steps[t], prev)
        else:
            prev = torch.addcmul(b_steps[t], a_steps[t], prev, out=o_steps[t])
    return prev


class _LinearScanFn(torch.autograd.Function):
    """h = scan(a, b) along L with a hand-written backward (a, b [B, L, D] in the compute dtype)."""

    @staticmethod
    def forward(ctx, a, b, h0, reverse):
        h = torch.empty(a.shape, dtype=a.dtype, device=a.device)  # [B, L, D]
        scan_time_major(a.transpose(0, 1), b.transpose(0, 1), h0, reverse, out=h.transpose(0, 1))
        final = (h[:, 0] if reverse else h[:, -1]).clone()  # [B, D]
        ctx.save_for_backward(a, h, h0)
        ctx.reverse = reverse
        return h, final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gh, gfinal):
        a, h, h0 = ctx.saved_tensors
        reverse = ctx.reverse
        # adjoint, run the other way: g_t = a_next * g_next + gh_t; gfinal enters at the last processed step
        shifted = torch.empty(a.shape, dtype=a.dtype, device=a.device)  # [B, L, D]: decay of the step after t
        g = torch.empty_like(shifted)  # [B, L, D]
        da = torch.empty_like(shifted)  # [B, L, D]
        if reverse:
            shifted[:, 1:], shifted[:, 0] = a[:, :-1], 1.0
        else:
            shifted[:, :-1], shifted[:, -1] = a[:, 1:], 1.0
        scan_time_major(shifted.transpose(0, 1), gh.transpose(0, 1), gfinal, not reverse, out=g.transpose(0, 1))
        first, inner, prev = (-1, slice(None, -1), slice(1, None)) if reverse else (0, slice(1, None), slice(None, -1))
        torch.mul(g[:, inner], h[:, prev], out=da[:, inner])  # da_t = g_t h_(t-1)
        if h0 is None:
            da[:, first] = 0.0
        else:
            torch.mul(g[:, first], h0, out=da[:, first])
        dh0 = a[:, first] * g[:, first] if h0 is not None and ctx.needs_input_grad[2] else None  # [B, D]
        return da, g, dh0, None


def linear_scan(a, b, initial_state, reverse, lengths):
    """Vectorized linear scan on validated inputs (see ``naive.py`` for the semantics).

    Args:
        a: decay [B, L, D].
        b: input [B, L, D].
        initial_state: [B, D] or None.
        reverse: scan from the last valid position to the first.
        lengths: int64 [B] in [1, L] or None.

    Returns:
        h [B, L, D] in a.dtype, final_state [B, D] in float32 (float64 for float64 inputs).
    """
    compute = torch.float64 if a.dtype == torch.float64 else torch.float32
    af, bf = a.to(compute), b.to(compute)  # [B, L, D]
    h0 = None if initial_state is None else initial_state.to(compute)  # [B, D]
    valid = None
    if lengths is not None:
        valid = (torch.arange(a.shape[1], device=a.device)[None, :] < lengths[:, None])[:, :, None]  # [B, L, 1]
        af = torch.where(valid, af, torch.ones_like(af))  # identity step past the length
        bf = torch.where(valid, bf, torch.zeros_like(bf))
    h, final = _LinearScanFn.apply(af, bf, h0, bool(reverse))
    if valid is not None:
        h = torch.where(valid, h, torch.zeros_like(h))  # [B, L, D]
    return h.to(a.dtype), final
