"""Bad input is refused with a message naming the file / argument, what was expected and what was found: CSVs without
date, with non-numeric / NaN / inf / missing cells (column and first bad row), series too short for a split (which
split, by how much), checkpoints trained for another n_vars / seq_len, prediction frames with missing columns."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from ssmkit.timeseries.cli import main
from ssmkit.timeseries.data import TimeSeriesDataModule, check_frame, read_series
from ssmkit.timeseries.module import Forecaster
from tests.timeseries.test_predict import SEQ_LEN, trained  # noqa: F401  (the fitted tiny SpaceTime fixture)


def csv(tmp_path, name: str, body: str):
    path = tmp_path / name
    path.write_text(body)
    return str(path)


def hourly(rows: int, value=lambda i: f"{i},{2 * i}") -> str:
    start = datetime(2020, 1, 1)
    return "date,a,OT\n" + "".join(f"{start + timedelta(hours=i):%Y-%m-%d %H:%M:%S},{value(i)}\n" for i in range(rows))


def test_csv_without_date(tmp_path):
    with pytest.raises(ValueError, match=r"nodate.csv: expected a 'date' column, found columns \['time', 'a'\]"):
        read_series(csv(tmp_path, "nodate.csv", "time,a\n1,2\n"))


@pytest.mark.parametrize("cell,message", [
    ("abc", r"column 'a' has a non-numeric value 'abc' in row 2"),
    ("nan", r"column 'a' has a non-finite value \(nan\) in row 2"),
    ("inf", r"column 'a' has a non-finite value \(inf\) in row 2"),
    ("-inf", r"column 'a' has a non-finite value \(-inf\) in row 2"),
    ("", r"2 rows have missing values, first rows \[2, 4\] \(row 2: column 'a' is empty\)"),
])
def test_bad_cells_name_the_column_and_the_first_bad_row(tmp_path, cell, message):
    body = hourly(6, lambda i: f"{cell if i in (2, 4) else i},{i}")  # rows 2 and 4 are bad: row 2 is named
    with pytest.raises(ValueError, match=message):
        TimeSeriesDataModule(data_path=csv(tmp_path, "bad.csv", body), features="M")


def test_bad_dates(tmp_path):
    with pytest.raises(ValueError, match="the 'date' column could not be parsed as datetimes"):
        read_series(csv(tmp_path, "dates.csv", "date,a\nyesterday,1\n"))
    frame = pl.DataFrame({"date": [1, 2], "a": [1.0, 2.0]})
    with pytest.raises(ValueError, match="the 'date' column must hold datetimes or date strings, found Int64"):
        check_frame(frame, "frame")
    with pytest.raises(TypeError, match="frame: expected a polars.DataFrame, found dict"):
        check_frame({"date": []}, "frame")


def test_series_too_short_names_the_split_and_the_shortfall(tmp_path):
    # custom split of 30 rows: train [0, 21), val [21 - 8, 24) = 11 rows, but seq_len + pred_len = 12
    data = TimeSeriesDataModule(data_path=csv(tmp_path, "short.csv", hourly(30)), seq_len=8, label_len=0, pred_len=4)
    with pytest.raises(ValueError, match=r"the val split has 11 rows, fewer than seq_len \+ pred_len = 12: no window "
                                         r"fits \(short by 1 rows\)"):
        data.setup()
    data = TimeSeriesDataModule(data_path=csv(tmp_path, "ETTh1_cut.csv", hourly(100)), seq_len=8, label_len=0,
                                pred_len=4)
    with pytest.raises(ValueError, match="a ETTh dataset needs at least 14400 rows, found 100"):
        data.setup()


def test_checkpoint_for_another_n_vars_or_seq_len_is_refused_before_loading(trained, tmp_path):  # noqa: F811
    config, data, ckpt = trained
    common = ["-c", str(config), "--data.data_path", str(data), "--ckpt_path", str(ckpt), "--trainer.default_root_dir",
              str(tmp_path)]
    with pytest.raises(ValueError, match=f"checkpoint was trained with seq_len={SEQ_LEN}, but the configuration "
                                         "gives seq_len=12"):
        main(["test", *common, "--data.seq_len", "12"])
    with pytest.raises(ValueError, match="checkpoint was trained with n_vars=2, but the configuration gives n_vars=1"):
        main(["test", *common, "--data.features", "S"])
    other = tmp_path / "other.yaml"
    other.write_text(config.read_text().replace(f"seq_len: {SEQ_LEN}", "seq_len: 32"))
    with pytest.raises(ValueError, match=f"other.yaml: data.seq_len = 32, but the checkpoint .* was trained with "
                                         f"seq_len = {SEQ_LEN}"):
        main(["forecast", "--ckpt", str(ckpt), "--data", str(data), "-c", str(other)])


def test_prediction_frame_errors(trained):  # noqa: F811
    _, data, ckpt = trained
    forecaster = Forecaster.load_from_checkpoint(ckpt, map_location="cpu")
    frame = read_series(data)
    with pytest.raises(ValueError, match=r"predict_dataframe\(df\): missing columns \['OT'\] \(expected 'date' and "
                                         r"\['a', 'OT'\], found \['date', 'a'\]\)"):
        forecaster.predict_dataframe(frame.select("date", "a"))
    with pytest.raises(ValueError, match=f"the model needs the last seq_len = {SEQ_LEN} rows, found 5 rows "
                                         f"\\(short by {SEQ_LEN - 5} rows\\)"):
        forecaster.predict_dataframe(frame.head(5))
    with pytest.raises(ValueError, match="dates must be strictly increasing; row 1"):
        forecaster.predict_dataframe(frame.reverse())
    with pytest.raises(ValueError, match="column 'OT' has a non-finite value"):
        forecaster.predict_dataframe(frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(float("nan"))
                                                        .otherwise(pl.col("OT")).alias("OT")))
    with pytest.raises(ValueError, match="predict_dataframe needs the training data's columns and scaler"):
        Forecaster("test_spacetime", seq_len=24, pred_len=12, n_vars=1).predict_dataframe(frame)
