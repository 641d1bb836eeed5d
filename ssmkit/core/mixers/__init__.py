"""Token mixers on the shared kernels: [B, L, D] in, [B, L, D] out.

- ``Mamba``: the Mamba-1 mixer with mamba_ssm's parameter names (mamba.py).
- ``BiMamba``: Vim's bidirectional "v2" mixer, the backward direction through ``reverse=`` (bimamba.py).
- ``MultiScanMamba``: K scan orders of an N-D grid in one kernel call (multiscan.py).
- ``LightNetMixer``: LightNet's additive linear recurrence with MD-TPE / MD-LRPE (lightnet.py).
"""

from __future__ import annotations

import importlib

_EXPORTS = {"Mamba": "mamba", "BiMamba": "bimamba", "MultiScanMamba": "multiscan", "LightNetMixer": "lightnet"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import each mixer's module on first use (PEP 562), so importing one mixer does not import the others."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
