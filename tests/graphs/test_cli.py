"""``ssmkit graphs``: smoke fit then test of the best checkpoint, data-to-model links, task mismatch."""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmkit.graphs.cli import main

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "graphs" / "smoke.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false"]


def test_fit_then_test_best_with_links(tmp_path):
    common = ["-c", SMOKE, "--trainer.default_root_dir", str(tmp_path), *QUIET, "--trainer.max_epochs", "1",
              "--data.pe_type", "random_walk", "--data.pe_dim", "3"]
    cli = main(["fit", *common, "--checkpoint.monitor", "val/accuracy", "--checkpoint.mode", "max"])
    data, model = cli.datamodule, cli.model
    assert (model.hparams.in_channels, model.hparams.out_channels, model.hparams.task) == (8, 2, "graph")
    assert (model.model.in_channels, model.model.pe_dim, model.model.pe_type) == (8, 3, "random_walk")
    assert data.splits["train"][0].random_walk_pe.shape[1] == 3
    assert list(tmp_path.rglob("config.yaml")), "the resolved config is saved beside the run"
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best and Path(best).is_file()
    cli = main(["test", *common, "--ckpt_path", best])
    metrics = cli.trainer.callback_metrics
    assert {"test/accuracy", "test/loss"} <= set(metrics) and 0 <= float(metrics["test/accuracy"]) <= 1


def test_node_dataset_needs_the_node_classifier(tmp_path):
    args = ["-c", SMOKE, "--trainer.default_root_dir", str(tmp_path), *QUIET, "--data.dataset", "synthetic_node"]
    with pytest.raises(ValueError, match="GraphClassifier trains 'graph'-level tasks, found a 'node'-level"):
        main(["fit", *args])
