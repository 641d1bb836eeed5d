"""ssmkit: shared state-space / linear-recurrence backbones with fast scan kernels, for vision, time series,
recommendation and graphs.

``ssmkit.create_model`` and ``ssmkit.list_models`` are imported on first use, so ``import ssmkit`` stays cheap and works
without triton and without a GPU.
"""

from __future__ import annotations

from importlib import metadata as _metadata
from typing import Any

try:
    __version__ = _metadata.version("ssmkit")
except _metadata.PackageNotFoundError:
    __version__ = "0+unknown"

_LAZY = {"create_model": "ssmkit.core.registry", "list_models": "ssmkit.core.registry",
         "model_info": "ssmkit.core.registry"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    """Import the registry functions on first access (PEP 562)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssmkit' has no attribute {name!r}")
