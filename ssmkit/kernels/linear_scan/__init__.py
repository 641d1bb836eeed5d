"""First-order diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t`` with backends naive, torch, cpu, triton."""

from __future__ import annotations

import torch

from .._backend import backend_module, resolve_backend
from .._validate import check_lengths, check_tensor

__all__ = ["linear_scan"]

_OP = "linear_scan"
# backend name -> module; the torch backend lives in ``pytorch.py`` so that importing it cannot shadow ``torch``
MODULES = {"naive": "naive", "torch": "pytorch", "cpu": "cpu", "triton": "triton"}


def linear_scan(
    a: torch.Tensor,
    b: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    reverse: bool = False,
    lengths: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Linear scan ``h_t = a_t * h_{t-1} + b_t`` (elementwise over channels).

    Args:
        a: decay [B, L, D].
        b: input [B, L, D].
        initial_state: [B, D] or None (zeros).
        return_final_state: also return the state after the last processed position.
        reverse: scan from the last valid position to the first (``h_t = a_t * h_{t+1} + b_t``).
        lengths: [B] integers in [1, L] or None; positions >= length are ignored and their output is 0.
        backend: "auto" | "triton" | "cpu" | "torch" | "naive" (default: env ``SSMKIT_BACKEND``, then by device).

    Returns:
        h [B, L, D] in a.dtype, and with ``return_final_state`` the final state [B, D] in float32.

    Example:
        >>> a, b = torch.rand(2, 100, 16), torch.randn(2, 100, 16)
        >>> h, h_last = linear_scan(a, b, return_final_state=True)
    """
    check_tensor("a", a, (-1, -1, -1), a.device if isinstance(a, torch.Tensor) else None, _OP)
    batch, seqlen, dim = a.shape
    check_tensor("b", b, (batch, seqlen, dim), a.device, _OP)
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (batch, dim), a.device, _OP)
    lengths = check_lengths(lengths, batch, seqlen, a.device, _OP)
    name = resolve_backend(_OP, backend, a.device)
    module = backend_module(__name__, MODULES[name])
    h, final_state = module.linear_scan(a, b, initial_state, bool(reverse), lengths)
    return (h, final_state) if return_final_state else h
