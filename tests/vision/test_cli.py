"""``ssmkit vision fit|validate`` on generated MNIST files: data -> model links, saved config, checkpoints, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssmkit.vision.cli import main

from .test_data import write_fake_mnist

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "vision" / "smoke.yaml")
# the smoke config runs a tiny Vim; these tests run a 1-block timm ViT so they do not depend on the vision models
TIMM_VIT = ["--model.model_name", "deit_tiny_patch16_224", "--model.model_kwargs",
            json.dumps(dict(patch_size=4, embed_dim=16, depth=1, num_heads=2))]


def smoke_args(tmp_path: Path, *extra: str) -> list[str]:
    data = tmp_path / "mnist"
    if not data.exists():
        write_fake_mnist(data, n=48)
    return ["-c", SMOKE, "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.enable_progress_bar",
            "false", "--data.init_args.data_dir", str(data), "--data.init_args.n_train", "32",
            "--data.init_args.batch_size", "8", *TIMM_VIT, *extra]


def test_fit_links_data_to_model_and_saves_config(tmp_path):
    cli = main(["fit", *smoke_args(tmp_path, "--model.ema_decay", "0.9", "--data.init_args.img_size", "32")])
    hp = cli.model.hparams
    assert (hp.num_classes, hp.in_chans, hp.img_size) == (10, 1, 32)  # written once, under data
    assert cli.model.model.patch_embed.img_size == (32, 32) and cli.model.model.patch_embed.patch_size == (4, 4)
    assert len(cli.model.model.blocks) == 1  # the command line's model_kwargs replaced the config's
    assert {"val/top1", "val/top5", "val_ema/top1"} <= set(cli.trainer.callback_metrics)
    assert list((tmp_path / "run").rglob("config.yaml")), "the resolved config is saved beside the run"
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    cli = main(["fit", *smoke_args(tmp_path, "--model.ema_decay", "0.9", "--data.init_args.img_size", "32",
                                   "--trainer.max_epochs", "2"), "--ckpt_path", "last"])
    assert cli.trainer.current_epoch == 2 and cli.trainer.global_step == 8  # resumed after epoch 1's 4 steps


def test_validate_and_bad_data_class(tmp_path):
    cli = main(["validate", *smoke_args(tmp_path)])
    assert 0.0 <= float(cli.trainer.callback_metrics["val/top1"]) <= 1.0
    with pytest.raises(SystemExit):
        main(["fit", *smoke_args(tmp_path), "--data.class_path", "ssmkit.timeseries.data.TimeSeriesDataModule"])
