"""2-D (time x variate) Roesser scan for Chimera, with backends naive, torch (also used for ``cpu``) and triton."""

from __future__ import annotations

import torch

from .._backend import backend_module, resolve_backend
from .._validate import check_tensor

__all__ = ["scan2d"]

_OP = "scan2d"
# backend name -> module. There is no separate fused CPU kernel for this op: ``cpu`` (what ``auto`` picks for CPU
# tensors) runs the vectorized torch implementation, whose inner loops are the blocked time scans of linear_scan.
MODULES = {"naive": "naive", "torch": "pytorch", "cpu": "pytorch", "triton": "triton"}


def scan2d(
    a1: torch.Tensor,
    a2: torch.Tensor,
    a3: torch.Tensor,
    a4: torch.Tensor,
    u1: torch.Tensor,
    u2: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    reverse: bool = False,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2-D selective scan over a (time x variate) grid with a temporal state h1 and a variate state h2 (Roesser).

    For every batch row and channel (all coefficients elementwise, layout [B, T, V, D]), with time running forward and
    the variates in scan order (``v - 1`` is the previous variate: ``v - 1`` normally, ``v + 1`` with ``reverse``)::

        h1[t, v] = a1[t, v] * h1[t-1, v] + a2[t, v] * h2[t-1, v] + u1[t, v]     (along time)
        h2[t, v] = a3[t, v] * h1[t, v-1] + a4[t, v] * h2[t, v-1] + u2[t, v]     (along variates)

    Boundaries: the states before t = 0 are ``initial_state`` (zeros if None); the states before the first variate
    are zeros. The readable specification is ``naive.py``; the math of the backward is in ``triton.py``.

    Args:
        a1: time decay of h1 [B, T, V, D].
        a2: coupling h2 -> h1 along time [B, T, V, D].
        a3: coupling h1 -> h2 along variates [B, T, V, D].
        a4: variate decay of h2 [B, T, V, D].
        u1: input of h1 [B, T, V, D] (already discretized, e.g. dt1 * B1 * x).
        u2: input of h2 [B, T, V, D].
        initial_state: states at t = -1, [B, 2, V, D] (index 0: h1, 1: h2) or None (zeros).
        return_final_state: also return the states at t = T - 1, [B, 2, V, D] (to continue the scan in time).
        reverse: scan the variates from V - 1 down to 0 (the backward direction of a bidirectional model).
        backend: "auto" | "triton" | "cpu" | "torch" | "naive" (default: env ``SSMKIT_BACKEND``, then by device;
            ``cpu`` runs the torch implementation).

    Returns:
        h1, h2 [B, T, V, D] in a1.dtype (math in float32, float64 for float64 inputs), and with
        ``return_final_state`` the final states [B, 2, V, D] in the same dtype; differentiable in every input.

    Example:
        >>> a = torch.rand(2, 96, 7, 16) * 0.9
        >>> u = torch.randn(2, 96, 7, 16)
        >>> h1, h2, last = scan2d(a, a * 0.1, a * 0.1, a, u, u, return_final_state=True)
    """
    device = a1.device if isinstance(a1, torch.Tensor) else None
    check_tensor("a1", a1, (-1, -1, -1, -1), device, _OP)
    batch, seqlen, nvars, dim = a1.shape
    if min(batch, seqlen, nvars, dim) < 1:
        raise ValueError(f"{_OP}: a1 must have non-empty dimensions [B, T, V, D], found {list(a1.shape)}")
    for name, t in (("a2", a2), ("a3", a3), ("a4", a4), ("u1", u1), ("u2", u2)):
        check_tensor(name, t, (batch, seqlen, nvars, dim), device, _OP)
        if t.dtype != a1.dtype:
            raise TypeError(f"{_OP}: {name} must have the dtype of a1 ({a1.dtype}), found {t.dtype}")
    if initial_state is not None:
        check_tensor("initial_state", initial_state, (batch, 2, nvars, dim), device, _OP)
    name = resolve_backend(_OP, backend, device)
    module = backend_module(__name__, MODULES[name])
    h1, h2 = module.scan2d(a1, a2, a3, a4, u1, u2, initial_state, bool(reverse))
    if not return_final_state:
        return h1, h2
    return h1, h2, torch.stack([h1[:, -1], h2[:, -1]], dim=1)  # [B, 2, V, D]
