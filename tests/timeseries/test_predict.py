"""Prediction on new data: a tiny SpaceTime fitted through the CLI, then ``Forecaster.predict_dataframe`` and
``ssmkit timeseries forecast`` (future timestamps from the inferred frequency, original scale, atomic CSV)."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ssmkit.timeseries.cli import main
from ssmkit.timeseries.data import future_dates, infer_step, read_series
from ssmkit.timeseries.module import Forecaster

SEQ_LEN, PRED_LEN, ROWS = 16, 8, 300

CONFIG = f"""
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  limit_train_batches: 3
  limit_val_batches: 1
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
data:
  features: M
  target: OT
  seq_len: {SEQ_LEN}
  label_len: 0
  pred_len: {PRED_LEN}
  batch_size: 16
model:
  model_name: spacetime
  model_kwargs:
    model_dim: 8
    kernel_dim: 4
    first_kernels: 2
    n_kernels: 4
    pre_kernels: 4
    diff_orders: 2
    ma_windows: [2, 6]
  lr: 1.0e-3
  optimizer: adamw
  weight_decay: 1.0e-4
  lr_schedule: timm_cosine
  warmup_epochs: 0
  cosine_epochs: 1
"""


def write_series(path: Path, rows: int = ROWS, start: datetime = datetime(2021, 3, 1)) -> pl.DataFrame:
    """Hourly two-variate series (a daily sine plus a trend) written as a Time-Series-Library CSV."""
    t = np.arange(rows)
    frame = pl.DataFrame({"date": [start + timedelta(hours=int(i)) for i in t],
                          "a": np.sin(2 * math.pi * t / 24) + 0.01 * t, "OT": 10 + 3 * np.cos(2 * math.pi * t / 24)})
    frame.write_csv(path, datetime_format="%Y-%m-%d %H:%M:%S")
    return frame


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Fit the tiny SpaceTime once: (config path, csv path, checkpoint path)."""
    root = tmp_path_factory.mktemp("spacetime_fit")
    csv = root / "series.csv"
    write_series(csv)
    config = root / "config.yaml"
    config.write_text(CONFIG)
    cli = main(["fit", "-c", str(config), "--data.data_path", str(csv), "--trainer.default_root_dir",
                str(root / "run")])
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    assert ckpt and Path(ckpt).is_file()
    return config, csv, Path(ckpt)


def test_predict_dataframe_returns_future_dates_and_original_scale_forecasts(trained):
    _, csv, ckpt = trained
    forecaster = Forecaster.load_from_checkpoint(ckpt, map_location="cpu")
    frame = read_series(csv)
    new = frame.select("OT", "date", "a", pl.lit(1.0).alias("extra"))  # any column order, extra columns ignored
    out = forecaster.predict_dataframe(new)
    assert out.columns == ["date", "a", "OT"] and out.height == PRED_LEN
    last = frame["date"][-1]
    assert out["date"].to_list() == [last + timedelta(hours=k) for k in range(1, PRED_LEN + 1)]
    # the same forecast by hand: train-split scaler (custom split: the first int(0.7 n) rows), model, inverse scaling
    values = frame.select("a", "OT").to_numpy()
    train = values[: int(ROWS * 0.7)]
    mean, std = train.mean(0), train.std(0)
    x = torch.tensor((values[-SEQ_LEN:] - mean) / std, dtype=torch.float32)[None]  # [1, L, 2]
    with torch.no_grad():
        expected = forecaster.model.eval()(x)[0].double().numpy() * std + mean  # [S, 2]
    np.testing.assert_allclose(out.select("a", "OT").to_numpy(), expected, rtol=1e-5, atol=1e-5)


def test_forecast_cli_writes_the_csv_atomically(trained, tmp_path):
    config, csv, ckpt = trained
    out = tmp_path / "forecasts.csv"
    result = main(["forecast", "--ckpt", str(ckpt), "--data", str(csv), "--out", str(out), "-c", str(config)])
    written = pl.read_csv(out, try_parse_dates=True)
    assert written.columns == ["date", "a", "OT"] and written.height == PRED_LEN
    np.testing.assert_allclose(written.select("a", "OT").to_numpy(), result.select("a", "OT").to_numpy(), rtol=1e-6)
    assert written["date"].to_list() == result["date"].to_list()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forecasts.csv"], "no temp file is left behind"


def test_lightning_predict_subcommand_runs_on_the_test_windows(trained, tmp_path):
    config, csv, ckpt = trained
    cli = main(["predict", "-c", str(config), "--data.data_path", str(csv), "--ckpt_path", str(ckpt),
                "--trainer.default_root_dir", str(tmp_path)])
    windows = int(ROWS * 0.2) - PRED_LEN + 1  # the test split holds int(0.2 n) rows after its seq_len lookback
    assert sum(batch.shape[0] for batch in cli.trainer.predict_loop.predictions) == windows


@pytest.mark.parametrize("dates,step,expected", [
    (["2020-01-01 00:00", "2020-01-01 00:15", "2020-01-01 00:30"], "900000000us",
     ["2020-01-01 00:45", "2020-01-01 01:00"]),
    (["2020-01-31 00:00", "2020-02-29 00:00", "2020-03-31 00:00"], "1mo", ["2020-04-30 00:00", "2020-05-31 00:00"]),
    (["2020-01-01 00:00", "2020-01-02 00:00", "2020-01-04 00:00", "2020-01-05 00:00"], "86400000000us",
     ["2020-01-06 00:00", "2020-01-07 00:00"]),  # a missing day: the most frequent step wins
])
def test_frequency_inference(dates, step, expected):
    series = pl.Series("date", dates).str.to_datetime("%Y-%m-%d %H:%M")
    assert infer_step(series) == step
    assert future_dates(series, 2).to_list() == pl.Series(expected).str.to_datetime("%Y-%m-%d %H:%M").to_list()
