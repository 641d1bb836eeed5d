"""``ssmkit recsys``: evaluate (fit -> best checkpoint -> test -> JSON + Markdown) on a generated atomic file, and
the dispatch of ``evaluate`` on the config's model class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssmkit.recsys import cli

from .test_data import random_frame

SMOKE = str(Path(__file__).resolve().parents[2] / "configs" / "recsys" / "smoke.yaml")


def test_evaluate_smoke_config_on_generated_atomic_file(tmp_path):
    frame = random_frame(n_users=30, n_items=12, per_user=(6, 12))
    path = tmp_path / "toy.inter"
    lines = ["user_id:token\titem_id:token\ttimestamp:float"] + [f"{u}\t{i}\t{t}" for u, i, t in frame.iter_rows()]
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    result = cli.main(["evaluate", "-c", SMOKE, "--seeds", "1", "--out", str(out), "--data.init_args.data_path",
                       str(path), "--trainer.enable_progress_bar", "false", "--model.init_args.model_kwargs.backend",
                       "naive"])
    assert result["model"] == "mamba4rec" and result["dataset"] == "toy"
    run = result["runs"][0]
    assert Path(run["checkpoint"]).is_file() and run["n_items"] == frame["item"].n_unique() + 1
    assert 0 <= result["mean"]["hr@10"] <= 1 and result["mean"]["hr@20"] >= result["mean"]["hr@10"]
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["mean"] == result["mean"]
    assert "| ndcg@10 |" in (out / "evaluation.md").read_text()
    assert list(out.rglob("config.yaml")), "the resolved config is saved beside the run"


def test_evaluate_dispatches_on_the_model_class(tmp_path, monkeypatch):
    config = tmp_path / "ctr.yaml"
    config.write_text("model:\n  class_path: ssmkit.recsys.ctr_module.CTRPredictor\n")
    calls = []
    monkeypatch.setattr(cli, "ctr_evaluate", lambda cfg, class_path, argv: calls.append(class_path) or {})
    cli.main(["evaluate", "-c", str(config)])
    assert calls == ["ssmkit.recsys.ctr_module.CTRPredictor"]
    config.write_text("trainer:\n  max_epochs: 1\n")
    with pytest.raises(ValueError, match="model.class_path"):
        cli.main(["evaluate", "-c", str(config)])
    with pytest.raises(ValueError, match="-c CONFIG"):
        cli.main(["evaluate"])
