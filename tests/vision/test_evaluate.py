"""``ssmkit vision evaluate``: Lightning checkpoints (model / EMA), plain weight files on ImageFolder, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from ssmkit.vision.cli import main
from ssmkit.vision.data import eval_transform, load_image
from ssmkit.vision.evaluate import detect_dataset

from .test_cli import smoke_args
from .test_data import write_image_folder


def test_lightning_checkpoint_matches_validate(tmp_path):
    fit = main(["fit", *smoke_args(tmp_path, "--model.ema_decay", "0.5")])
    ckpt = fit.trainer.checkpoint_callback.last_model_path
    validated = main(["validate", *smoke_args(tmp_path, "--trainer.limit_val_batches", "1.0"), "--ckpt_path", ckpt])
    data = str(tmp_path / "mnist")
    assert detect_dataset(Path(data)) == "mnist"
    out = tmp_path / "eval"
    result = main(["evaluate", "--model", "deit_tiny_patch16_224", "--checkpoint", ckpt, "--data", data,
                   "--out", str(out), "--batch-size", "5"])
    assert result["images"] == 16  # the held-out 48 - 32 images of the run's own split
    assert result["top1"] == pytest.approx(100 * float(validated.trainer.callback_metrics["val/top1"]), abs=1e-3)
    assert result["top5"] == pytest.approx(100 * float(validated.trainer.callback_metrics["val/top5"]), abs=1e-3)
    assert json.loads((out / "evaluation.json").read_text())["top1"] == result["top1"]
    assert "| top-1 (%) |" in (out / "evaluation.md").read_text()
    ema = main(["evaluate", "--model", "deit_tiny_patch16_224", "--checkpoint", ckpt, "--data", data,
                "--out", str(out), "--ema"])
    assert ema["weights"] == "ema"
    assert ema["top1"] == pytest.approx(100 * float(validated.trainer.callback_metrics["val_ema/top1"]), abs=1e-3)
    with pytest.raises(ValueError, match="does not match the checkpoint's model_name"):
        main(["evaluate", "--model", "resnet10t", "--checkpoint", ckpt, "--data", data, "--out", str(out)])


def test_plain_weights_on_image_folder_use_the_official_eval_transform(tmp_path):
    write_image_folder(tmp_path / "tree", per_class=3, size=48)
    kwargs = dict(patch_size=8, embed_dim=16, depth=1, num_heads=2, img_size=32)
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", num_classes=2, **kwargs).eval()
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)
    result = main(["evaluate", "--model", "deit_tiny_patch16_224", "--checkpoint", str(weights), "--data",
                   str(tmp_path / "tree"), "--num-classes", "2", "--img-size", "32", "--model-kwargs",
                   json.dumps(kwargs), "--out", str(tmp_path / "eval")])
    # the same numbers by hand: resize int(32 / 0.875) = 36 bicubic, center crop 32, ImageNet mean / std
    data = torchvision.datasets.ImageFolder(str(tmp_path / "tree" / "val"), eval_transform(32), loader=load_image)
    x = torch.stack([img for img, _ in data])  # [6, 3, 32, 32]
    y = torch.tensor([label for _, label in data])
    with torch.no_grad():
        correct = (model(x).argmax(-1) == y).float().mean().item()
    assert result["images"] == 6 and result["dataset"] == "imagefolder"
    assert result["top1"] == pytest.approx(100 * correct, abs=1e-3)
    assert result["top5"] == pytest.approx(100.0) and result["paper_top1"] is None
    assert "resize 36 bicubic, center crop 32" in result["split"]


def test_bad_input(tmp_path):
    write_image_folder(tmp_path / "tree", per_class=1)
    broken = tmp_path / "tree" / "val" / "cat" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    weights = tmp_path / "w.pth"
    kwargs = dict(patch_size=8, embed_dim=16, depth=1, num_heads=2, img_size=32)
    torch.save(timm.create_model("deit_tiny_patch16_224", num_classes=2, **kwargs).state_dict(), weights)
    args = ["evaluate", "--model", "deit_tiny_patch16_224", "--checkpoint", str(weights), "--data",
            str(tmp_path / "tree"), "--num-classes", "2", "--img-size", "32", "--model-kwargs", json.dumps(kwargs),
            "--out", str(tmp_path / "eval")]
    with pytest.raises(ValueError, match=f"unreadable image file '{broken}'"):
        main(args)
    with pytest.raises(ValueError, match="--ema applies to Lightning checkpoints"):
        main([*args, "--ema"])
    with pytest.raises(SystemExit):
        main(["evaluate", "--model", "x", "--checkpoint", str(tmp_path / "absent.ckpt"), "--data", str(tmp_path)])
