"""One decoding step of the selective scan in Triton: ``selective_state_update_triton`` (state updated in place).

Design: grid ``(batch, ceil(D / BLOCK_D))``; a program loads its ``[BLOCK_D, N]`` slice of the state, the
``BLOCK_D`` values of x / dt / z and, per channel, the B / C row of the channel's group, does the step in float32,
writes the new state back over the old one and writes ``y [BLOCK_D]``. The cost is the state read + write,
``2 * B * D * N * sizeof(state)`` bytes. Block sizes are fixed (no autotuning: autotuning would replay the kernel
and corrupt the in-place state): BLOCK_D = 32 / 16 / 8 / 4 for N <= 16 / 32 / 64 / larger.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["selective_state_update_triton"]

_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr,
    dim, groups, dim_per_group, dstate,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BD]
    dmask = d < dim
    n = tl.arange(0, BLOCK_N)  # [BN]
    m2 = dmask[:, None] & (n < dstate)[None, :]
    dn = d[:, None] * dstate + n[None, :]  # [BD, BN]
    bc = (pid_b * groups + d // dim_per_group)[:, None] * dstate + n[None, :]  # [BD, BN] group row per channel
    h = tl.load(state_ptr + pid_b * dim * dstate + dn, mask=m2, other=0.0).to(tl.float32)  # [BD, BN]
    A = tl.load(A_ptr + dn, mask=m2, other=0.0).to(tl.float32)  # [BD, BN]
    Bm = tl.load(B_ptr + bc, mask=m2, other=0.0).to(tl.float32)  # [BD, BN]
    Cm = tl.load(C_ptr + bc, mask=m2, other=0.0).to(tl.float32)  # [BD, BN]
    x = tl.load(x_ptr + pid_b * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    dt = tl.load(dt_ptr + pid_b * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
    if HAS_BIAS:
        dt = dt + tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))), dt)
    h = tl.exp(dt[:, None] * A) * h + (dt * x)[:, None] * Bm  # [BD, BN]
    tl.store(state_ptr + pid_b * dim * dstate + dn, h, mask=m2)
    y = tl.sum(h * Cm, axis=1)  # [BD]
    if HAS_D:
        y = y + tl.load(D_ptr + d, mask=dmask, other=0.0).to(tl.float32) * x
    if HAS_Z:
        z = tl.load(z_ptr + pid_b * dim + d, mask=dmask, other=0.0).to(tl.float32)  # [BD]
        y = y * z * tl.sigmoid(z)
    tl.store(y_ptr + pid_b * dim + d, y, mask=dmask)


def _block_d(dstate: int) -> int:
    block_n = triton.next_power_of_2(dstate)
    return 32 if block_n <= 16 else 16 if block_n <= 32 else 8 if block_n <= 64 else 4


@torch.compiler.disable
def selective_state_update_triton(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
) -> torch.Tensor:
    """One selective-scan step on validated inputs; ``state`` is overwritten with the new state.

    Args:
        state: [B, D, N] (float32 recommended).   x, dt: [B, D].   A: [D, N].   B, C: [B, G, N].
        D, dt_bias: [D] or None.   z: [B, D] or None.   dt_softplus: softplus (threshold 20) on dt + dt_bias.

    Returns:
        y [B, D] in x.dtype.
    """
    named = dict(state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias)
    for name, t in named.items():
        if t is not None and t.dtype not in _SUPPORTED:
            raise TypeError(f"selective_state_update: backend 'triton' needs {name} in float32/bfloat16/float16, "
                            f"found {t.dtype}; use backend='torch' for float64")
    batch, dim, dstate = state.shape
    groups = B.shape[1]
    work = state if state.is_contiguous() else state.contiguous()  # [B, D, N]
    y = torch.empty(batch, dim, device=x.device, dtype=x.dtype)  # [B, D]
    block_d = min(_block_d(dstate), triton.next_power_of_2(dim))
    x, dt, A, B, C = (t.contiguous() for t in (x, dt, A, B, C))
    _state_update_kernel[(batch, triton.cdiv(dim, block_d))](
        work, x, dt, A, B, C, x if D is None else D.contiguous(), x if z is None else z.contiguous(),
        x if dt_bias is None else dt_bias.contiguous(), y, dim, groups, dim // groups, dstate,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BLOCK_D=block_d, BLOCK_N=triton.next_power_of_2(dstate), num_warps=4,
    )
    if work is not state:
        state.copy_(work)
    return y
