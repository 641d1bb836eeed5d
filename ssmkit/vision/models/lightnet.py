"""LightNet for images: Qin et al., "You Only Scan Once: Efficient Multi-dimension Sequential Modeling with
LightNet" (arXiv 2405.21022), trained here (there are no public ImageNet weights).

Forward (M = h * w patches, D = embed_dim)::

    x = patch_embed(img)             # Conv2d(k=16, s=16) -> [B, M, D], grid (h, w)
    x = mdtpe(x, grid)               # MD-TPE: per-axis Toeplitz positional mixing, summed, added to x
    x = backbone(x, grid=grid)       # depth x (Add -> RMSNorm -> LightNet attention, Add -> RMSNorm -> GLU), norm_f
    logits = head(x.mean(tokens))

The token mixer is ``core.LightNetMixer`` in its global (non-causal) form: the additive recurrence's state does not
depend on the scan order, so ONE scan (here its closed form, softmax over tokens of K, two matmuls) covers the 2-D
grid; MD-LRPE (relative positions along both axes) is applied to queries and keys inside the mixer, and MD-TPE
(``core.positional.MDTPE``) once to the patch embeddings. Both encodings are relative, so any image size works
(``dynamic_img_size=True`` by default); the attention and GLU blocks alternate as the paper's reviews describe.

Variants: the paper reports DeiT-style tiny / small classifiers, but their exact configurations could not be verified
here (``reference/vision.md`` 3.3). ``lightnet_tiny`` and ``lightnet_small`` therefore use DeiT-Ti / DeiT-S sizes
(D 192 / 384, depth 12, 3 / 6 heads of width 64) with a GLU of width 8/3 D; they are ssmkit's choice, not the paper's
recorded numbers.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.layers import lecun_normal_, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from ssmkit.core.block import Backbone
from ssmkit.core.mixers import LightNetMixer
from ssmkit.core.mlp import GatedMlp
from ssmkit.core.positional import MDTPE
from ssmkit.vision.models._timm import (
    PatchEmbed,
    adapt_first_conv,
    check_state_dict,
    fit_head,
    register_vision_model,
    vision_cfg,
)

__all__ = ["LightNet", "checkpoint_filter_fn"]


class LightNet(nn.Module):
    """LightNet image classifier: patches + MD-TPE -> LightNet attention / GLU blocks -> mean-pooled feature.

    Args:
        img_size: default image size (int or (H, W)).
        patch_size: patch size (conv kernel and stride).
        in_chans: image channels.
        num_classes: classes of the head (0: no head).
        embed_dim: width D.
        depth: number of attention + GLU blocks.
        num_heads: heads of the mixer and of MD-TPE (D / num_heads must be even for the 2-D MD-LRPE).
        mlp_hidden_dim: GLU hidden width (None: 8/3 D rounded up to a multiple of 128).
        causal: use the causal additive recurrence (``linear_scan``) instead of the global form.
        drop_rate: dropout after MD-TPE.
        drop_path_rate: stochastic depth (see ``core.Backbone``).
        global_pool: "avg" only.
        dynamic_img_size: accept any image size (relative positions only, so True by default).
        backend: kernel backend of ``linear_scan`` (MD-TPE and the causal form).

    Shapes:
        forward(x [B, in_chans, H, W]) -> [B, num_classes]; forward_features -> [B, M, D].
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 192, depth: int = 12, num_heads: int = 3,
                 mlp_hidden_dim: int | None = None, causal: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, global_pool: str = "avg", dynamic_img_size: bool = True,
                 backend: str = "auto") -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"LightNet: global_pool must be 'avg' (mean over tokens), found {global_pool!r}")
        self.patch_embed = PatchEmbed(img_size, patch_size, patch_size, in_chans, embed_dim, dynamic_img_size)
        self.img_size, self.in_chans, self.num_classes = self.patch_embed.img_size, in_chans, num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.depth, self.num_heads, self.causal = depth, num_heads, bool(causal)
        self.global_pool, self.dynamic_img_size, self.num_prefix_tokens = global_pool, bool(dynamic_img_size), 0
        self.tpe = MDTPE(embed_dim, num_heads, ndim=2, backend=backend)
        self.pos_drop = nn.Dropout(drop_rate)
        self.backbone = Backbone(
            embed_dim, depth,
            mixer_factory=lambda i: LightNetMixer(embed_dim, num_heads, causal=causal, grid_ndim=2, backend=backend),
            mlp_factory=lambda i: GatedMlp(embed_dim, hidden_dim=mlp_hidden_dim),
            norm="rms", drop_path=drop_path_rate, residual_in_fp32=True)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """ViT-style: lecun_normal patch conv, trunc_normal(0.02) Linear weights, zero biases."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def extra_repr(self) -> str:
        return (f"img_size={self.img_size}, embed_dim={self.embed_dim}, depth={self.depth}, "
                f"num_heads={self.num_heads}, num_classes={self.num_classes}, causal={self.causal}, "
                f"dynamic_img_size={self.dynamic_img_size}")

    def no_weight_decay(self) -> set[str]:
        """MD-TPE's learned vectors and decays."""
        return {n for n, _ in self.named_parameters() if n.startswith("tpe.") and not n.startswith("tpe.o_projs")}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward (``core.Backbone``)."""
        self.backbone.set_grad_checkpointing(enable)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0: identity)."""
        if global_pool is not None and global_pool != "avg":
            raise ValueError(f"LightNet: global_pool must be 'avg', found {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> normalized tokens [B, M, D] in raster order."""
        x, grid = self.patch_embed(x, owner="LightNet")  # [B, M, D]
        x = self.pos_drop(self.tpe(x, grid))  # [B, M, D]
        return self.backbone(x, grid=grid)  # [B, M, D]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens [B, M, D] -> logits [B, num_classes] (or the mean feature [B, D] with ``pre_logits``)."""
        x = x.mean(dim=1)  # [B, D]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> logits [B, num_classes]."""
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, Any], model: LightNet) -> dict[str, torch.Tensor]:
    """Check a LightNet state_dict (ours), adapting the first conv to ``in_chans`` and the head to ``num_classes``.

    Raises a ValueError listing every mismatched key and shape (a checkpoint of another variant).
    """
    out = dict(state_dict)
    adapt_first_conv(out, model, "patch_embed.proj.weight")
    fit_head(out, model)
    check_state_dict(out, model, "LightNet checkpoint")
    return out


