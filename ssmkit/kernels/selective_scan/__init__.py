"""Selective scan (Mamba-1 semantics) with four backends: naive, torch, cpu (fused, numba) and triton."""

from __future__ import annotations

import torch

from .._backend import backend_module, resolve_backend
from .._validate import check_lengths, check_tensor

__all__ = ["selective_scan"]

_OP = "selective_scan"


# backend name -> module; the torch backend lives in ``pytorch.py`` so that importing it cannot shadow ``torch``
MODULES = {"naive": "naive", "torch": "pytorch", "cpu": "cpu", "triton": "triton"}


def _well_formed(u, delta, A, B, C, D, z, delta_bias, initial_state) -> bool:
    """One cheap pass over the common case: floating tensors on u's device with consistent shapes.

    False does not mean invalid: ``_check_inputs`` then runs the detailed checks (and raises where one fails).
    """
    tensors = [t for t in (u, delta, A, B, C, D, z, delta_bias, initial_state) if t is not None]
    if not all(isinstance(t, torch.Tensor) and t.is_floating_point() for t in tensors):
        return False
    if u.dim() != 3 or A.dim() != 2 or B.dim() not in (3, 4):
        return False
    device = u.device
    if not all(t.device == device for t in tensors):
        return False
    batch, seqlen, dim = u.shape
    dstate = A.shape[1]
    bc = B.shape
    groups = bc[2] if len(bc) == 4 else 1
    return (delta.shape == u.shape and A.shape[0] == dim and bc[:2] == (batch, seqlen)
            and bc[-1] == dstate and groups >= 1 and dim % groups == 0 and C.shape == bc
            and (z is None or z.shape == u.shape) and (D is None or D.shape == (dim,))
            and (delta_bias is None or delta_bias.shape == (dim,))
            and (initial_state is None or initial_state.shape == (batch, dim, dstate)))


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    """The detailed checks: each failure names the argument, the expected and the found value."""
    check_tensor("u", u, (-1, -1, -1), u.device if isinstance(u, torch.Tensor) else None, _OP)
    batch, seqlen, dim = u.shape
    device = u.device
    check_tensor("delta", delta, (batch, seqlen, dim), device, _OP)
    check_tensor("A", A, (dim, -1), device, _OP)
    dstate = A.shape[1]
    if not isinstance(B, torch.Tensor) or B.dim() not in (3, 4):
        found = list(B.shape) if isinstance(B, torch.Tensor) else type(B).__name__
        raise ValueError(f"{_OP}: B must have shape [{batch}, {seqlen}, {dstate}] or [{batch}, {seqlen}, G, {dstate}], "
                         f"found {found}")
    groups = 1 if B.dim() == 3 else B.shape[2]
    if groups < 1 or dim % groups != 0:
        raise ValueError(f"{_OP}: the number of groups G of B/C must divide D={dim}, found G={groups}")
    bc_shape = (batch, seqlen, dstate) if B.dim() == 3 else (batch, seqlen, groups, dstate)
    check_tensor("B", B, bc_shape, device, _OP)
    check_tensor("C", C, bc_shape, device, _OP)
    if D is not None:
        check_tensor("D", D, (dim,), device, _OP)
    if z is not None:
        check_tensor("z", z, (batch, seqlen, dim), device, _OP)
    if delta_bias is not None:
        check_tensor("delta_bias", delta_bias, (dim,), device, _OP)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (batch, dim, dstate), device, _OP)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    reverse: bool = False,
    lengths: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t``, ``y_t = <h_t, C_t> + D u_t``, ``y *= silu(z)``.

    The semantics equal mamba_ssm's ``selective_scan_ref`` in the [B, L, D] layout (see ``naive.py``).

    Args:
        u: input [B, L, D].
        delta: step size before bias and softplus [B, L, D].
        A: state matrix [D, N] (float32 recommended).
        B: input matrix [B, L, N] or [B, L, G, N], G divides D (channel d uses group d // (D // G)).
        C: output matrix, same shape as B.
        D: skip weight [D] or None.
        z: gate [B, L, D] or None (``y *= silu(z)``).
        delta_bias: [D] or None, added to delta before softplus.
        delta_softplus: apply softplus (threshold 20) to delta + delta_bias.
        initial_state: [B, D, N] or None (zeros).
        return_final_state: also return the state after the last processed position.
        reverse: scan from the last valid position to the first.
        lengths: [B] integers in [1, L] or None; positions >= length are ignored and their output is 0.
        backend: "auto" | "triton" | "cpu" | "torch" | "naive" (default: env ``SSMKIT_BACKEND``, then by device).

    Returns:
        y [B, L, D] in u.dtype, and with ``return_final_state`` the final state [B, D, N] in float32.

    Example:
        >>> u = torch.randn(2, 64, 8); A = -torch.rand(8, 4); B = C = torch.randn(2, 64, 4)
        >>> y = selective_scan(u, torch.rand(2, 64, 8), A, B, C, delta_softplus=True)
    """
    if not _well_formed(u, delta, A, B, C, D, z, delta_bias, initial_state):
        _check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)  # raises, naming the argument
    batch, seqlen, dim = u.shape
    device = u.device
    lengths = check_lengths(lengths, batch, seqlen, device, _OP)
    name = resolve_backend(_OP, backend, device)
    if B.dim() == 3:
        B, C = B.unsqueeze(2), C.unsqueeze(2)  # [B, L, 1, N]
    y, final_state = backend_module(__name__, MODULES[name]).selective_scan(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), initial_state, bool(reverse), lengths
    )
    return (y, final_state) if return_final_state else y
