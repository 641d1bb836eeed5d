"""2-D (time x variate) Roesser scan, the specification: a readable double loop (tests and reference only).

Glossary (layout [B, T, V, D]: batch, time, variate, channel; every coefficient is elementwise per channel):
    a1   time decay of the temporal state h1          a2   coupling of the variate state h2 into h1 (along time)
    a3   coupling of h1 into h2 (along variates)      a4   variate decay of the variate state h2
    u1, u2   inputs of h1 and h2 (already discretized, e.g. dt1 * B1 * x)
    Recurrence, for t = 0..T-1 and the variates v in scan order (v - 1 is the previous variate in that order):
        h1[t, v] = a1[t, v] * h1[t-1, v] + a2[t, v] * h2[t-1, v] + u1[t, v]
        h2[t, v] = a3[t, v] * h1[t, v-1] + a4[t, v] * h2[t, v-1] + u2[t, v]
    Boundaries: h1[-1, v], h2[-1, v] = initial_state[:, 0, v], initial_state[:, 1, v] (zeros if None);
                h1[t, -1] = h2[t, -1] = 0 (before the first variate in scan order).
    reverse      scans the variates from V-1 down to 0 (v - 1 then means v + 1); time always runs forward.
"""

from __future__ import annotations

import torch


def scan2d(a1, a2, a3, a4, u1, u2, initial_state, reverse):
    """Reference 2-D scan on validated inputs.

    Returns:
        h1, h2 [B, T, V, D] in a1.dtype (computed in float32, float64 for float64 inputs).
    """
    dtype = a1.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    batch, seqlen, nvars, dim = a1.shape
    a1, a2, a3, a4, u1, u2 = (x.to(compute) for x in (a1, a2, a3, a4, u1, u2))
    zero = a1.new_zeros(batch, dim)  # [B, D]
    init = None if initial_state is None else initial_state.to(compute)  # [B, 2, V, D]
    h1 = [[None] * nvars for _ in range(seqlen)]
    h2 = [[None] * nvars for _ in range(seqlen)]
    order = range(nvars - 1, -1, -1) if reverse else range(nvars)
    for t in range(seqlen):
        prev_v = None
        for v in order:
            h1_up = h1[t - 1][v] if t > 0 else (zero if init is None else init[:, 0, v])  # [B, D] h1[t-1, v]
            h2_up = h2[t - 1][v] if t > 0 else (zero if init is None else init[:, 1, v])  # [B, D] h2[t-1, v]
            h1_left = zero if prev_v is None else h1[t][prev_v]  # [B, D] h1[t, v-1]
            h2_left = zero if prev_v is None else h2[t][prev_v]  # [B, D] h2[t, v-1]
            h1[t][v] = a1[:, t, v] * h1_up + a2[:, t, v] * h2_up + u1[:, t, v]  # [B, D]
            h2[t][v] = a3[:, t, v] * h1_left + a4[:, t, v] * h2_left + u2[:, t, v]  # [B, D]
            prev_v = v
    out1 = torch.stack([torch.stack(row, dim=1) for row in h1], dim=1)  # [B, T, V, D]
    out2 = torch.stack([torch.stack(row, dim=1) for row in h2], dim=1)  # [B, T, V, D]
    return out1.to(dtype), out2.to(dtype)
