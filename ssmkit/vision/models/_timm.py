"""Shared timm glue of the vision models: both registries, pretrained cfgs, patch embedding, checkpoint checks.

- ``register_vision_model(test_overrides)``: registers a builder in timm's registry (``timm.create_model``; the
  builder's module must define ``default_cfgs`` first) AND in ssmkit's (``ssmkit.create_model``, domain "vision",
  tested by ``tests/test_models.py`` through ``image_example``).
- ``vision_cfg``: a timm pretrained cfg; hub ids and file names are recorded, ``url`` stays empty: nothing is ever
  downloaded by ssmkit.
- ``PatchEmbed``: a strided Conv2d patch embedding (timm's ``PatchEmbed`` has no overlap stride, which Vim's "+"
  models need) whose bad inputs raise ValueErrors that say how to fix them.
- ``check_image`` / ``check_state_dict`` / ``fit_head`` / ``adapt_first_conv``: input and checkpoint checks shared by
  the families' ``checkpoint_filter_fn``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import adapt_input_conv
from timm.models import register_model as timm_register_model
from torch import nn

from ssmkit.core.checkpoint import LoadReport
from ssmkit.core.registry import register_model

_log = logging.getLogger(__name__)


def vision_cfg(hf_hub_id: str | None = None, hf_hub_filename: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """timm pretrained cfg of an ImageNet-1k classifier (224 px, bicubic, crop 0.875, ImageNet mean/std).

    Args:
        hf_hub_id: Hugging Face repository of the official weights (recorded, never fetched by ssmkit).
        hf_hub_filename: file name of the official weights in that repository.
        **kwargs: other ``timm.models.PretrainedCfg`` fields (``first_conv``, ``paper_ids``, ``notes``, ...).

    Returns:
        The cfg dict for ``timm.models.generate_default_cfgs``.
    """
    cfg = {"url": "", "hf_hub_id": hf_hub_id, "hf_hub_filename": hf_hub_filename, "num_classes": 1000,
           "input_size": (3, 224, 224), "pool_size": None, "crop_pct": 0.875, "interpolation": "bicubic",
           "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "classifier": "head"}
    cfg.update(kwargs)
    return cfg


def image_example(model: nn.Module, batch_size: int) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
    """``example_input`` of every vision model: images [B, in_chans, H, W] at the model's img_size -> logits."""
    height, width = model.img_size
    x = torch.randn(batch_size, model.in_chans, height, width)  # [B, C, H, W]
    return {"x": x}, (batch_size, model.num_classes)


