"""Selective scan, the specification: a readable loop over time (tests and reference only).

Glossary (layout [B, L, D], as everywhere in ssmkit):
    B   batch size                    L   sequence length            D   channels (d_inner in Mamba)
    N   state size per channel        G   groups sharing B_t and C_t (channel d uses group d // (D // G))
    u   input [B, L, D]               delta  step size before bias/softplus [B, L, D]
    A   continuous-time diagonal state matrix [D, N] (Mamba: -exp(A_log))
    Bm, Cm  input / output matrices [B, L, G, N]
    h   state [B, D, N]               dt  discretized step: softplus(delta + delta_bias) or delta + delta_bias
    Recurrence:  h_t = exp(dt_t * A) * h_{t-1} + dt_t * Bm_t * u_t
    Output:      y_t = <h_t, Cm_t> + D * u_t,  then  y_t *= silu(z_t)
    reverse      runs t = len-1, ..., 0 instead of 0, ..., len-1
    lengths      per-row valid prefix: positions t >= len are skipped (output 0, state untouched)

Identical to mamba_ssm's ``selective_scan_ref`` (softplus with threshold 20, fp32 math, output cast to u.dtype)
in our layout, with ``initial_state``, ``reverse`` and ``lengths`` added.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse, lengths):
    """Reference selective scan on validated inputs (B and C already [B, L, G, N]).

    Returns:
        y [B, L, D] in u.dtype, final_state [B, D, N] in float32 (float64 for float64 inputs).
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, seqlen, dim = u.shape
    groups, dstate = B.shape[2], B.shape[3]
    uf, dt = u.to(compute), delta.to(compute)  # [B, L, D]
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)
    if delta_softplus:
        dt = F.softplus(dt)  # threshold 20, as the CUDA kernel's log1p(exp(x)) for x <= 20
    Bf = B.to(compute).repeat_interleave(dim // groups, dim=2)  # [B, L, D, N]
    Cf = C.to(compute).repeat_interleave(dim // groups, dim=2)  # [B, L, D, N]
    Af = A.to(compute)  # [D, N]
    h = u.new_zeros(batch, dim, dstate, dtype=compute) if initial_state is None else initial_state.to(compute)
    ys = [None] * seqlen
    # unbind once: per-step views whose backward is one stack (indexing [:, t] would cost O(L) per step in backward)
    dt_t, u_t, B_t, C_t = dt.unbind(1), uf.unbind(1), Bf.unbind(1), Cf.unbind(1)
    steps = range(seqlen - 1, -1, -1) if reverse else range(seqlen)
    for t in steps:
        dA = torch.exp(dt_t[t][:, :, None] * Af)  # [B, D, N]
        dBu = dt_t[t][:, :, None] * B_t[t] * u_t[t][:, :, None]  # [B, D, N]
        h_new = dA * h + dBu
        y = (h_new * C_t[t]).sum(-1)  # [B, D]
        if lengths is not None:
            valid = (t < lengths)[:, None]  # [B, 1]
            h = torch.where(valid[:, :, None], h_new, h)
            y = torch.where(valid, y, torch.zeros_like(y))
        else:
            h = h_new
        ys[t] = y
    y = torch.stack(ys, dim=1)  # [B, L, D]
    if D is not None:
        y = y + D.to(compute) * uf
    if z is not None:
        y = y * F.silu(z.to(compute))
    if lengths is not None:
        pad = torch.arange(seqlen, device=u.device)[None, :] >= lengths[:, None]  # [B, L]
        y = y.masked_fill(pad[:, :, None], 0.0)
    return y.to(u.dtype), h
