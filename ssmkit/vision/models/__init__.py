"""Vision backbones, one file per family (timm style); importing this package registers all of them.

- ``vim``: Vision Mamba Ti/S/B and the stride-8 "+" models (hustvl/Vim).
- ``plainmamba``: PlainMamba L1/L2/L3 (ChenhongyiYang/PlainMamba).
- ``lightnet``: LightNet for images (arXiv 2405.21022), trained here.
- ``_timm``: shared timm glue (both registries, pretrained cfgs, patch embedding, checkpoint checks).
"""

from .lightnet import LightNet
from .plainmamba import PlainMamba
from .vim import VisionMamba

__all__ = ["LightNet", "PlainMamba", "VisionMamba"]
