"""What the multivariate forecasters share: the input check and series normalisation (S-Mamba, Chimera)."""

from __future__ import annotations

import torch


def check_forecast_input(x: torch.Tensor, x_mark: torch.Tensor | None, seq_len: int, n_vars: int) -> None:
    """Raise a ValueError naming the argument unless x is [B, seq_len, n_vars] and x_mark is None or [B, seq_len, F]."""
    if x.dim() != 3 or x.shape[1] != seq_len or x.shape[2] != n_vars:
        raise ValueError(f"x must have shape [B, seq_len={seq_len}, n_vars={n_vars}], found {list(x.shape)}")
    if x_mark is not None and (x_mark.dim() != 3 or x_mark.shape[:2] != x.shape[:2]):
        raise ValueError(f"x_mark must have shape [{x.shape[0]}, {seq_len}, F], found {list(x_mark.shape)}")


def normalize_series(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Series normalisation of the official Time-Series-Library models: per window and variate, subtract the mean
    over time (detached) and divide by the population std (+1e-5 under the root, no affine).

    Args:
        x: [B, L, N].

    Returns:
        (x normalised [B, L, N], mean [B, 1, N], std [B, 1, N]); undo with ``out * std + mean``.
    """
    mean = x.mean(1, keepdim=True).detach()  # [B, 1, N]
    x = x - mean
    std = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)  # [B, 1, N]
    return x / std, mean, std