def register_vision_model(test_overrides: dict[str, Any]) -> Callable[[Callable[..., nn.Module]], Callable]:
    """Register a builder ``fn(pretrained=False, **kwargs)`` in timm's and in ssmkit's registries.

    Args:
        test_overrides: builder kwargs of the tiny instance that ``tests/test_models.py`` builds (the defaults stay
            the paper's).
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        register_model(domain="vision", example_input=image_example, test_overrides=test_overrides)(fn)
        return timm_register_model(fn)

    return decorator


def check_image(owner: str, x: Any, in_chans: int) -> tuple[int, int]:
    """Raise a clear TypeError/ValueError unless ``x`` is a floating [B, in_chans, H, W] tensor; return (H, W)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: x must be a torch.Tensor [B, {in_chans}, H, W], found {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: x must have a floating dtype (normalized images), found {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"{owner}: x must have shape [B, {in_chans}, H, W] (rank 4), found {list(x.shape)}")
    if x.shape[1] != in_chans:
        raise ValueError(f"{owner}: x must have in_chans={in_chans} channels, found {x.shape[1]} (shape "
                         f"{list(x.shape)}); build the model with in_chans={x.shape[1]} to take such images")
    return int(x.shape[2]), int(x.shape[3])


def check_size(owner: str, size: tuple[int, int], img_size: tuple[int, int], dynamic_img_size: bool,
               min_size: tuple[int, int]) -> None:
    """Refuse an image size that the model cannot take, saying how to enable other sizes."""
    if not dynamic_img_size and tuple(size) != tuple(img_size):
        raise ValueError(f"{owner}: image size must be {img_size[0]}x{img_size[1]} (img_size), found "
                         f"{size[0]}x{size[1]}; pass dynamic_img_size=True (or img_size=({size[0]}, {size[1]})) "
                         f"when creating the model to take other sizes")
    if size[0] < min_size[0] or size[1] < min_size[1]:
        raise ValueError(f"{owner}: image size must be at least {min_size[0]}x{min_size[1]}, found "
                         f"{size[0]}x{size[1]}")


class PatchEmbed(nn.Module):
    """Image to tokens with one Conv2d (kernel ``patch_size``, stride ``stride``; overlapping when stride < patch).

    Args:
        img_size: default image size (int or (H, W)); with ``dynamic_img_size=False`` the only accepted size.
        patch_size: conv kernel size.
        stride: conv stride (Vim's "+" models use 8 with patch 16).
        in_chans: image channels.
        embed_dim: token width D.
        dynamic_img_size: accept any size of at least one patch.

    Shapes:
        forward(x [B, in_chans, H, W]) -> (tokens [B, M, D], grid (gh, gw)), M = gh * gw,
        g = (size - patch) // stride + 1.
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, stride: int = 16,
                 in_chans: int = 3, embed_dim: int = 192, dynamic_img_size: bool = False) -> None:
        super().__init__()
        self.img_size = tuple(to_2tuple(img_size))
        self.patch_size = tuple(to_2tuple(patch_size))
        self.stride = tuple(to_2tuple(stride))
        for name, value in (("img_size", self.img_size), ("patch_size", self.patch_size), ("stride", self.stride)):
            if not all(isinstance(v, int) and v >= 1 for v in value):
                raise ValueError(f"PatchEmbed: {name} must hold positive ints, found {value!r}")
        if self.img_size[0] < self.patch_size[0] or self.img_size[1] < self.patch_size[1]:
            raise ValueError(f"PatchEmbed: img_size must be at least patch_size={self.patch_size}, "
                             f"found {self.img_size}")
        self.in_chans = in_chans
        self.dynamic_img_size = bool(dynamic_img_size)
        self.grid_size = self.grid_for(self.img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.stride)

    def grid_for(self, size: tuple[int, int]) -> tuple[int, int]:
        """Token grid (gh, gw) of an image of ``size`` (H, W)."""
        return tuple((s - p) // st + 1 for s, p, st in zip(size, self.patch_size, self.stride))

    def forward(self, x: torch.Tensor, owner: str = "PatchEmbed") -> tuple[torch.Tensor, tuple[int, int]]:
        """Embed patches; ``owner`` names the model in error messages."""
        size = check_image(owner, x, self.in_chans)
        check_size(owner, size, self.img_size, self.dynamic_img_size, self.patch_size)
        x = self.proj(x)  # [B, D, gh, gw]
        grid = (int(x.shape[2]), int(x.shape[3]))
        return x.flatten(2).transpose(1, 2), grid  # [B, M, D]


def fit_head(state_dict: dict[str, torch.Tensor], model: nn.Module, head: str = "head") -> None:
    """Keep the model's own (fresh) classifier where the checkpoint's has another number of classes; in place."""
    own = model.state_dict()
    for suffix in ("weight", "bias"):
        key = f"{head}.{suffix}"
        if key in state_dict and (key not in own or own[key].shape != state_dict[key].shape):
            if key in own:
                state_dict[key] = own[key]
            else:
                del state_dict[key]
            _log.info("checkpoint classifier %s does not fit num_classes=%s: the model keeps its own", key,
                      getattr(model, "num_classes", "?"))


def adapt_first_conv(state_dict: dict[str, torch.Tensor], model: nn.Module, key: str) -> None:
    """Adapt an RGB first-conv weight to the model's ``in_chans`` (timm's ``adapt_input_conv``); in place."""
    own = model.state_dict().get(key)
    weight = state_dict.get(key)
    if own is None or weight is None or weight.dim() != 4 or own.shape == weight.shape:
        return
    if own.shape[0] == weight.shape[0] and own.shape[2:] == weight.shape[2:]:
        state_dict[key] = adapt_input_conv(own.shape[1], weight, base_chans=weight.shape[1])


def check_state_dict(state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str) -> None:
    """Raise a ValueError naming every missing, unexpected and mis-shaped key unless ``state_dict`` fits ``model``.

    Args:
        state_dict: the converted checkpoint.
        model: the target model.
        source: what the state_dict came from (used in the message).
    """
    own = model.state_dict()
    report = LoadReport(
        missing=[k for k in own if k not in state_dict],
        unexpected=[k for k in state_dict if k not in own],
        mismatched=[(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                    if k in own and v.shape != own[k].shape],
    )
    if not report.ok:
        raise ValueError(f"{source} does not fit {type(model).__name__}({model.extra_repr()}); a checkpoint of "
                         f"another variant? Create the model that matches it.\n{report.describe()}")