default_cfgs = generate_default_cfgs({
    "lightnet_tiny": vision_cfg(first_conv="patch_embed.proj", paper_ids="arXiv:2405.21022"),
    "lightnet_small": vision_cfg(first_conv="patch_embed.proj", paper_ids="arXiv:2405.21022"),
})

_TEST = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "num_classes": 10}


def _create_lightnet(variant: str, pretrained: bool = False, **kwargs: Any) -> LightNet:
    return build_model_with_cfg(LightNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                pretrained_strict=True, **kwargs)


@register_vision_model(test_overrides=_TEST)
def lightnet_tiny(pretrained: bool = False, **kwargs: Any) -> LightNet:
    """LightNet-Ti (DeiT-Ti sizes: D 192, depth 12, 3 heads); trained here, no official weights."""
    args = dict(embed_dim=192, depth=12, num_heads=3)
    return _create_lightnet("lightnet_tiny", pretrained, **dict(args, **kwargs))


@register_vision_model(test_overrides=_TEST)
def lightnet_small(pretrained: bool = False, **kwargs: Any) -> LightNet:
    """LightNet-S (DeiT-S sizes: D 384, depth 12, 6 heads); trained here, no official weights."""
    args = dict(embed_dim=384, depth=12, num_heads=6)
    return _create_lightnet("lightnet_small", pretrained, **dict(args, **kwargs))
