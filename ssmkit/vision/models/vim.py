"""Vision Mamba (Vim): Zhu et al., "Vision Mamba: Efficient Visual Representation Learning with Bidirectional State
Space Model", ICML 2024 (arXiv 2401.09417). Faithful to hustvl/Vim ``vim/models_mamba.py`` (bimamba v2, middle class
token, div-by-2) and loads its released ``vim_*_midclstok_*.pth`` files.

Forward (M patches, D = embed_dim)::

    x = patch_embed(img)                              # Conv2d(k=16, stride 16 or 8) -> [B, M, D]
    x = cat(x[:, :M//2], cls_token, x[:, M//2:])      # the class token sits in the MIDDLE, at M // 2
    x = x + pos_embed                                 # [1, M + 1, D]: pos_embed[:, M//2] belongs to the class token
    x = backbone(x)                                   # 24 x (Add -> RMSNorm -> BiMamba v2), fp32 residual, norm_f
    logits = head(x[:, M//2])                         # the class-token feature

``core.BiMamba`` (``if_divide_out=True``) is Vim's bimamba v2 mixer: shared in_proj / out_proj, a forward and a
backward branch (``reverse=`` scan, no flipped copies), the mean of the two. ``core.Backbone`` is Vim's "Add -> Norm
-> Mixer" stack with the residual in fp32 and the final ``norm_f(residual + drop_path(hidden))``.

Official checkpoints (``{"model", "model_ema", "optimizer", "args": argparse.Namespace, ...}``): ``model`` is loaded
(what the official evaluation uses); ``model_ema`` only on request (``load_pretrained(path, use_ema=True)`` or
``checkpoint_filter_fn(..., use_ema=True)``). Key names are the official ones except that ``layers.*`` and
``norm_f.*`` live under ``backbone.``. Vim's base factory passes the misspelt ``if_devide_out=True``, which Vim's
``**kwargs`` swallows; its class default ``if_divide_out=True`` applies to every variant, as here.

Other sizes: the official PatchEmbed asserts the training size. ``dynamic_img_size=True`` resamples ``pos_embed``
on the fly, class-token aware (the class slot at old M//2 is kept aside, the M patch slots are resampled as a grid,
the class slot is re-inserted at new M'//2; Vim's own fine-tuning resize wrongly treats slot 0 as the class token).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.layers import lecun_normal_, resample_abs_pos_embed, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs
from torch import nn

from ssmkit.core.block import Backbone
from ssmkit.core.checkpoint import read_checkpoint, register_converter
from ssmkit.core.mixers import BiMamba
from ssmkit.vision.models._timm import (
    PatchEmbed,
    adapt_first_conv,
    check_state_dict,
    fit_head,
    register_vision_model,
    vision_cfg,
)

__all__ = ["VisionMamba", "checkpoint_filter_fn", "resample_vim_pos_embed"]


def resample_vim_pos_embed(pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int],
                           interpolation: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    """Resample a middle-class-token position embedding [1, M + 1, D] to another patch grid.

    Args:
        pos_embed: [1, M + 1, D], M = old_grid[0] * old_grid[1]; slot M // 2 is the class token's.
        new_grid: target grid (gh', gw').
        old_grid: grid of ``pos_embed``.
        interpolation, antialias: passed to ``timm.layers.resample_abs_pos_embed``.

    Returns:
        [1, M' + 1, D] with the class slot at M' // 2.
    """
    old_m, new_m = old_grid[0] * old_grid[1], new_grid[0] * new_grid[1]
    if pos_embed.shape[1] != old_m + 1:
        raise ValueError(f"resample_vim_pos_embed: pos_embed must have {old_m + 1} slots for grid {old_grid}, "
                         f"found shape {list(pos_embed.shape)}")
    if tuple(new_grid) == tuple(old_grid):
        return pos_embed
    mid = old_m // 2
    cls_pos = pos_embed[:, mid:mid + 1]  # [1, 1, D]
    patches = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1)  # [1, M, D]
    patches = resample_abs_pos_embed(patches, list(new_grid), list(old_grid), num_prefix_tokens=0,
                                     interpolation=interpolation, antialias=antialias)  # [1, M', D]
    return torch.cat([patches[:, :new_m // 2], cls_pos, patches[:, new_m // 2:]], dim=1)  # [1, M' + 1, D]


class VisionMamba(nn.Module):
    """Vim: patch tokens + middle class token + absolute positions -> bidirectional Mamba stack -> class feature.

    Args:
        img_size: training image size (int or (H, W)); the size of ``pos_embed``.
        patch_size: patch (conv kernel) size.
        stride: patch stride (16; 8 for the fine-tuned "+" models, 27 x 27 patches at 224 px).
        in_chans: image channels.
        num_classes: classes of the head (0: no head, ``forward`` returns features).
        embed_dim: width D.
        depth: number of layers.
        d_state: SSM state size N.
        expand: mixer inner width factor.
        drop_rate: dropout after adding the position embedding.
        drop_path_rate: stochastic depth (Vim's schedule, see ``core.Backbone``).
        global_pool: "token" (the middle class token, Vim) or "avg" (mean of all tokens).
        dynamic_img_size: accept any image size, resampling ``pos_embed`` on the fly.
        backend: scan backend of ``ssmkit.kernels.selective_scan``.

    Shapes:
        forward(x [B, in_chans, H, W]) -> [B, num_classes]; forward_features -> [B, M + 1, D].
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int = 16, stride: int = 16,
                 in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 192, depth: int = 24,
                 d_state: int = 16, expand: float = 2, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 global_pool: str = "token", dynamic_img_size: bool = False, backend: str = "auto") -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"VisionMamba: global_pool must be 'token' or 'avg', found {global_pool!r}")
        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim, dynamic_img_size)
        self.img_size, self.in_chans, self.num_classes = self.patch_embed.img_size, in_chans, num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.depth, self.global_pool, self.dynamic_img_size = depth, global_pool, bool(dynamic_img_size)
        self.num_prefix_tokens = 0  # the class token is in the middle, not a prefix
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        self.backbone = Backbone(
            embed_dim, depth,
            mixer_factory=lambda i: BiMamba(embed_dim, d_state=d_state, expand=expand, if_divide_out=True,
                                            layer_idx=i, backend=backend),
            norm="rms", norm_eps=1e-5, drop_path=drop_path_rate, residual_in_fp32=True)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        """Vim's init: segm_init_weights, trunc_normal tokens, zeroed Linear biases, scaled out_proj."""
        lecun_normal_(self.patch_embed.proj.weight)
        nn.init.zeros_(self.patch_embed.proj.bias)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                if not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)  # includes dt_proj_b.bias: Vim gives it no dt init
        for layer in self.backbone.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            with torch.no_grad():
                layer.mixer.out_proj.weight /= math.sqrt(self.depth)
        if isinstance(self.head, nn.Linear):
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def extra_repr(self) -> str:
        return (f"img_size={self.img_size}, stride={self.patch_embed.stride[0]}, embed_dim={self.embed_dim}, "
                f"depth={self.depth}, num_classes={self.num_classes}, dynamic_img_size={self.dynamic_img_size}")

    def no_weight_decay(self) -> set[str]:
        """Parameters Vim trains without weight decay (A_log, D, A_b_log, D_b carry ``_no_weight_decay``)."""
        return {"pos_embed", "cls_token"} | {n for n, p in self.named_parameters()
                                             if getattr(p, "_no_weight_decay", False)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer in backward (``core.Backbone``)."""
        self.backbone.set_grad_checkpointing(enable)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0: identity); optionally change the pooling."""
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"VisionMamba: global_pool must be 'token' or 'avg', found {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """[1, M + 1, D] for the patch grid of this input (resampled when it is not the training grid)."""
        return resample_vim_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> normalized tokens [B, M + 1, D], the class token at index M // 2."""
        x, grid = self.patch_embed(x, owner="VisionMamba")  # [B, M, D]
        batch, num_patches, _ = x.shape
        mid = num_patches // 2
        cls = self.cls_token.expand(batch, -1, -1)  # [B, 1, D]
        x = torch.cat([x[:, :mid], cls, x[:, mid:]], dim=1)  # [B, M + 1, D]
        x = self.pos_drop(x + self._pos_embed(grid))  # [B, M + 1, D]
        return self.backbone(x)  # [B, M + 1, D]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens [B, M + 1, D] -> logits [B, num_classes] (or the pooled feature [B, D] with ``pre_logits``)."""
        x = x[:, (x.shape[1] - 1) // 2] if self.global_pool == "token" else x.mean(dim=1)  # [B, D]
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> logits [B, num_classes]."""
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, path: str, use_ema: bool = False) -> None:
        """Load an official Vim checkpoint file (timm's ``custom_load`` hook; ``model`` unless ``use_ema``)."""
        state_dict = checkpoint_filter_fn(read_checkpoint(path), self, use_ema=use_ema)
        self.load_state_dict(state_dict, strict=True)


def _select(checkpoint: dict[str, Any], use_ema: bool) -> dict[str, torch.Tensor]:
    """The state_dict of an official file: ``model`` (or ``model_ema`` on request); a flat dict as is."""
    key = "model_ema" if use_ema else "model"
    if key in checkpoint:
        return dict(checkpoint[key])
    if use_ema or any(k in checkpoint for k in ("model_ema", "optimizer", "args")):
        raise ValueError(f"Vim checkpoint: entry {key!r} not found; top-level keys: {sorted(map(str, checkpoint))}")
    return dict(checkpoint)


def checkpoint_filter_fn(state_dict: dict[str, Any], model: VisionMamba, use_ema: bool = False
                         ) -> dict[str, torch.Tensor]:
    """Convert an official Vim checkpoint (or its ``model`` state_dict, or ours) to ``VisionMamba`` keys.

    ``layers.*`` / ``norm_f.*`` move under ``backbone.``; ``pos_embed`` is resampled (class-token aware) to the
    model's grid; the first conv is adapted to ``in_chans``; a classifier for another number of classes is replaced by
    the model's own. Raises a ValueError listing every mismatched key and shape (a checkpoint of another variant), or
    naming the stride when the file's ``args.model`` is a stride-8 "+" model and the model is not (or vice versa).
    """
    trained_as = getattr(state_dict.get("args"), "model", None)  # the official args Namespace names the variant
    if isinstance(trained_as, str) and trained_as.startswith("vim_"):
        stride = 8 if "stride8" in trained_as else 16
        if stride != model.patch_embed.stride[0]:
            raise ValueError(f"Vim checkpoint: trained as {trained_as!r} (patch stride {stride}), the model has "
                             f"stride {model.patch_embed.stride[0]}; create the matching variant "
                             f"(vim_*_patch16_stride8_224 for the '+' models)")
    out = {}
    for key, value in _select(state_dict, use_ema).items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(("layers.", "norm_f.")):
            key = "backbone." + key
        out[key] = value
    pos = out.get("pos_embed")
    if pos is not None and pos.dim() == 3 and pos.shape[-1] == model.embed_dim:
        if pos.shape[1] != model.pos_embed.shape[1]:
            side = math.isqrt(pos.shape[1] - 1)
            if side * side == pos.shape[1] - 1:
                out["pos_embed"] = resample_vim_pos_embed(pos, model.patch_embed.grid_size, (side, side))
    adapt_first_conv(out, model, "patch_embed.proj.weight")
    fit_head(out, model)
    check_state_dict(out, model, "Vim checkpoint")
    return out


@register_converter("vim")
def _convert_vim(checkpoint: dict[str, Any], model: VisionMamba) -> dict[str, torch.Tensor]:
    """``ssmkit.create_model(name, pretrained=PATH)``: the same conversion as timm's (``model`` entry)."""
    return checkpoint_filter_fn(checkpoint, model)


def _cfg(hf_hub_id: str, filename: str, **kwargs: Any) -> dict[str, Any]:
    return vision_cfg(hf_hub_id, filename, custom_load=True, first_conv="patch_embed.proj",
                      paper_ids="arXiv:2401.09417", origin_url="https://github.com/hustvl/Vim", license="apache-2.0",
                      **kwargs)


default_cfgs = generate_default_cfgs({
    "vim_tiny_patch16_224.in1k": _cfg("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_patch16_stride8_224.in1k": _cfg("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_patch16_224.in1k": _cfg("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth"),
    "vim_small_patch16_stride8_224.in1k": _cfg("hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth"),
    "vim_base_patch16_224.in1k": _cfg("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth"),
})

_TEST = {"embed_dim": 32, "depth": 2, "d_state": 4, "img_size": 32, "num_classes": 10}


def _create_vim(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """timm builder. A local file (``pretrained_cfg_overlay=dict(file=PATH)``) is read here, through
    ``load_pretrained``: timm's own file loader would take ``model_ema`` where the official evaluation uses ``model``.
    """
    local_file = (kwargs.get("pretrained_cfg_overlay") or {}).get("file")
    model = build_model_with_cfg(VisionMamba, variant, pretrained and not local_file,
                                 pretrained_filter_fn=checkpoint_filter_fn, pretrained_strict=True, **kwargs)
    if pretrained and local_file:
        model.load_pretrained(local_file)
    return model


@register_vision_model(test_overrides=_TEST)
def vim_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-Ti (D 192, depth 24, 14 x 14 patches), IN-1k 76.1 top-1 (official)."""
    return _create_vim("vim_tiny_patch16_224", pretrained, **dict(dict(embed_dim=192, depth=24), **kwargs))


@register_vision_model(test_overrides=_TEST)
def vim_tiny_patch16_stride8_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-Ti+ (stride-8 fine-tuned, 27 x 27 patches), IN-1k 78.3 top-1 (official)."""
    args = dict(embed_dim=192, depth=24, stride=8)
    return _create_vim("vim_tiny_patch16_stride8_224", pretrained, **dict(args, **kwargs))


@register_vision_model(test_overrides=_TEST)
def vim_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-S (D 384, depth 24), IN-1k 80.5 top-1 (official)."""
    return _create_vim("vim_small_patch16_224", pretrained, **dict(dict(embed_dim=384, depth=24), **kwargs))


@register_vision_model(test_overrides=_TEST)
def vim_small_patch16_stride8_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-S+ (stride-8 fine-tuned), IN-1k 81.6 top-1 (official)."""
    args = dict(embed_dim=384, depth=24, stride=8)
    return _create_vim("vim_small_patch16_stride8_224", pretrained, **dict(args, **kwargs))


@register_vision_model(test_overrides=_TEST)
def vim_base_patch16_224(pretrained: bool = False, **kwargs: Any) -> VisionMamba:
    """Vim-B (D 768, depth 24), IN-1k 81.9 top-1 (official)."""
    return _create_vim("vim_base_patch16_224", pretrained, **dict(dict(embed_dim=768, depth=24), **kwargs))
