"""Vim loads official hustvl/Vim checkpoint files and gives the official logits (independent reference).

The reference below follows hustvl/Vim ``vim/models_mamba.py`` (PatchEmbed, middle class token at M // 2, pos_embed
added after insertion, fused Add -> RMSNorm -> mixer with the residual in fp32, final norm_f, class-token feature) and
the vendored mamba-1p1p1 ``Mamba`` with ``bimamba_type="v2"``, ``if_divide_out=True`` (shared in_proj / out_proj, the
backward branch on ``xz.flip(-1)``, flipped back, mean of the two) written from the official parameter names; the
mixer directions use the mamba_ssm reference of ``tests/core/test_mamba.py`` (plain loop scan, no ssmkit code).
"""

from __future__ import annotations

import argparse
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import ssmkit
import ssmkit.vision  # noqa: F401  (registers the models in timm)
from ssmkit.vision.models.vim import VisionMamba, resample_vim_pos_embed
from tests.core.test_mamba import official_mamba_shapes, random_state_dict, ref_direction, ref_in_proj, ref_out_proj
from tests.kernels.scan_testing import assert_close

D, DEPTH, N, CLASSES, IMG = 32, 2, 4, 10, 32
CFG = dict(embed_dim=D, depth=DEPTH, d_state=N, img_size=IMG, num_classes=CLASSES)
TOL = 1e-4


def official_vim_state_dict(seed: int, stride: int = 16, dim: int = D, img: int = IMG) -> dict[str, torch.Tensor]:
    """Random tensors under hustvl/Vim's key names and shapes (bimamba v2, middle class token)."""
    grid = (img - 16) // stride + 1
    mixer = official_mamba_shapes(dim, N, 4, 2, math.ceil(dim / 16), bias=False)
    mixer.update({k.replace("conv1d", "conv1d_b").replace("x_proj", "x_proj_b").replace("dt_proj", "dt_proj_b"): v
                  for k, v in mixer.items() if k.startswith(("conv1d", "x_proj", "dt_proj"))})
    mixer.update({"A_b_log": mixer["A_log"], "D_b": mixer["D"]})
    sd = {"cls_token": torch.randn(1, 1, dim) * 0.5, "pos_embed": torch.randn(1, grid * grid + 1, dim) * 0.5,
          "patch_embed.proj.weight": torch.randn(dim, 3, 16, 16) / 16 / math.sqrt(3),
          "patch_embed.proj.bias": 0.1 * torch.randn(dim), "head.weight": torch.randn(CLASSES, dim) / math.sqrt(dim),
          "head.bias": 0.1 * torch.randn(CLASSES), "norm_f.weight": 1 + 0.2 * torch.randn(dim)}
    for i in range(DEPTH):
        sd.update({f"layers.{i}.mixer.{k}": v for k, v in random_state_dict(mixer, seed + i).items()})
        sd[f"layers.{i}.norm.weight"] = 1 + 0.2 * torch.randn(dim)
    return sd


def save_official(path, model_sd, ema_sd, stride: int = 16) -> None:
    """The container of hustvl/Vim ``main.py``: model, model_ema, optimizer, epoch and an argparse Namespace."""
    name = f"vim_tiny_patch16{'_stride8' if stride == 8 else ''}_224_bimambav2_final_pool_mean_abs_pos_embed_with_" \
           "midclstok_div2"
    args = argparse.Namespace(model=name, if_devide_out=True, drop_path=0.0, input_size=IMG)
    torch.save({"model": model_sd, "model_ema": ema_sd, "optimizer": {"state": {}, "param_groups": []},
                "epoch": 299, "args": args}, path)


def _rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def ref_vim(sd, img, stride=16):
    """hustvl/Vim VisionMamba.forward (eval) from an official state_dict."""
    x = F.conv2d(img, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=stride)
    x = x.flatten(2).transpose(1, 2)  # B, M, D
    batch, m, _ = x.shape
    pos = m // 2
    x = torch.cat([x[:, :pos], sd["cls_token"].expand(batch, -1, -1), x[:, pos:]], dim=1) + sd["pos_embed"]
    residual, hidden = None, x
    for i in range(DEPTH):
        p = f"layers.{i}.mixer."
        mx = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
        residual = hidden if residual is None else residual + hidden
        xz = ref_in_proj(mx, _rms_norm(residual, sd[f"layers.{i}.norm.weight"]))  # b, 2e, l
        y_f = ref_direction(xz, mx["conv1d.weight"], mx["conv1d.bias"], mx["x_proj.weight"], mx["dt_proj.weight"],
                            mx["dt_proj.bias"], mx["A_log"], mx["D"])
        y_b = ref_direction(xz.flip(-1), mx["conv1d_b.weight"], mx["conv1d_b.bias"], mx["x_proj_b.weight"],
                            mx["dt_proj_b.weight"], mx["dt_proj_b.bias"], mx["A_b_log"], mx["D_b"])
        hidden = ref_out_proj(mx, (y_f + y_b.flip(-1)) / 2)
    feats = _rms_norm(residual + hidden, sd["norm_f.weight"])
    return feats[:, pos] @ sd["head.weight"].T + sd["head.bias"]


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    sd, ema = official_vim_state_dict(0), official_vim_state_dict(100)
    path = tmp_path_factory.mktemp("vim") / "vim_t_midclstok_76p1acc.pth"
    save_official(path, sd, ema)
    return path, sd, ema


def test_parameter_names_and_shapes_are_official():
    model = VisionMamba(**CFG)
    ours = {k.replace("backbone.", ""): tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in official_vim_state_dict(0).items()}


