"""``ssmkit graphs evaluate``: runs per seed x split, mean and std, JSON + Markdown, collect, bad input."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from ssmkit.graphs.cli import main
from ssmkit.graphs.evaluate import _override, markdown

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "graphs" / "smoke.yaml")
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--trainer.max_epochs", "1"]


def test_evaluate_splits_and_collect(tmp_path):
    node = ["--data.dataset", "synthetic_node", "--model.class_path", "ssmkit.graphs.module.NodeClassifier"]
    result = main(["evaluate", "-c", SMOKE, "--seeds", "0", "--splits", "0", "3", "--out", str(tmp_path / "ev"),
                   *QUIET, *node])
    assert [r["run"] for r in result["runs"]] == ["seed0_split0", "seed0_split3"]
    values = [r["test"] for r in result["runs"]]
    assert result["mean"] == pytest.approx(statistics.fmean(values))
    assert result["std"] == pytest.approx(statistics.pstdev(values))
    assert (result["metric"], result["dataset"], result["model"]) == ("accuracy", "synthetic_node", "gcn")
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert saved["mean"] == result["mean"] and saved["published_mean"] is None
    report = (tmp_path / "ev" / "evaluation.md").read_text()
    assert f"| test | {result['mean']:.4f} ± {result['std']:.4f} | n/a |" in report
    assert (tmp_path / "ev" / "seed0_split3" / "checkpoints").is_dir()
    table = main(["evaluate", "--collect", str(tmp_path / "ev"), "--out", str(tmp_path / "all" / "graphs.md")])
    assert f"| synthetic_node (accuracy) | {result['mean']:.4f} ± {result['std']:.4f} (2) |" in table["table"]
    assert (tmp_path / "all" / "graphs.json").is_file()


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="--folds: only the TU datasets have folds, found dataset 'synthetic_graph'"):
        main(["evaluate", "-c", SMOKE, "--folds", "0", "1", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--splits: only the heterophilous datasets"):
        main(["evaluate", "-c", SMOKE, "--splits", "1", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="data.dataset must be one of"):
        main(["evaluate", "-c", SMOKE, "--data.dataset=qm9", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["evaluate", "-c", str(tmp_path / "missing.yaml")])
    with pytest.raises(FileNotFoundError, match="evaluation.json"):
        main(["evaluate", "--collect", str(tmp_path), "--out", str(tmp_path / "t.md")])


def test_override_parsing_and_published_column():
    assert _override(["--data.dataset", "mutag", "--x", "1", "--data.dataset=cora"], "data.dataset") == "cora"
    assert _override(["--trainer.max_epochs", "3"], "data.dataset") is None
    result = dict(model="gcn", dataset="peptides-func", metric="ap", runs=[{"run": "seed0", "test": 0.6,
                  "fit_seconds": 1.0}], mean=0.6, std=0.0, published_mean=0.593, published_std=0.0023,
                  published_source="Graph-Mamba table", command="c", wall_seconds=1.0, device="cpu")
    text = markdown(result)
    assert "| test | 0.6000 ± 0.0000 | 0.5930 ± 0.0023 (Graph-Mamba table) |" in text and "(AP)" in text
