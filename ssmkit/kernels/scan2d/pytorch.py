"""2-D scan, the ``torch`` backend: a loop over the V variates, each one vectorized over time and channels.

Glossary and recurrence: see ``naive.py``. The structure that makes it fast: the variate state of a column,
``h2[:, v] = a3[:, v] * h1[:, v-1] + a4[:, v] * h2[:, v-1] + u2[:, v]``, depends only on the previous column, so it
is one elementwise expression for all T steps at once; the temporal state is then a first-order scan along time,
``h1[t, v] = a1[t, v] * h1[t-1, v] + (a2[t, v] * h2[t-1, v] + u1[t, v])``, which runs through the ``torch`` backend of
``linear_scan`` (two-level blocked scan with a hand-written backward). V column steps of O(sqrt(T)) vectorized ops
each, instead of T * V cell updates; autograd chains the columns, the time scans use their own backward. This is the
"2-D parallel scan" of the model: parallel (blocked) along time, sequential along the few variates.
"""

from __future__ import annotations

import torch

from ..linear_scan.pytorch import linear_scan as _time_scan


def scan2d(a1, a2, a3, a4, u1, u2, initial_state, reverse):
    """Column-wise 2-D scan on validated inputs.

    Returns:
        h1, h2 [B, T, V, D] in a1.dtype (computed in float32, float64 for float64 inputs).
    """
    dtype = a1.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    batch, seqlen, nvars, dim = a1.shape
    # per-variate views made in one call each (their backward is one stack, not V zero-filled copies)
    a1, a2, a3, a4, u1, u2 = (x.to(compute).unbind(2) for x in (a1, a2, a3, a4, u1, u2))  # V x [B, T, D]
    init1 = init2 = None
    if initial_state is not None:
        init1, init2 = (s.unbind(1) for s in initial_state.to(compute).unbind(1))  # V x [B, D] each
    zeros = a1[0].new_zeros(batch, seqlen, dim)  # [B, T, D]
    cols1, cols2 = [None] * nvars, [None] * nvars
    order = range(nvars - 1, -1, -1) if reverse else range(nvars)
    prev = None
    for v in order:
        # before the first variate the states are zeros (multiplied anyway, so that a3 and a4 always get a gradient)
        left1, left2 = (zeros, zeros) if prev is None else (cols1[prev], cols2[prev])  # [B, T, D] each
        h2 = torch.addcmul(torch.addcmul(u2[v], a3[v], left1), a4[v], left2)  # [B, T, D]
        first = zeros[:, :1] if init2 is None else init2[v][:, None]  # [B, 1, D] h2[-1, v]
        h2_up = torch.cat([first, h2[:, :-1]], dim=1)  # [B, T, D] h2[t-1, v]
        b = torch.addcmul(u1[v], a2[v], h2_up)  # [B, T, D]
        h1, _ = _time_scan(a1[v], b, None if init1 is None else init1[v], False, None)  # [B, T, D]
        cols1[v], cols2[v] = h1, h2
        prev = v
    out1 = torch.stack(cols1, dim=2)  # [B, T, V, D]
    out2 = torch.stack(cols2, dim=2)  # [B, T, V, D]
    return out1.to(dtype), out2.to(dtype)
