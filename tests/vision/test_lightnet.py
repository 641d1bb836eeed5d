"""LightNet for images: any image size, relative positions that matter, trainability, checkpoint round trips."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import ssmkit
import ssmkit.vision  # noqa: F401  (registers the models in timm)
from ssmkit.core.mixers import LightNetMixer
from ssmkit.core.positional import MDTPE
from ssmkit.vision.models.lightnet import LightNet

CFG = dict(embed_dim=32, depth=2, num_heads=2, img_size=32, num_classes=10)


def _shuffle_patches(img: torch.Tensor, patch: int, perm: torch.Tensor) -> torch.Tensor:
    """Permute the non-overlapping patches of [B, C, H, W] images (raster order of the patch grid)."""
    b, c, h, w = img.shape
    gh, gw = h // patch, w // patch
    tiles = img.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c, patch, patch)
    tiles = tiles[:, perm].reshape(b, gh, gw, c, patch, patch)
    return tiles.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def test_structure_uses_core_lightnet_mixer_and_mdtpe():
    model = LightNet(**CFG)
    assert isinstance(model.tpe, MDTPE)
    mixers = [layer.mixer for layer in model.backbone.layers]
    assert all(isinstance(m, LightNetMixer) and not m.causal and m.lrpe is not None for m in mixers)
    assert all(layer.mlp is not None for layer in model.backbone.layers)  # attention and GLU blocks alternate


@pytest.mark.parametrize("size", [(32, 32), (48, 32), (16, 64)])
def test_any_image_size(size):
    model = LightNet(**CFG).eval()
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, *size))
    assert feats.shape == (2, (size[0] // 16) * (size[1] // 16), 32)
    assert torch.isfinite(feats).all()


def test_patch_positions_change_the_prediction():
    """Mean pooling of position-free tokens would be invariant to shuffling the patches; MD-TPE / MD-LRPE break it."""
    torch.manual_seed(0)
    model = LightNet(**dict(CFG, img_size=64)).eval()
    img = torch.randn(2, 3, 64, 64)
    perm = torch.randperm(16)
    with torch.no_grad():
        out, shuffled = model(img), model(_shuffle_patches(img, 16, perm))
        identity = model(_shuffle_patches(img, 16, torch.arange(16)))
    torch.testing.assert_close(identity, out)  # the helper itself is exact
    assert (out - shuffled).abs().max() > 1e-3


def test_tiny_model_fits_a_small_batch():
    torch.manual_seed(0)
    model = LightNet(**dict(CFG, num_classes=4))
    img, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 4
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        loss = F.cross_entropy(model(img), labels)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first, f"loss {first:.3f} -> {loss.item():.3f}"


def test_causal_variant_runs():
    model = LightNet(**dict(CFG, causal=True)).eval()
    assert all(layer.mixer.causal for layer in model.backbone.layers)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 10)


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    model = LightNet(**CFG).eval()
    path = tmp_path / "lightnet.pth"
    torch.save(model.state_dict(), path)
    img = torch.randn(2, 3, 32, 32)
    via_ssmkit = ssmkit.create_model("lightnet_tiny", pretrained=path, **CFG).eval()
    via_timm = timm.create_model("lightnet_tiny", pretrained=True,
                                 pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **CFG).eval()
    with torch.no_grad():
        torch.testing.assert_close(via_ssmkit(img), model(img))
        torch.testing.assert_close(via_timm(img), model(img))
    fixed = LightNet(**CFG, dynamic_img_size=False)
    with pytest.raises(ValueError, match=r"found 48x32; pass dynamic_img_size=True"):
        fixed(torch.randn(1, 3, 48, 32))
    with pytest.raises(ValueError, match=r"in_chans=3 channels, found 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): \['backbone.layers.2"):
        ssmkit.create_model("lightnet_tiny", pretrained=path, **dict(CFG, depth=3))
