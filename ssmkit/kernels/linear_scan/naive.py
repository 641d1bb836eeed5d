"""First-order linear recurrence, the specification: a readable loop over time (tests and reference only).

Glossary (layout [B, L, D]):
    a   decay / gate [B, L, D]        b   input [B, L, D]          h   state [B, L, D] (output), [B, D] (final)
    Recurrence:  h_t = a_t * h_{t-1} + b_t,  h_{-1} = initial_state (zeros if None)
    reverse      runs t = len-1, ..., 0 (h_t = a_t * h_{t+1} + b_t)
    lengths      per-row valid prefix: positions t >= len are skipped (output 0, state untouched)
"""

from __future__ import annotations

import torch


def linear_scan(a, b, initial_state, reverse, lengths):
    """Reference linear scan on validated inputs.

    Returns:
        h [B, L, D] in a.dtype, final_state [B, D] in float32 (float64 for float64 inputs).
    """
    compute = torch.float64 if a.dtype == torch.float64 else torch.float32
    batch, seqlen, dim = a.shape
    af, bf = a.to(compute), b.to(compute)
    h = a.new_zeros(batch, dim, dtype=compute) if initial_state is None else initial_state.to(compute)
    hs = [None] * seqlen
    a_t, b_t = af.unbind(1), bf.unbind(1)  # per-step views; their backward is one stack
    steps = range(seqlen - 1, -1, -1) if reverse else range(seqlen)
    for t in steps:
        h_new = a_t[t] * h + b_t[t]  # [B, D]
        if lengths is not None:
            valid = (t < lengths)[:, None]  # [B, 1]
            h = torch.where(valid, h_new, h)
            hs[t] = torch.where(valid, h_new, torch.zeros_like(h_new))
        else:
            h = h_new
            hs[t] = h_new
    return torch.stack(hs, dim=1).to(a.dtype), h
