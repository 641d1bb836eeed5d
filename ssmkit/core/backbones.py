"""Tiny ``test_*`` backbones, one per core mixer family (timm habit), registered under domain ``"core"``.

Each is a two-block ``Backbone`` of width 16 around one mixer of ``ssmkit.core.mixers``; the mixer modules are imported
inside the builders, so this file imports even where a mixer is missing. Keyword arguments go to ``Backbone`` except
``backend`` (the scan backend of every mixer) and ``mixer_kwargs`` (extra mixer arguments).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .block import Backbone
from .registry import register_model

_SEQ_LEN = 12
_GRID = (3, 4)


def _sequence_example(model: nn.Module, batch_size: int) -> tuple[dict[str, Any], tuple[int, ...]]:
    """A [B, 12, D] token sequence."""
    x = torch.randn(batch_size, _SEQ_LEN, model.dim)  # [B, L, D]
    return {"x": x}, (batch_size, _SEQ_LEN, model.dim)


def _grid_example(model: nn.Module, batch_size: int) -> tuple[dict[str, Any], tuple[int, ...]]:
    """A [B, 12, D] token sequence laid out on a 3 x 4 grid."""
    x = torch.randn(batch_size, _GRID[0] * _GRID[1], model.dim)  # [B, H * W, D]
    return {"x": x, "grid": _GRID}, (batch_size, _GRID[0] * _GRID[1], model.dim)


def _backbone(
    mixer_name: str, mixer_defaults: dict[str, Any], dim: int = 16, depth: int = 2, backend: str = "auto",
    mixer_kwargs: dict[str, Any] | None = None, **backbone_kwargs: Any,
) -> Backbone:
    from . import mixers

    mixer_cls = getattr(mixers, mixer_name)
    options = {**mixer_defaults, **(mixer_kwargs or {})}
    return Backbone(dim, depth, lambda i: mixer_cls(dim, backend=backend, **options), **backbone_kwargs)


@register_model(domain="core", example_input=_sequence_example)
def test_mamba_backbone(**kwargs: Any) -> nn.Module:
    """Two-block Mamba backbone, width 16 (tests)."""
    return _backbone("Mamba", {"d_state": 4}, **kwargs)


@register_model(domain="core", example_input=_sequence_example)
def test_bimamba_backbone(**kwargs: Any) -> nn.Module:
    """Two-block bidirectional (Vim v2) Mamba backbone, width 16 (tests)."""
    return _backbone("BiMamba", {"d_state": 4}, **kwargs)


@register_model(domain="core", example_input=_grid_example)
def test_multiscan_backbone(**kwargs: Any) -> nn.Module:
    """Two-block multi-direction Mamba backbone on a 2-D grid, width 16 (tests)."""
    return _backbone("MultiScanMamba", {"d_state": 4}, **kwargs)


@register_model(domain="core", example_input=_grid_example)
def test_lightnet_backbone(**kwargs: Any) -> nn.Module:
    """Two-block LightNet backbone on a 2-D grid, width 16 (tests)."""
    return _backbone("LightNetMixer", {}, **kwargs)
