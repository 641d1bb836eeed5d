"""One decoding step of the selective scan: ``selective_state_update`` (state updated in place)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import resolve_backend
from ._validate import check_tensor

__all__ = ["selective_state_update"]

_OP = "selective_state_update"


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """One step of the selective scan; ``state`` is updated in place.

    Args:
        state: [B, D, N], float32 recommended; overwritten with the new state.
        x: input [B, D].
        dt: step size before bias and softplus [B, D].
        A: [D, N].
        B: [B, N] or [B, G, N] (G divides D).
        C: same shape as B.
        D: [D] or None.   z: [B, D] or None.   dt_bias: [D] or None.
        dt_softplus: apply softplus (threshold 20) to dt + dt_bias.
        backend: "auto" (triton for CUDA, torch otherwise), "triton", "torch", "cpu" or "naive"
            ("cpu" and "naive" run the vectorized torch step: one step has no sequence to fuse).

    Returns:
        y [B, D] in x.dtype.
    """
    check_tensor("state", state, (-1, -1, -1), state.device if isinstance(state, torch.Tensor) else None, _OP)
    batch, dim, dstate = state.shape
    device = state.device
    check_tensor("x", x, (batch, dim), device, _OP)
    check_tensor("dt", dt, (batch, dim), device, _OP)
    check_tensor("A", A, (dim, dstate), device, _OP)
    if not isinstance(B, torch.Tensor) or B.dim() not in (2, 3):
        found = list(B.shape) if isinstance(B, torch.Tensor) else type(B).__name__
        raise ValueError(f"{_OP}: B must have shape [{batch}, {dstate}] or [{batch}, G, {dstate}], found {found}")
    groups = 1 if B.dim() == 2 else B.shape[1]
    if groups < 1 or dim % groups != 0:
        raise ValueError(f"{_OP}: the number of groups G of B/C must divide D={dim}, found G={groups}")
    bc_shape = (batch, dstate) if B.dim() == 2 else (batch, groups, dstate)
    check_tensor("B", B, bc_shape, device, _OP)
    check_tensor("C", C, bc_shape, device, _OP)
    if D is not None:
        check_tensor("D", D, (dim,), device, _OP)
    if z is not None:
        check_tensor("z", z, (batch, dim), device, _OP)
    if dt_bias is not None:
        check_tensor("dt_bias", dt_bias, (dim,), device, _OP)
    if B.dim() == 2:
        B, C = B.unsqueeze(1), C.unsqueeze(1)  # [B, 1, N]
    name = resolve_backend(_OP, backend, device)
    if name == "triton":
        from ._step_triton import selective_state_update_triton

        return selective_state_update_triton(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
    return _state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def _state_update_torch(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus):
    """Vectorized step in float32 (float64 for float64 state); B, C: [B, G, N]."""
    compute = torch.float64 if state.dtype == torch.float64 else torch.float32
    dim, groups = x.shape[1], B.shape[1]
    dtf = dt.to(compute)  # [B, D]
    if dt_bias is not None:
        dtf = dtf + dt_bias.to(compute)
    if dt_softplus:
        dtf = F.softplus(dtf)
    Bf = B.to(compute).repeat_interleave(dim // groups, dim=1)  # [B, D, N]
    Cf = C.to(compute).repeat_interleave(dim // groups, dim=1)  # [B, D, N]
    xf = x.to(compute)  # [B, D]
    h = torch.exp(dtf[..., None] * A.to(compute)) * state.to(compute) + dtf[..., None] * Bf * xf[..., None]
    state.copy_(h)
    y = (h * Cf).sum(-1)  # [B, D]
    if D is not None:
        y = y + D.to(compute) * xf
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(x.dtype)
