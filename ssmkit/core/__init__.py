"""Domain-agnostic building blocks on the shared scan kernels: [B, L, D] in, [B, L, D] out.

- ``mixers``: token mixers (``Mamba``, ``BiMamba``, ``MultiScanMamba``, ``LightNetMixer``).
- ``conv``: causal / anti-causal depthwise 1-D convolutions with ``lengths`` masking and a decoding state.
- ``cache``: the recurrent-decoding cache of a Mamba mixer.
- ``block``, ``norm``, ``drop``: residual blocks and backbones; ``registry``, ``checkpoint``, ``cli``: model
  creation, checkpoint loading and the ``ssmkit`` command line.
"""

from .block import Backbone, Block
from .drop import Dropout, DropPath
from .mixers import BiMamba, LightNetMixer, Mamba, MultiScanMamba
from .norm import RMSNorm

__all__ = ["Backbone", "BiMamba", "Block", "DropPath", "Dropout", "LightNetMixer", "Mamba", "MultiScanMamba", "RMSNorm"]