def test_timm_and_ssmkit_load_the_official_file_and_give_the_official_logits(official_file):
    path, sd, ema = official_file
    img = torch.randn(2, 3, IMG, IMG)
    ref = ref_vim(sd, img)
    via_timm = timm.create_model("vim_tiny_patch16_224", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path), num_classes=CLASSES), **CFG).eval()
    via_ssmkit = ssmkit.create_model("vim_tiny_patch16_224", pretrained=path, **CFG).eval()
    with torch.no_grad():
        assert_close("timm logits", ref, via_timm(img), TOL)
        assert_close("ssmkit logits", ref, via_ssmkit(img), TOL)
        assert (via_timm(img) - ref_vim(ema, img)).abs().max() > 1e-2, "model_ema was loaded instead of model"


def test_model_ema_only_on_request(official_file):
    path, _, ema = official_file
    model = VisionMamba(**CFG).eval()
    model.load_pretrained(str(path), use_ema=True)
    img = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert_close("EMA logits", ref_vim(ema, img), model(img), TOL)


def test_stride8_plus_model_loads_its_730_style_checkpoint(tmp_path):
    sd = official_vim_state_dict(1, stride=8)
    assert sd["pos_embed"].shape[1] == 3 * 3 + 1  # (32 - 16) // 8 + 1 = 3 patches per side (27 at 224 px)
    path = tmp_path / "vim_t_midclstok_ft_78p3acc.pth"
    save_official(path, sd, sd, stride=8)
    model = timm.create_model("vim_tiny_patch16_stride8_224", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)), **CFG).eval()
    img = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert_close("stride-8 logits", ref_vim(sd, img, stride=8), model(img), TOL)
    with pytest.raises(ValueError, match=r"\(patch stride 8\), the model has stride 16; create the matching variant"):
        ssmkit.create_model("vim_tiny_patch16_224", pretrained=path, **CFG)  # its pos_embed alone would resample


def _ref_resize(pos_embed, old, new):
    """Class slot at old M//2 kept aside, patch slots resampled as a grid (bicubic, antialias), slot re-inserted."""
    mid = old * old // 2
    grid = torch.cat([pos_embed[:, :mid], pos_embed[:, mid + 1:]], dim=1).reshape(1, old, old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new * new, -1)
    return torch.cat([grid[:, :new * new // 2], pos_embed[:, mid:mid + 1], grid[:, new * new // 2:]], dim=1)


def test_dynamic_img_size_resamples_pos_embed_around_the_middle_class_token(official_file):
    path, sd, _ = official_file
    model = ssmkit.create_model("vim_tiny_patch16_224", pretrained=path, dynamic_img_size=True, **CFG).eval()
    img = torch.randn(2, 3, 48, 48)  # 3 x 3 patches instead of 2 x 2
    resized = dict(sd, pos_embed=_ref_resize(sd["pos_embed"], 2, 3))
    with torch.no_grad():
        assert_close("dynamic-size logits", ref_vim(resized, img), model(img), TOL)
    out = resample_vim_pos_embed(sd["pos_embed"], (3, 3), (2, 2))
    torch.testing.assert_close(out[:, 9 // 2], sd["pos_embed"][:, 4 // 2])  # class slot: old M//2 -> new M'//2


def test_loading_at_another_img_size_resizes_the_checkpoint(official_file):
    path, sd, _ = official_file
    model = ssmkit.create_model("vim_tiny_patch16_224", pretrained=path, **dict(CFG, img_size=48)).eval()
    img = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert_close("img_size=48 logits", ref_vim(dict(sd, pos_embed=_ref_resize(sd["pos_embed"], 2, 3)), img),
                     model(img), TOL)


def test_vim_init():
    model = VisionMamba(**CFG)
    mixer = model.backbone.layers[1].mixer
    assert torch.count_nonzero(mixer.dt_proj_b.bias) == 0  # Vim's _init_weights zeroes it (no _no_reinit flag)
    dt = F.softplus(mixer.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-7 and dt.max() <= 0.1 + 1e-6
    bound = 1 / math.sqrt(mixer.d_inner) / math.sqrt(DEPTH)  # kaiming_uniform(a=sqrt(5)) / sqrt(depth)
    assert mixer.out_proj.weight.abs().max() <= bound
    assert mixer.out_proj.weight.abs().max() > 0.8 * bound
    torch.testing.assert_close(mixer.A_b_log, torch.log(torch.arange(1, N + 1.0)).repeat(mixer.d_inner, 1))
    assert model.no_weight_decay() >= {"pos_embed", "cls_token", "backbone.layers.0.mixer.A_b_log"}


def test_bad_inputs_raise_clear_errors(tmp_path):
    model = VisionMamba(**CFG)
    with pytest.raises(ValueError, match=r"in_chans=3 channels, found 1"):
        model(torch.randn(1, 1, IMG, IMG))
    with pytest.raises(ValueError, match=r"must be 32x32 \(img_size\), found 48x32; pass dynamic_img_size=True"):
        model(torch.randn(1, 3, 48, 32))
    small = official_vim_state_dict(0, dim=48)  # a wider variant
    path = tmp_path / "other.pth"
    save_official(path, small, small)
    with pytest.raises(ValueError, match=r"shape mismatch for 'backbone.layers.0.mixer.in_proj.weight': "
                                         r"checkpoint \[192, 48\], model \[128, 32\]"):
        ssmkit.create_model("vim_tiny_patch16_224", pretrained=path, **CFG)
    with pytest.raises(ValueError, match="shape mismatch for 'cls_token'"):
        timm.create_model("vim_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **CFG)
