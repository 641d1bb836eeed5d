"""Stochastic depth (drop path): drop a whole residual branch per sample during training."""

from __future__ import annotations

import torch
from torch import nn


class DropPath(nn.Module):
    """Zero the branch output of a random subset of samples and rescale the kept ones by ``1 / (1 - p)``.

    In eval mode, or with ``p == 0``, it is the identity. One Bernoulli draw per sample (first dimension), so the
    expected output equals the input.

    Args:
        p: probability of dropping a sample's branch, in [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"DropPath: p must be a float in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply drop path.

        Args:
            x: [B, ...] branch output.

        Returns:
            [B, ...] the same tensor (eval / p == 0) or a per-sample masked and rescaled copy.
        """
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(mask_shape).bernoulli_(keep)  # [B, 1, ..., 1]
        return x * mask / keep  # [B, ...]

    def extra_repr(self) -> str:
        return f"p={self.p}"
