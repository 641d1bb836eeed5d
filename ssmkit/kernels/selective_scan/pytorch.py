"""Selective scan, the ``torch`` backend: pure PyTorch, chunked over L, with a hand-written backward.

Glossary (as in ``naive.py``; layout [B, L, D]):
    B, L, D, N, G   batch, length, channels, state size, groups of B/C (channel d uses group d // (D // G))
    Dg              channels per group, D // G          T   chunk length (steps per chunk)
    dt              softplus(delta + delta_bias) or delta + delta_bias, 0 past a row's length
    x               dt * u [B, L, D]
    dA, Bx          exp(dt_t A) and dt_t B_t u_t of one chunk, time-major [T, B, D, N]
    H               states of one chunk [T, B, D, N];  y_t = <H_t, C_t>

Forward: L is cut into chunks of T steps. Per chunk, dA and Bx are built in one vectorized pass, the recurrence
``H_t = dA_t * H_{t-1} + Bx_t`` runs with one fused ``addcmul`` per step on [B, D, N] (or the two-level block scan of
``linear_scan.pytorch`` when a step is too small to amortize an op), and ``y = <H, C>`` is one product and one
matrix-vector sum. Only the state entering each chunk is kept ([B, D, N] per chunk); the [T, B, D, N] work buffers are
allocated once per call and reused by every chunk (fresh large tensors cost page faults on CPU), so memory is
chunk-local plus the [B, L, D]-sized inputs. Inputs are transposed once to time-major [L, B, ...] so that every chunk
is a contiguous slice.

Backward walks the chunks in reverse: it recomputes the chunk's dA, Bx and H from the saved chunk-start state, runs
the adjoint recurrence ``g_t = C_t dy_t + dA_{t+1} g_{t+1}`` (the gradient of the returned final state enters at
the last processed step), and forms every gradient from g and H with vectorized ops: ``dBx = g``,
``d(dt A) = g * dA * H_{t-1}``, ``dC = dy H``. Skip (D), gate (z), softplus, bias, dtype casts and the length mask
are plain autograd ops on [B, L, D] tensors around this core. Math is float32 (float64 for float64 inputs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..linear_scan.pytorch import scan_time_major

_CHUNK_ELEMENTS = 1 << 18  # target size of one chunk buffer [T, B, D, N] (about 1 MiB in float32)
_MIN_CHUNK = 4  # at least this many steps per chunk, so the per-chunk ops stay amortized for very wide steps
_LOOP_STEP_ELEMENTS = 1 << 12  # steps of at least this many elements run as a plain loop (one op per step)


def _chunk_length(seqlen: int, step_elements: int) -> int:
    """Default chunk length T: about ``_CHUNK_ELEMENTS`` per [T, B, D, N] buffer, within [min(L, 4), L] (at least 1)."""
    return max(1, min(seqlen, max(_MIN_CHUNK, _CHUNK_ELEMENTS // max(1, step_elements))))


def _inner_block(chunk: int, step_elements: int) -> int:
    """Block length for ``scan_time_major``: a plain loop for large steps, else the two-level scan."""
    if step_elements >= _LOOP_STEP_ELEMENTS:
        return chunk
    return max(1, math.ceil(math.sqrt(chunk / 2)))


def _time_major(t: torch.Tensor) -> torch.Tensor:
    """[B, L, ...] -> contiguous [L, B, ...] (one copy per input, so every chunk is a contiguous slice)."""
    return t.transpose(0, 1).contiguous()


def _discretize(dt_c, x_c, A, B_c, dA, Bx):
    """Chunk inputs (time-major) -> ``dA = exp(dt A)`` and ``Bx = x B``, written into the [T, B, D, N] buffers."""
    steps, batch, dim = dt_c.shape
    groups = B_c.shape[2]
    torch.mul(dt_c[..., None], A, out=dA)  # [T, B, D, N]
    dA.exp_()
    x5 = x_c.view(steps, batch, groups, dim // groups, 1)  # [T, B, G, Dg, 1]
    torch.mul(x5, B_c[:, :, :, None, :], out=Bx.view(steps, batch, groups, dim // groups, -1))  # [T, B, G, Dg, N]


def _contract_state(S, V, tmp, out):
    """``out[t, b, d] = sum_n S[t, b, d, n] V[t, b, group(d), n]`` (S, tmp [T, B, D, N]; V [T, B, G, N]; out [T, B, D]).

    The sum over the short last axis is a matrix-vector product with ones (faster than ``sum(-1)`` on CPU).
    """
    steps, batch, dim, dstate = S.shape
    groups = V.shape[2]
    shape5 = (steps, batch, groups, dim // groups, dstate)
    torch.mul(S.view(shape5), V[:, :, :, None, :], out=tmp.view(shape5))  # [T, B, G, Dg, N]
    torch.mv(tmp.view(-1, dstate), tmp.new_ones(dstate), out=out.view(-1))


def _scan_chunk(dA, H, rows, h0, reverse, block):
    """In place on H [T, B, D, N] (holding Bx on entry): ``H_t = dA_t * H_prev + Bx_t`` from the state ``h0``.

    ``rows`` are per-step views (of dA's and H's buffers) made once per call, used by the plain loop.
    """
    steps = dA.shape[0]
    if block < steps:
        scan_time_major(dA, H, h0, reverse, block, out=H)
        return
    dA_s, H_s = rows
    prev = h0
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        prev = H_s[t].addcmul_(dA_s[t], prev)


def _adjoint_scan(dA, g, rows, g_next, reverse, block, tmp):
    """In place on g [T, B, D, N]: ``g_t += dA_next g_next`` against the scan direction; ``g_next`` enters at the end.

    ``dA_next`` is the decay of the step processed after t (1 at the chunk's last processed step, where ``g_next``,
    the gradient reaching the state that leaves the chunk, is added). ``rows`` are per-step views of dA's and g's
    buffers (made once per call); ``tmp`` is a free [T, B, D, N] buffer.
    """
    steps = dA.shape[0]
    if block >= steps:  # plain loop, decays read shifted in place
        dA_s, g_s = rows
        if reverse:
            g_s[0].add_(g_next)
            for t in range(1, steps):
                g_s[t].addcmul_(dA_s[t - 1], g_s[t - 1])
        else:
            g_s[steps - 1].add_(g_next)
            for t in range(steps - 2, -1, -1):
                g_s[t].addcmul_(dA_s[t + 1], g_s[t + 1])
        return
    if reverse:  # two-level scan on a shifted copy of the decays
        tmp[1:], tmp[0] = dA[:-1], 1.0
    else:
        tmp[:-1], tmp[-1] = dA[1:], 1.0
    scan_time_major(tmp, g, g_next, not reverse, block, out=g)


def _chunks(seqlen: int, chunk: int, reverse: bool) -> list[tuple[int, int]]:
    """Chunk bounds [t0, t1) in processing order."""
    bounds = [(t0, min(t0 + chunk, seqlen)) for t0 in range(0, seqlen, chunk)]
    return bounds[::-1] if reverse else bounds


class _SelectiveScanFn(torch.autograd.Function):
    """Core recurrence: (dt, x, A, B, C, h0) -> (y_ssm [B, L, D], final state [B, D, N]) in the compute dtype."""

    @staticmethod
    def forward(ctx, dt, x, A, Bm, Cm, h0, reverse, chunk):
        batch, seqlen, dim = dt.shape
        dstate = Bm.shape[3]
        block = _inner_block(chunk, batch * dim * dstate)
        dt_t, x_t = _time_major(dt), _time_major(x)  # [L, B, D]
        B_t, C_t = _time_major(Bm), _time_major(Cm)  # [L, B, G, N]
        bounds = _chunks(seqlen, chunk, reverse)
        y_t = dt.new_empty(seqlen, batch, dim)  # [L, B, D]
        chunk_states = dt.new_empty(len(bounds), batch, dim, dstate)  # [nchunks, B, D, N]
        dA_buf, H_buf = (dt.new_empty(chunk, batch, dim, dstate) for _ in range(2))  # reused: no page faults
        rows = (dA_buf.unbind(0), H_buf.unbind(0))  # per-step views, made once
        h = dt.new_zeros(batch, dim, dstate) if h0 is None else h0  # [B, D, N]
        for k, (t0, t1) in enumerate(bounds):
            chunk_states[k] = h
            h_start = chunk_states[k]  # a copy: h may point into H_buf, which is overwritten next
            dA, H = dA_buf[: t1 - t0], H_buf[: t1 - t0]  # [T, B, D, N]
            _discretize(dt_t[t0:t1], x_t[t0:t1], A, B_t[t0:t1], dA, H)
            _scan_chunk(dA, H, rows, h_start, reverse, block)  # [T, B, D, N]
            _contract_state(H, C_t[t0:t1], dA, y_t[t0:t1])
            h = H[0] if reverse else H[-1]
        final = h.clone()  # [B, D, N]
        ctx.save_for_backward(dt_t, x_t, A, B_t, C_t, chunk_states)
        ctx.has_h0 = h0 is not None
        ctx.reverse, ctx.chunk, ctx.block = reverse, chunk, block
        return y_t.transpose(0, 1), final

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gfinal):
        dt_t, x_t, A, B_t, C_t, chunk_states = ctx.saved_tensors
        reverse, chunk, block = ctx.reverse, ctx.chunk, ctx.block
        need = ctx.needs_input_grad
        seqlen, batch, dim = dt_t.shape
        groups, dstate = B_t.shape[2], B_t.shape[3]
        dg = dim // groups
        gy_t = _time_major(gy)  # [L, B, D]
        ddt_t, dx_t = torch.empty_like(dt_t), torch.empty_like(x_t)  # [L, B, D]
        dB_t = torch.empty_like(B_t) if need[3] else None  # [L, B, G, N]
        dC_t = torch.empty_like(C_t) if need[4] else None  # [L, B, G, N]
        dA_param = torch.zeros_like(A)  # [D, N]
        buffers = [dt_t.new_empty(chunk, batch, dim, dstate) for _ in range(4)]  # reused: no page faults
        dA_rows, H_rows, g_rows = (buf.unbind(0) for buf in buffers[:3])  # per-step views, made once
        g_next = gfinal.contiguous()  # [B, D, N]: gradient reaching the state that leaves the current chunk
        bounds = _chunks(seqlen, chunk, reverse)
        for k in range(len(bounds) - 1, -1, -1):
            t0, t1 = bounds[k]
            steps = t1 - t0
            h_start = chunk_states[k]  # [B, D, N]
            dA, H, g, tmp = (buf[:steps] for buf in buffers)  # [T, B, D, N]
            dt_c, x_c, gy_c = dt_t[t0:t1], x_t[t0:t1], gy_t[t0:t1]  # [T, B, D]
            B_c, C_c = B_t[t0:t1], C_t[t0:t1]  # [T, B, G, N]
            _discretize(dt_c, x_c, A, B_c, dA, H)
            _scan_chunk(dA, H, (dA_rows, H_rows), h_start, reverse, block)  # [T, B, D, N]
            if dC_t is not None:  # dC_t = sum_(d in g) dy_t H_t
                gy5 = gy_c.view(steps, batch, groups, 1, dg)  # [T, B, G, 1, Dg]
                dC_t[t0:t1] = (gy5 @ H.view(steps, batch, groups, dg, dstate)).view(steps, batch, groups, dstate)
            # adjoint: g_t = C_t dy_t + dA_next g_next, run against the forward direction
            g5 = g.view(steps, batch, groups, dg, dstate)  # [T, B, G, Dg, N]
            torch.mul(gy_c.view(steps, batch, groups, dg, 1), C_c[:, :, :, None, :], out=g5)
            _adjoint_scan(dA, g, (dA_rows, g_rows), g_next, reverse, block, tmp)  # [T, B, D, N]
            first = -1 if reverse else 0
            g_next = dA[first] * g[first]  # [B, D, N]
            _contract_state(g, B_c, tmp, dx_t[t0:t1])  # dBx = g
            if dB_t is not None:  # dB_t = sum_(d in g) x_t g_t
                xg = x_c.view(steps, batch, groups, 1, dg)  # [T, B, G, 1, Dg]
                dB_t[t0:t1] = (xg @ g5).view(steps, batch, groups, dstate)
            # d(dt A)_t = g_t * dA_t * H_{t-1}, with H_{-1} the chunk-start state (w reuses dA)
            w = dA.mul_(g)  # [T, B, D, N]
            if reverse:
                w[:-1] *= H[1:]
                w[-1] *= h_start
            else:
                w[1:] *= H[:-1]
                w[0] *= h_start
            dA_param += torch.mul(w, dt_c[..., None], out=tmp).sum(dim=(0, 1))
            w.mul_(A)
            torch.mv(w.view(-1, dstate), w.new_ones(dstate), out=ddt_t[t0:t1].view(-1))  # x = dt u: decay path only
        dh0 = g_next if ctx.has_h0 else None
        dB = None if dB_t is None else dB_t.transpose(0, 1)
        dC = None if dC_t is None else dC_t.transpose(0, 1)
        return ddt_t.transpose(0, 1), dx_t.transpose(0, 1), dA_param, dB, dC, dh0, None, None


def selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, reverse, lengths,
                   chunk_size: int | None = None):
    """Vectorized selective scan on validated inputs (B and C already [B, L, G, N]; semantics of ``naive.py``).

    Args:
        u: input [B, L, D].
        delta: step size before bias and softplus [B, L, D].
        A: state matrix [D, N].
        B: input matrix [B, L, G, N].
        C: output matrix [B, L, G, N].
        D: skip weight [D] or None.
        z: gate [B, L, D] or None.
        delta_bias: [D] or None.
        delta_softplus: apply softplus (threshold 20) to delta + delta_bias.
        initial_state: [B, D, N] or None.
        reverse: scan from the last valid position to the first.
        lengths: int64 [B] in [1, L] or None.
        chunk_size: steps per chunk T (None: about 2^18 elements per [T, B, D, N] buffer, at least 4 steps).

    Returns:
        y [B, L, D] in u.dtype, final_state [B, D, N] in float32 (float64 for float64 inputs).
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    batch, seqlen, dim = u.shape
    dstate = A.shape[1]
    if chunk_size is None:
        chunk = _chunk_length(seqlen, batch * dim * dstate)
    elif isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1:
        chunk = min(chunk_size, seqlen)
    else:
        raise ValueError(f"selective_scan: chunk_size must be a positive int or None, found {chunk_size!r}")
    uf, dt = u.to(compute), delta.to(compute)  # [B, L, D]
    if delta_bias is not None:
        dt = dt + delta_bias.to(compute)
    if delta_softplus:
        dt = F.softplus(dt)  # threshold 20, as naive.py
    valid = None
    if lengths is not None:
        valid = (torch.arange(seqlen, device=u.device)[None, :] < lengths[:, None])[:, :, None]  # [B, L, 1]
        dt = torch.where(valid, dt, torch.zeros_like(dt))  # identity step past the length: dA = 1, Bx = 0
    h0 = None if initial_state is None else initial_state.to(compute)  # [B, D, N]
    y, final = _SelectiveScanFn.apply(dt, dt * uf, A.to(compute), B.to(compute), C.to(compute), h0, bool(reverse),
                                      chunk)
    if D is not None:
        y = y + D.to(compute) * uf  # [B, L, D]
    if z is not None:
        y = y * F.silu(z.to(compute))
    if valid is not None:
        y = torch.where(valid, y, torch.zeros_like(y))
    return y.to(u.dtype), final
