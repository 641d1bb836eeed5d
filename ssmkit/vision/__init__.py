"""Image classification on the shared backbone: Vim, PlainMamba and LightNet, in timm's and in ssmkit's registries.

Importing this package registers every vision model in both registries, so that after ``import ssmkit.vision``::

    timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=PATH))
    ssmkit.create_model("plainmamba_l1", pretrained=PATH)

load the official checkpoints (nothing is ever downloaded: pass local files). Models: ``ssmkit.vision.models``.
"""

from . import models

__all__ = ["models"]
