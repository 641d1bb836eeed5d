"""timm integration of every vision model: both registries, pretrained cfgs, timm's kwargs and model API, errors."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
from timm.models import get_pretrained_cfg

import ssmkit
import ssmkit.vision  # noqa: F401  (registers the models in timm)
from ssmkit.core.drop import DropPath

VIM = ["vim_tiny_patch16_224", "vim_tiny_patch16_stride8_224", "vim_small_patch16_224",
       "vim_small_patch16_stride8_224", "vim_base_patch16_224"]
PLAINMAMBA = ["plainmamba_l1", "plainmamba_l2", "plainmamba_l3"]
LIGHTNET = ["lightnet_tiny", "lightnet_small"]
NAMES = VIM + PLAINMAMBA + LIGHTNET
TINY = {"vim": dict(embed_dim=32, depth=2, d_state=4), "plainmamba": dict(embed_dim=32, depth=2, d_state=4),
        "lightnet": dict(embed_dim=32, depth=2, num_heads=2)}

# (hub id, file) of the official weights, from reference/vision.md 1.5 and 2.5
OFFICIAL_FILES = {
    "vim_tiny_patch16_224": ("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth"),
    "vim_tiny_patch16_stride8_224": ("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_ft_78p3acc.pth"),
    "vim_small_patch16_224": ("hustvl/Vim-small-midclstok", "vim_s_midclstok_80p5acc.pth"),
    "vim_small_patch16_stride8_224": ("hustvl/Vim-small-midclstok", "vim_s_midclstok_ft_81p6acc.pth"),
    "vim_base_patch16_224": ("hustvl/Vim-base-midclstok", "vim_b_midclstok_81p9acc.pth"),
    "plainmamba_l1": ("ChenhongyiYang/PlainMamba", "l1.pth"),
    "plainmamba_l2": ("ChenhongyiYang/PlainMamba", "l2.pth"),
    "plainmamba_l3": ("ChenhongyiYang/PlainMamba", "l3.pth"),
}


def _tiny(name: str) -> dict:
    return TINY[name.split("_")[0]]


def test_every_model_is_in_both_registries():
    assert sorted(NAMES) == ssmkit.list_models(domain="vision")
    assert set(NAMES) <= set(timm.list_models())
    assert set(timm.list_models(pretrained=True)) >= {f"{n}.in1k" for n in OFFICIAL_FILES}


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_cfg_records_the_official_weights_and_never_a_url(name):
    cfg = get_pretrained_cfg(name)
    assert cfg.url == "" and cfg.file is None
    assert (cfg.hf_hub_id, cfg.hf_hub_filename) == OFFICIAL_FILES.get(name, (None, None))
    assert cfg.input_size == (3, 224, 224) and cfg.num_classes == 1000 and cfg.classifier == "head"
    assert cfg.first_conv is not None


def test_paper_defaults_stay_in_the_builders():
    vim_s8 = timm.create_model("vim_tiny_patch16_stride8_224", depth=1)  # depth only shortens the build
    assert vim_s8.pos_embed.shape == (1, 27 * 27 + 1, 192) and vim_s8.patch_embed.stride == (8, 8)
    l3 = timm.create_model("plainmamba_l3", depth=1)
    assert l3.embed_dim == 448 and l3.pos_embed.shape == (1, 196, 448) and len(l3.patch_embed.convs) == 6
    assert timm.create_model("lightnet_small", depth=1).num_heads == 6


@pytest.mark.parametrize("name", NAMES)
def test_timm_kwargs_and_model_api(name):
    model = timm.create_model(name, num_classes=5, in_chans=1, img_size=48, dynamic_img_size=True,
                              drop_path_rate=0.1, **_tiny(name))
    assert max(m.p for m in model.modules() if isinstance(m, DropPath)) == pytest.approx(0.1)
    x = torch.randn(2, 1, 48, 64)  # dynamic size: not the img_size
    model.eval()
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.dim() == 3 and tokens.shape[-1] == model.num_features == 32
        assert model.forward_head(tokens, pre_logits=True).shape == (2, 32)
        assert model(x).shape == (2, 5)
        model.reset_classifier(7)
        assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
        model.reset_classifier(0)
        assert model(x).shape == (2, 32)


@pytest.mark.parametrize("name", ["vim_tiny_patch16_224", "plainmamba_l1", "lightnet_tiny"])
def test_fixed_size_and_channel_errors_name_the_fix(name):
    model = timm.create_model(name, img_size=32, dynamic_img_size=False, **_tiny(name))
    with pytest.raises(ValueError, match=r"image size must be 32x32 \(img_size\), found 64x32; pass "
                                         r"dynamic_img_size=True \(or img_size=\(64, 32\)\)"):
        model(torch.randn(1, 3, 64, 32))
    with pytest.raises(ValueError, match=r"x must have in_chans=3 channels, found 2"):
        model(torch.randn(1, 2, 32, 32))
    with pytest.raises(TypeError, match="floating dtype"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_pretrained_rgb_stem_is_adapted_to_other_channel_counts(tmp_path):
    """timm's convention: a 1-channel model gets the sum of the RGB filters (adapt_input_conv)."""
    source = timm.create_model("vim_tiny_patch16_224", img_size=32, **TINY["vim"])
    official = {k.replace("backbone.", ""): v for k, v in source.state_dict().items()}
    path = tmp_path / "vim_t_midclstok_76p1acc.pth"
    torch.save({"model": official, "model_ema": official, "args": argparse.Namespace(if_devide_out=True)}, path)
    gray = timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)),
                             in_chans=1, img_size=32, **TINY["vim"])
    torch.testing.assert_close(gray.patch_embed.proj.weight, source.patch_embed.proj.weight.sum(1, keepdim=True))
    torch.testing.assert_close(gray.pos_embed, source.pos_embed)
