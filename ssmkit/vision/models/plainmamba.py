"""PlainMamba: Yang et al., "PlainMamba: Improving Non-Hierarchical Mamba in Visual Recognition", BMVC 2024
(arXiv 2403.17695). Faithful to ChenhongyiYang/PlainMamba (``plain_mamba.py``, ``plain_mamba_layer.py``,
``patch_embed.py``) and loads its released mmcls checkpoints (``l1.pth``, ``l2.pth``, ``l3.pth``).

Forward (D = embed_dim, grid (h, w) = image size / 16, any size)::

    x = stem(img)                # Conv7x7 s2 + BN + ReLU, n x (Conv3x3 + BN + ReLU), corner pad to x8, Conv k8 s8
    x = x + pos_embed            # [1, 14*14, D] bicubic-resized to (h, w) (no class token)
    for layer in layers:         # x = x + drop_path(mixer(LayerNorm(x)));  L1 layer 0 then: x = GELU(BN(DWConv3x3(x)))
    x = norm(x).mean(tokens)     # final LayerNorm (eps 1e-6), mean over all tokens
    logits = head(x)

The mixer is ``core.MultiScanMamba``: the four continuous zig-zag orders of ``core.scan_order`` (PlainMamba's o1..o4)
in ONE selective-scan call, direction-aware B (``direction_Bs`` [5, N]), a 7x7 depthwise conv, in/out_proj with bias,
the sum of the four directions (no /4). ``compat=True`` reproduces two quirks of the released code (raster-order
dt/B/C while u is in scan order; the dt bias added twice). The official weights were trained with them: loading an
official checkpoint switches ``compat`` on (``set_compat``); ``compat=False`` is the method as the paper describes it.

Checkpoint conversion (mmcls ``{"meta", "state_dict", ...}``): ``backbone.`` is stripped, ``backbone.ln1.`` becomes
``norm.``, ``head.fc.`` becomes ``head.``, the ``ema_*`` buffers of the EMA hook are dropped (the saved parameters are
already the EMA weights), BN buffers are kept.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn
from torch.utils.checkpoint import checkpoint

from ssmkit.core.checkpoint import register_converter
from ssmkit.core.drop import DropPath
from ssmkit.core.mixers import MultiScanMamba
from ssmkit.vision.models._timm import (
    adapt_first_conv,
    check_image,
    check_size,
    check_state_dict,
    fit_head,
    register_vision_model,
    vision_cfg,
)

__all__ = ["PlainMamba", "checkpoint_filter_fn"]

STEM_WIDTH = 64
PATCH_SIZE = 16


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class ConvPatchEmbed(nn.Module):
    """PlainMamba's convolutional stem (total stride 16); keys ``stem.*``, ``convs.*``, ``projection.*``.

    Shapes:
        forward(x [B, C, H, W]) -> (tokens [B, h*w, D], (h, w)), h = ceil(ceil(H / 2) / 8) (the same for w).
    """

    def __init__(self, in_chans: int, embed_dim: int, num_convs: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn_relu(in_chans, STEM_WIDTH, 7, 2))
        layers = [m for _ in range(num_convs) for m in _conv_bn_relu(STEM_WIDTH, STEM_WIDTH, 3, 1)]
        self.convs = nn.Sequential(*layers) if layers else nn.Identity()
        step = PATCH_SIZE // 2
        self.projection = nn.Conv2d(STEM_WIDTH, embed_dim, kernel_size=step, stride=step)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.convs(self.stem(x))  # [B, 64, H/2, W/2]
        step = self.projection.stride[0]
        pad_h, pad_w = -x.shape[2] % step, -x.shape[3] % step
        x = self.projection(F.pad(x, (0, pad_w, 0, pad_h)))  # [B, D, h, w], mmcv "corner" padding
        return x.flatten(2).transpose(1, 2), (int(x.shape[2]), int(x.shape[3]))  # [B, h*w, D]


class PlainMambaLayer(nn.Module):
    """``x + drop_path(mamba(LayerNorm(x)))``, then (L1 layer 0 only) ``GELU(BN(DWConv3x3(x)))`` without residual."""

    def __init__(self, dim: int, d_state: int, expand: float, d_conv: int, drop_path: float, with_dwconv: bool,
                 compat: bool, backend: str) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.mamba = MultiScanMamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, direction_aware=True,
                                    combine="sum", bias=True, compat_plainmamba=compat, backend=backend)
        self.drop_path = DropPath(drop_path)
        self.dw = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False), nn.BatchNorm2d(dim),
                                nn.GELU()) if with_dwconv else None

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.mamba(self.norm(x), grid=grid))  # [B, L, D]
        if self.dw is not None:
            batch, seqlen, dim = x.shape
            x = self.dw(x.transpose(1, 2).reshape(batch, dim, *grid)).reshape(batch, dim, seqlen).transpose(1, 2)
        return x  # [B, L, D]


class PlainMamba(nn.Module):
    """PlainMamba: conv stem + absolute positions -> isotropic 4-direction Mamba layers -> mean-pooled feature.

    Args:
        img_size: training image size (int or (H, W)); the size of ``pos_embed``.
        in_chans: image channels.
        num_classes: classes of the head (0: no head).
        embed_dim: width D.
        depth: number of layers.
        num_stem_convs: 3x3 convs of the stem (L1: 1, L2/L3: 2).
        dwconv_layers: layers followed by the depthwise-conv unit (L1: (0,)).
        d_state, expand, d_conv: mixer sizes (16, 2, 7 in every released model).
        compat: reproduce the released code's quirks (see the module docstring).
        drop_rate: dropout after adding the position embedding.
        drop_path_rate: stochastic depth, ``linspace(0, rate, depth)[i]`` for layer i.
        global_pool: "avg" (PlainMamba's neck) only.
        dynamic_img_size: accept any image size (PlainMamba resizes ``pos_embed`` to any grid, so True by default).
        backend: scan backend of ``ssmkit.kernels.selective_scan``.

    Shapes:
        forward(x [B, in_chans, H, W]) -> [B, num_classes]; forward_features -> [B, h*w, D].
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 192, depth: int = 24, num_stem_convs: int = 1, dwconv_layers: tuple[int, ...] = (0,),
                 d_state: int = 16, expand: float = 2, d_conv: int = 7, compat: bool = False, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, global_pool: str = "avg", dynamic_img_size: bool = True,
                 backend: str = "auto") -> None:
        super().__init__()
        if global_pool != "avg":
            raise ValueError(f"PlainMamba: global_pool must be 'avg' (mean over tokens), found {global_pool!r}")
        self.img_size = tuple(to_2tuple(img_size))
        self.in_chans, self.num_classes, self.depth = in_chans, num_classes, depth
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.global_pool, self.dynamic_img_size, self.num_prefix_tokens = global_pool, bool(dynamic_img_size), 0
        self.grad_checkpointing = False
        self.patch_embed = ConvPatchEmbed(in_chans, embed_dim, num_stem_convs)
        self.grid_size = tuple(math.ceil(math.ceil(s / 2) / (PATCH_SIZE // 2)) for s in self.img_size)  # stem s2, pad
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.layers = nn.ModuleList(
            PlainMambaLayer(embed_dim, d_state, expand, d_conv, rates[i], i in dwconv_layers, compat, backend)
            for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """trunc_normal(0.02) positions and Linear weights with zero bias (mmcls init_cfg); dt_proj keeps Mamba's."""
        trunc_normal_(self.pos_embed, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.endswith("dt_proj"):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def extra_repr(self) -> str:
        return (f"img_size={self.img_size}, embed_dim={self.embed_dim}, depth={self.depth}, "
                f"num_classes={self.num_classes}, compat={self.compat}, dynamic_img_size={self.dynamic_img_size}")

    @property
    def compat(self) -> bool:
        """True when the layers reproduce the released code's quirks."""
        return bool(self.layers[0].mamba.compat_plainmamba)

    def set_compat(self, enable: bool = True) -> None:
        """Switch the released code's quirks (raster-order dt/B/C, double dt bias) on or off in every layer."""
        for layer in self.layers:
            layer.mamba.compat_plainmamba = bool(enable)

    def no_weight_decay(self) -> set[str]:
        """pos_embed and the mixers' A_log, D, direction_Bs (PlainMamba's paramwise_cfg)."""
        return {"pos_embed"} | {n for n, p in self.named_parameters() if getattr(p, "_no_weight_decay", False)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in backward instead of storing its activations."""
        self.grad_checkpointing = bool(enable)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0: identity)."""
        if global_pool is not None and global_pool != "avg":
            raise ValueError(f"PlainMamba: global_pool must be 'avg', found {global_pool!r}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> normalized tokens [B, h*w, D] in raster order."""
        size = check_image("PlainMamba", x, self.in_chans)
        check_size("PlainMamba", size, self.img_size, self.dynamic_img_size, (PATCH_SIZE // 2, PATCH_SIZE // 2))
        x, grid = self.patch_embed(x)  # [B, L, D]
        pos = resample_abs_pos_embed(self.pos_embed, list(grid), list(self.grid_size), num_prefix_tokens=0,
                                     antialias=False)  # [1, L, D], mmcls resize_pos_embed (bicubic)
        x = self.pos_drop(x + pos)  # [B, L, D]
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            x = checkpoint(layer, x, grid, use_reentrant=False) if use_checkpoint else layer(x, grid)  # [B, L, D]
        return self.norm(x)  # [B, L, D]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens [B, L, D] -> logits [B, num_classes] (or the mean feature [B, D] with ``pre_logits``)."""
        x = x.mean(dim=1)  # [B, D]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> logits [B, num_classes]."""
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict[str, Any], model: PlainMamba) -> dict[str, torch.Tensor]:
    """Convert an official mmcls PlainMamba checkpoint (or its ``state_dict``, or ours) to ``PlainMamba`` keys.

    An official checkpoint switches the model to ``compat`` mode (its weights were trained with the quirks).
    ``pos_embed`` of another grid is resized (bicubic) to the model's; the first conv is adapted to ``in_chans``; a
    classifier for another number of classes is replaced by the model's own. Raises a ValueError listing every
    mismatched key and shape (a checkpoint of another variant).
    """
    if "state_dict" in state_dict and not torch.is_tensor(state_dict["state_dict"]):
        state_dict = state_dict["state_dict"]
    official = any(k.startswith(("backbone.", "head.fc.")) for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.startswith("ema_"):
            continue  # the EMA hook's buffers: the raw (non-EMA) weights
        key = key[len("backbone."):] if key.startswith("backbone.") else key
        key = "norm." + key[len("ln1."):] if key.startswith("ln1.") else key
        key = "head." + key[len("head.fc."):] if key.startswith("head.fc.") else key
        out[key] = value
    pos = out.get("pos_embed")
    if pos is not None and pos.dim() == 3 and pos.shape[1] != model.pos_embed.shape[1]:
        side = int(round(pos.shape[1] ** 0.5))
        if side * side == pos.shape[1] and pos.shape[-1] == model.embed_dim:
            out["pos_embed"] = resample_abs_pos_embed(pos, list(model.grid_size), [side, side], num_prefix_tokens=0,
                                                      antialias=False)
    adapt_first_conv(out, model, "patch_embed.stem.0.weight")
    fit_head(out, model)
    check_state_dict(out, model, "PlainMamba checkpoint")
    if official:
        model.set_compat(True)
    return out


@register_converter("plainmamba")
def _convert_plainmamba(checkpoint: dict[str, Any], model: PlainMamba) -> dict[str, torch.Tensor]:
    """``ssmkit.create_model(name, pretrained=PATH)``: the same conversion as timm's."""
    return checkpoint_filter_fn(checkpoint, model)


def _cfg(filename: str, **kwargs: Any) -> dict[str, Any]:
    return vision_cfg("ChenhongyiYang/PlainMamba", filename, first_conv="patch_embed.stem.0",
                      paper_ids="arXiv:2403.17695", origin_url="https://github.com/ChenhongyiYang/PlainMamba",
                      **kwargs)


default_cfgs = generate_default_cfgs({
    "plainmamba_l1.in1k": _cfg("l1.pth"),
    "plainmamba_l2.in1k": _cfg("l2.pth"),
    "plainmamba_l3.in1k": _cfg("l3.pth"),
})

_TEST = {"embed_dim": 32, "depth": 2, "d_state": 4, "img_size": 32, "num_classes": 10}


def _create_plainmamba(variant: str, pretrained: bool = False, **kwargs: Any) -> PlainMamba:
    kwargs.setdefault("compat", bool(pretrained))  # official weights need the quirks
    return build_model_with_cfg(PlainMamba, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                pretrained_strict=True, **kwargs)


@register_vision_model(test_overrides=_TEST)
def plainmamba_l1(pretrained: bool = False, **kwargs: Any) -> PlainMamba:
    """PlainMamba-L1 (D 192, depth 24, 1 stem conv, DWConv after layer 0), IN-1k 77.9 top-1 (official)."""
    args = dict(embed_dim=192, depth=24, num_stem_convs=1, dwconv_layers=(0,))
    return _create_plainmamba("plainmamba_l1", pretrained, **dict(args, **kwargs))


@register_vision_model(test_overrides=_TEST)
def plainmamba_l2(pretrained: bool = False, **kwargs: Any) -> PlainMamba:
    """PlainMamba-L2 (D 384, depth 24, 2 stem convs), IN-1k 81.6 top-1 (official)."""
    args = dict(embed_dim=384, depth=24, num_stem_convs=2, dwconv_layers=())
    return _create_plainmamba("plainmamba_l2", pretrained, **dict(args, **kwargs))


@register_vision_model(test_overrides=_TEST)
def plainmamba_l3(pretrained: bool = False, **kwargs: Any) -> PlainMamba:
    """PlainMamba-L3 (D 448, depth 36, 2 stem convs), IN-1k 82.3 top-1 (official)."""
    args = dict(embed_dim=448, depth=36, num_stem_convs=2, dwconv_layers=())
    return _create_plainmamba("plainmamba_l3", pretrained, **dict(args, **kwargs))
