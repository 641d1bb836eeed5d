"""Normalization layers for the residual stream: RMSNorm (Vim, mamba_ssm) and LayerNorm (PlainMamba, Mamba4Rec).

``RMSNorm`` has a weight and no bias, like mamba_ssm's, so official ``*.norm.weight`` keys load unchanged.
``make_norm(kind, dim)`` turns the string used by ``Block`` / ``Backbone`` configs into a module.
"""

from __future__ import annotations

import torch
from torch import nn

NORM_KINDS = ("rms", "layer")


class RMSNorm(nn.Module):
    """Root-mean-square normalization over the last dimension: ``y = x / sqrt(mean(x^2) + eps) * weight``.

    The statistics are computed in float32 and the result is cast back to the input dtype.

    Args:
        dim: size of the last dimension (D).
        eps: added to the mean square before the square root.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"RMSNorm: dim must be a positive int, got {dim!r}")
        if eps <= 0:
            raise ValueError(f"RMSNorm: eps must be > 0, got {eps!r}")
        self.dim = dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x``.

        Args:
            x: [..., D] input.

        Returns:
            [..., D] normalized input, in the dtype of ``x``.
        """
        if x.shape[-1] != self.dim:
            raise ValueError(f"RMSNorm: x must have last dimension {self.dim}, got shape {tuple(x.shape)}")
        x32 = x.float()  # [..., D]
        inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # [..., 1]
        return (x32 * inv_rms * self.weight.float()).to(x.dtype)  # [..., D]

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


def make_norm(kind: str, dim: int, eps: float = 1e-5) -> nn.Module:
    """Build a normalization layer from its name.

    Args:
        kind: ``"rms"`` (``RMSNorm``, weight only) or ``"layer"`` (``nn.LayerNorm``, weight and bias).
        dim: normalized size (D).
        eps: numerical epsilon.

    Returns:
        The normalization module, acting on [..., D].
    """
    if kind == "rms":
        return RMSNorm(dim, eps=eps)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=eps)
    raise ValueError(f"norm: expected one of {NORM_KINDS}, got {kind!r}")
