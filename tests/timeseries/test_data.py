"""Time-Series-Library protocol: window counts of reference/timeseries.md section 4, scaling, time features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ssmkit.timeseries import ETTH1_PATH
from ssmkit.timeseries.data import TimeSeriesDataModule, read_series, split_borders, time_features

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "timeseries"


def _counts(dm):
    dm.setup()
    return tuple(len(dm.datasets[s]) for s in ("train", "val", "test"))


@pytest.mark.parametrize("pred_len,expected", [(96, (8449, 2785, 2785)), (720, (7825, 2161, 2161))])
def test_etth1_window_counts(pred_len, expected):
    assert _counts(TimeSeriesDataModule(pred_len=pred_len)) == expected


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/timeseries beside the checkout")
@pytest.mark.parametrize("name,pred_len,expected", [
    ("ETTm1.csv.gz", 96, (34369, 11425, 11425)),
    ("ETTm2.csv.gz", 720, (33745, 10801, 10801)),
    ("weather.csv.gz", 96, (36696, 5175, 10444)),
    ("weather.csv.gz", 720, (36072, 4551, 9820)),
    ("exchange_rate.csv", 96, (5120, 665, 1422)),
    ("exchange_rate.csv", 720, (4496, 41, 798)),
])
def test_shared_dataset_window_counts(name, pred_len, expected):
    assert _counts(TimeSeriesDataModule(data_path=str(SHARED / name), pred_len=pred_len)) == expected


def test_scaler_uses_train_rows_only_and_windows_line_up():
    dm = TimeSeriesDataModule(seq_len=96, label_len=48, pred_len=24)
    dm.setup()
    raw = read_series(ETTH1_PATH).drop("date").to_numpy()
    train = raw[:8640]
    np.testing.assert_allclose(dm.scaler.mean, train.mean(0))
    np.testing.assert_allclose(dm.scaler.std, train.std(0))
    item = dm.datasets["test"][5]
    start = 11520 - 96 + 5
    np.testing.assert_allclose(item["x"].numpy(), (raw[start:start + 96] - train.mean(0)) / train.std(0), rtol=1e-5,
                               atol=1e-5)
    assert item["y"].shape == (48 + 24, 7)
    torch.testing.assert_close(item["y"][:48], item["x"][-48:])
    assert item["x_mark"].shape == (96, 4)
    back = dm.scaler.inverse_transform(item["x"])
    np.testing.assert_allclose(back.numpy(), raw[start:start + 96], rtol=1e-4, atol=1e-4)


def test_time_features_hourly():
    dates = pl.Series("d", ["2016-07-01 00:00:00", "2016-07-04 23:00:00"]).str.to_datetime()
    feats = time_features(dates, "h")
    # 2016-07-01 is a Friday (weekday 4), day 1 of month, day 183 of the (leap) year
    np.testing.assert_allclose(feats[0], [-0.5, 4 / 6 - 0.5, -0.5, 182 / 365 - 0.5], rtol=1e-6)
    np.testing.assert_allclose(feats[1], [0.5, -0.5, 3 / 30 - 0.5, 185 / 365 - 0.5], rtol=1e-6)
    assert time_features(dates, "15min").shape == (2, 5)
    with pytest.raises(ValueError, match="freq must be one of"):
        time_features(dates, "fortnight")


def test_features_modes_and_target_order(tmp_path):
    dm = TimeSeriesDataModule(features="S")
    assert dm.columns == ["OT"] and dm.n_vars == 1
    dm = TimeSeriesDataModule(features="MS", target="HUFL")
    assert dm.columns[-1] == "HUFL" and dm.n_vars == 7
    assert TimeSeriesDataModule().n_time_features == 4


def test_custom_split_borders():
    assert split_borders("custom", 7588, 96) == {"train": (0, 5311), "val": (5311 - 96, 7588 - 1517),
                                                 "test": (7588 - 1517 - 96, 7588)}


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_path .*missing.csv"):
        TimeSeriesDataModule(data_path=str(tmp_path / "missing.csv"))
    bad = tmp_path / "nodate.csv"
    bad.write_text("time,a\n1,2\n")
    with pytest.raises(ValueError, match="expected a 'date' column"):
        TimeSeriesDataModule(data_path=str(bad))
    holes = tmp_path / "holes.csv"
    holes.write_text("date,a,OT\n2020-01-01 00:00:00,1,2\n2020-01-01 01:00:00,,3\n")
    with pytest.raises(ValueError, match="1 rows have missing values, first rows \\[1\\]"):
        TimeSeriesDataModule(data_path=str(holes))
    with pytest.raises(ValueError, match="target 'price' is not a column"):
        TimeSeriesDataModule(features="S", target="price")
    with pytest.raises(ValueError, match="features must be"):
        TimeSeriesDataModule(features="X")
    short = tmp_path / "short.csv"
    short.write_text("date,a,OT\n" + "".join(f"2020-01-01 {h:02d}:00:00,{h},{h}\n" for h in range(20)))
    with pytest.raises(ValueError, match="the val split has .* rows, fewer than seq_len \\+ pred_len"):
        TimeSeriesDataModule(data_path=str(short), seq_len=8, label_len=4, pred_len=4).setup()
