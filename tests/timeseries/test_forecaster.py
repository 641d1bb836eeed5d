"""Forecaster + CLI: a smoke fit/test on the bundled ETTh1, global metrics, MS mode, the lr schedules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssmkit.timeseries.cli import main
from ssmkit.timeseries.module import Forecaster

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "timeseries" / "smoke.yaml")


def test_cli_fit_then_test_best(tmp_path):
    root = str(tmp_path / "run")
    common = ["-c", SMOKE, "--trainer.default_root_dir", root, "--trainer.enable_progress_bar", "false",
              "--model.model_kwargs.backend", "naive"]
    cli = main(["fit", *common, "--checkpoint.monitor", "val/loss"])
    assert cli.model.model.n_vars == 7 and cli.model.hparams.pred_len == 24  # linked from the data module
    assert list(Path(root).rglob("config.yaml")), "the resolved config is saved beside the run"
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and Path(best).is_file()
    cli = main(["test", *common, "--ckpt_path", best])
    metrics = cli.trainer.callback_metrics
    assert {"test/mse", "test/mae"} <= set(metrics)
    assert 0 < float(metrics["test/mse"]) < 10


def test_metrics_are_global_means_over_windows():
    model = Forecaster("test_s_mamba", {"backend": "naive"}, seq_len=16, pred_len=8, n_vars=3)
    metric = model.metrics["test_mse"]
    a, b = torch.randn(5, 8, 3), torch.randn(3, 8, 3)
    metric.update(a.reshape(-1), torch.zeros(120))
    metric.update(b.reshape(-1), torch.zeros(72))
    torch.testing.assert_close(metric.compute(), torch.cat([a.reshape(-1), b.reshape(-1)]).pow(2).mean())


def test_ms_mode_scores_the_target_column_only():
    model = Forecaster("test_s_mamba", {"backend": "naive"}, seq_len=16, pred_len=8, n_vars=3, features="MS")
    batch = dict(x=torch.randn(2, 16, 3), y=torch.randn(2, 12, 3), x_mark=torch.rand(2, 16, 4) - 0.5)
    pred, target = model._predict_and_target(batch)
    assert pred.shape == target.shape == (2, 8, 1)
    torch.testing.assert_close(target, batch["y"][:, -8:, -1:])


def test_type1_schedule_halves_each_epoch_and_bad_arguments():
    model = Forecaster("test_s_mamba", {"backend": "naive"}, seq_len=16, pred_len=8, n_vars=3, lr=1e-3)
    config = model.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(3):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4])
    with pytest.raises(ValueError, match="lr_schedule must be"):
        Forecaster("test_s_mamba", lr_schedule="step")
    with pytest.raises(ValueError, match="optimizer must be"):
        Forecaster("test_s_mamba", optimizer="sgd")
