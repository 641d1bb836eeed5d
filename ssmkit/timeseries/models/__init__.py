"""Forecasting models (plain nn.Modules, registered in ``ssmkit``'s model registry)."""

from .s_mamba import SMamba

__all__ = ["SMamba"]
