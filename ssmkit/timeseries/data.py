"""Time-Series-Library forecasting data with polars: splits, scaling, time features, windows, a DataModule.

Protocol (thuml/Time-Series-Library, Informer lineage; see reference/timeseries.md section 4):
- ETTh1/ETTh2: 30-day months, train [0, 8640), val [8640 - L, 11520), test [11520 - L, 14400); ETTm x4.
- custom: columns reordered to [date, others..., target]; n_train = int(0.7 n), n_test = int(0.2 n), the rest val;
  val and test start L rows early (their first lookback comes from the previous split).
- StandardScaler fitted on the train rows only (population std), applied to the whole series.
- Window i: x = rows[i : i + L], y = rows[i + L - label_len : i + L + H]; count = rows - L - H + 1.
- Every split keeps ALL its windows (no drop_last on val/test): metrics do not depend on the batch size.
- ``timeF`` time features in [-0.5, 0.5] chosen by ``freq`` (h: hour, weekday, day of month, day of year).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ssmkit.core.datamodule import SplitDataModule

from . import ETTH1_PATH

SPLITS = ("train", "val", "test")


def read_series(path: str | Path) -> pl.DataFrame:
    """Read a Time-Series-Library CSV (``.csv`` or ``.csv.gz``) with a ``date`` column, dates parsed, values Float64.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: no ``date`` column, unparsable or missing dates, missing values (the first bad rows are named),
            or a non-numeric / NaN / infinite cell (its column and row are named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data_path {str(path)!r} does not exist (expected a .csv or .csv.gz file)")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return check_frame(pl.read_csv(raw, try_parse_dates=False), path.name)


def check_frame(frame: pl.DataFrame, source: str, columns: list[str] | None = None) -> pl.DataFrame:
    """Validate a series frame: a ``date`` column of datetimes (or parsable strings) and finite numeric values.

    Rows are numbered from 0 (the first data row, line 2 of a CSV file).

    Args:
        frame: the frame to check.
        source: its name in error messages (a file name, "predict_dataframe(df)").
        columns: value columns that must be present (default: every column but ``date``).

    Returns:
        The frame with ``date`` parsed to datetimes and the value columns cast to Float64.
    """
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"{source}: expected a polars.DataFrame, found {type(frame).__name__}")
    if "date" not in frame.columns:
        raise ValueError(f"{source}: expected a 'date' column, found columns {frame.columns}")
    values = [c for c in frame.columns if c != "date"] if columns is None else list(columns)
    missing_columns = [c for c in values if c not in frame.columns]
    if missing_columns:
        raise ValueError(f"{source}: missing columns {missing_columns} (expected 'date' and {values}, found "
                         f"{frame.columns})")
    frame = frame.select(["date", *values])
    if frame.schema["date"] == pl.String:
        try:
            frame = frame.with_columns(pl.col("date").str.to_datetime(strict=True))
        except pl.exceptions.PolarsError as err:
            raise ValueError(f"{source}: the 'date' column could not be parsed as datetimes ({err})") from err
    elif not frame.schema["date"].is_temporal():
        raise ValueError(f"{source}: the 'date' column must hold datetimes or date strings, found "
                         f"{frame.schema['date']}")
    bad = frame.with_row_index("row").filter(pl.any_horizontal(pl.all().exclude("row").is_null()))
    if bad.height:
        first = bad["row"].head(5).to_list()
        column = next(c for c in frame.columns if bad[c][0] is None)
        raise ValueError(f"{source}: {bad.height} rows have missing values, first rows {first} (row {first[0]}: "
                         f"column {column!r} is empty)")
    for column in values:
        original = frame[column]
        if not (original.dtype.is_numeric() or original.dtype == pl.String):
            raise ValueError(f"{source}: column {column!r} must be numeric, found dtype {original.dtype}")
        cast = original.cast(pl.Float64, strict=False)
        non_numeric = cast.is_null().arg_true()
        if len(non_numeric):
            row = non_numeric[0]
            raise ValueError(f"{source}: column {column!r} has a non-numeric value {original[row]!r} in row {row}")
        not_finite = (~cast.is_finite()).arg_true()
        if len(not_finite):
            row = not_finite[0]
            raise ValueError(f"{source}: column {column!r} has a non-finite value ({cast[row]}) in row {row}")
        frame = frame.with_columns(cast)
    return frame


def time_features(dates: pl.Series, freq: str = "h") -> np.ndarray:
    """``timeF`` covariates in [-0.5, 0.5] for a frequency string, as Time-Series-Library's ``timeenc=1``.

    Args:
        dates: datetime series [T].
        freq: "s", "t"/"min", "h", "d"/"b", "w", "m" (the leading number of e.g. "15min" is ignored).

    Returns:
        [T, F] float32 array (F = 6, 5, 4, 3, 2, 1 for s, t, h, d, w, m).
    """
    unit = freq.lstrip("0123456789").lower()
    unit = {"min": "t", "b": "d"}.get(unit, unit)
    frame = pl.DataFrame({"d": dates})
    d = pl.col("d").dt
    features = {
        "second": d.second() / 59.0 - 0.5,
        "minute": d.minute() / 59.0 - 0.5,
        "hour": d.hour() / 23.0 - 0.5,
        "weekday": (d.weekday() - 1) / 6.0 - 0.5,
        "monthday": (d.day() - 1) / 30.0 - 0.5,
        "yearday": (d.ordinal_day() - 1) / 365.0 - 0.5,
        "week": (d.week() - 1) / 52.0 - 0.5,
        "month": (d.month() - 1) / 11.0 - 0.5,
    }
    chosen = {
        "s": ["second", "minute", "hour", "weekday", "monthday", "yearday"],
        "t": ["minute", "hour", "weekday", "monthday", "yearday"],
        "h": ["hour", "weekday", "monthday", "yearday"],
        "d": ["weekday", "monthday", "yearday"],
        "w": ["monthday", "week"],
        "m": ["month"],
    }
    if unit not in chosen:
        raise ValueError(f"freq must be one of s, t/min, h, d/b, w, m (optionally with a multiple), found {freq!r}")
    out = frame.select([features[name].alias(name) for name in chosen[unit]])
    return out.to_numpy().astype(np.float32)


def infer_step(dates: pl.Series, source: str = "dates") -> str:
    """The sampling step of strictly increasing dates, as a polars offset ("3600000000us", "1mo", "1y").

    The most frequent difference wins; differences of 28-31 days (365-366 days) are calendar months (years).
    """
    micro = dates.diff().drop_nulls().dt.total_microseconds()  # [T - 1]
    if micro.len() == 0:
        raise ValueError(f"{source}: at least 2 dates are needed to infer the frequency, found {dates.len()}")
    not_increasing = (micro <= 0).arg_true()
    if len(not_increasing):
        row = not_increasing[0] + 1
        raise ValueError(f"{source}: dates must be strictly increasing; row {row} ({dates[row]}) does not come after "
                         f"row {row - 1} ({dates[row - 1]})")
    day = 86_400_000_000
    if micro.is_between(28 * day, 31 * day).all() and micro.n_unique() > 1:
        return "1mo"
    if micro.is_between(365 * day, 366 * day).all() and micro.n_unique() > 1:
        return "1y"
    return f"{micro.mode().min()}us"


def future_dates(dates: pl.Series, horizon: int, source: str = "dates") -> pl.Series:
    """The ``horizon`` timestamps after the last date, stepping by ``infer_step(dates)``."""
    count, unit = re.fullmatch(r"(\d+)([a-z]+)", infer_step(dates, source)).groups()
    count = int(count)
    offsets = pl.DataFrame({"offset": [f"{k * count}{unit}" for k in range(1, horizon + 1)]})
    return offsets.select(pl.lit(dates[-1]).dt.offset_by(pl.col("offset")).alias("date"))["date"]


def inference_window(frame: pl.DataFrame, columns: list[str], seq_len: int, pred_len: int, freq: str,
                     scaler: StandardScaler | None, source: str = "frame"
                     ) -> tuple[np.ndarray, np.ndarray, pl.Series]:
    """The model input for forecasting after the end of ``frame``.

    Args:
        frame: a ``date`` column and the value ``columns`` (other columns are ignored), at least ``seq_len`` rows.
        columns: the model's input columns, in the training order.
        seq_len, pred_len: lookback and horizon.   freq: time-feature frequency of the training data.
        scaler: the training scaler (None: the model was trained unscaled).
        source: the frame's name in error messages.

    Returns:
        x [seq_len, C] (scaled), x_mark [seq_len, F] and the ``pred_len`` future dates.
    """
    frame = check_frame(frame, source, columns)
    if frame.height < seq_len:
        raise ValueError(f"{source}: the model needs the last seq_len = {seq_len} rows, found {frame.height} rows "
                         f"(short by {seq_len - frame.height} rows)")
    future = future_dates(frame["date"], pred_len, source)
    window = frame.tail(seq_len)
    values = window.select(columns).to_numpy().astype(np.float64)  # [L, C]
    x = scaler.transform(values) if scaler is not None else values.astype(np.float32)
    return x, time_features(window["date"], freq), future


def split_borders(kind: str, n_rows: int, seq_len: int) -> dict[str, tuple[int, int]]:
    """Row ranges [start, end) of train / val / test (val and test start ``seq_len`` rows early)."""
    if kind in ("ETTh", "ETTm"):
        month = 30 * 24 * (4 if kind == "ETTm" else 1)
        ends = (12 * month, 16 * month, 20 * month)
    elif kind == "custom":
        n_train, n_test = int(n_rows * 0.7), int(n_rows * 0.2)
        ends = (n_train, n_rows - n_test, n_rows)
    else:
        raise ValueError(f"dataset_kind must be 'ETTh', 'ETTm' or 'custom', found {kind!r}")
    if ends[2] > n_rows:
        raise ValueError(f"a {kind} dataset needs at least {ends[2]} rows, found {n_rows}")
    return {"train": (0, ends[0]), "val": (ends[0] - seq_len, ends[1]), "test": (ends[1] - seq_len, ends[2])}


def infer_kind(path: str | Path) -> str:
    """'ETTh' / 'ETTm' from the file name, else 'custom'."""
    name = Path(path).name
    return "ETTh" if name.startswith("ETTh") else "ETTm" if name.startswith("ETTm") else "custom"


class StandardScaler:
    """Per-column standardisation with the mean and population std of the rows it is fitted on."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = mean.astype(np.float64)
        self.std = np.where(std > 0, std, 1.0).astype(np.float64)

    @classmethod
    def fit(cls, values: np.ndarray) -> StandardScaler:
        return cls(values.mean(axis=0), values.std(axis=0))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return ((values - self.mean) / self.std).astype(np.float32)

    def inverse_transform(self, values: torch.Tensor | np.ndarray):
        """Undo the scaling on [..., C] values (C = the scaled columns, or their last ``values.shape[-1]``)."""
        c = values.shape[-1]
        mean, std = self.mean[-c:], self.std[-c:]
        if isinstance(values, torch.Tensor):
            return values * torch.as_tensor(std, dtype=values.dtype, device=values.device) + torch.as_tensor(
                mean, dtype=values.dtype, device=values.device)
        return values * std + mean


class ForecastWindows(Dataset):
    """Sliding windows over one split.

    Items are dicts: x [seq_len, C], y [label_len + pred_len, C], x_mark [seq_len, F], y_mark [label_len + pred_len, F].
    """

    def __init__(self, data: np.ndarray, marks: np.ndarray, seq_len: int, label_len: int, pred_len: int, split: str):
        self.data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))  # [T, C]
        self.marks = torch.from_numpy(np.ascontiguousarray(marks, dtype=np.float32))  # [T, F]
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.length = len(data) - seq_len - pred_len + 1
        if self.length < 1:
            raise ValueError(f"the {split} split has {len(data)} rows, fewer than seq_len + pred_len = "
                             f"{seq_len + pred_len}: no window fits (short by {seq_len + pred_len - len(data)} rows)")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s_end = i + self.seq_len
        r_begin, r_end = s_end - self.label_len, s_end + self.pred_len
        return dict(x=self.data[i:s_end], y=self.data[r_begin:r_end], x_mark=self.marks[i:s_end],
                    y_mark=self.marks[r_begin:r_end])


class TimeSeriesDataModule(SplitDataModule):
    """Time-Series-Library forecasting data (ETTh1 bundled by default; any TSLib CSV through ``data_path``).

    Args:
        data_path: a ``.csv`` / ``.csv.gz`` with a ``date`` column; None = the bundled ETTh1.
        dataset_kind: "ETTh" | "ETTm" | "custom" | None (from the file name).
        features: "M" (all -> all), "S" (target -> target) or "MS" (all -> target, target last).
        target: the target column (moved last for "custom" and "MS").
        seq_len, label_len, pred_len: lookback, decoder overlap (unused by S-Mamba), horizon.
        freq: time-feature frequency (Time-Series-Library scripts use "h" for every dataset).
        batch_size, num_workers: loader settings; train shuffles and drops its last partial batch.
        scale: standardise with train statistics.
        val_drop_last: drop the last partial val batch as the official S-Mamba loaders do (test never drops).
    """

    def __init__(self, data_path: str | None = None, dataset_kind: str | None = None, features: str = "M",
                 target: str = "OT", seq_len: int = 96, label_len: int = 48, pred_len: int = 96, freq: str = "h",
                 batch_size: int = 32, num_workers: int = 0, scale: bool = True, val_drop_last: bool = True):
        super().__init__()
        if features not in ("M", "S", "MS"):
            raise ValueError(f"features must be 'M', 'S' or 'MS', found {features!r}")
        for name, value in (("seq_len", seq_len), ("pred_len", pred_len), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, found {value}")
        if not 0 <= label_len <= seq_len:
            raise ValueError(f"label_len must lie in [0, seq_len={seq_len}], found {label_len}")
        self.save_hyperparameters()
        self.data_path = Path(data_path) if data_path else ETTH1_PATH
        self.kind = dataset_kind or infer_kind(self.data_path)
        self.frame = read_series(self.data_path)
        self.columns = self._columns()
        self.datasets: dict[str, ForecastWindows] = {}
        self.scaler: StandardScaler | None = None

    def _columns(self) -> list[str]:
        values = [c for c in self.frame.columns if c != "date"]
        target = self.hparams.target
        if self.hparams.features in ("S", "MS") or self.kind == "custom":
            if target not in values:
                raise ValueError(f"target {target!r} is not a column of {self.data_path.name}; columns: {values}")
        if self.hparams.features == "S":
            return [target]
        if self.kind == "custom" or self.hparams.features == "MS":
            return [c for c in values if c != target] + [target]
        return values

    @property
    def n_vars(self) -> int:
        """Number of input variates C."""
        return len(self.columns)

    @property
    def n_time_features(self) -> int:
        """Number of time-feature covariates F."""
        return time_features(self.frame["date"].head(1), self.hparams.freq).shape[1]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        frame = self.frame
        values = frame.select(self.columns).to_numpy().astype(np.float64)  # [T, C]
        hp = self.hparams
        borders = split_borders(self.kind, frame.height, hp.seq_len)
        if hp.scale:
            self.scaler = StandardScaler.fit(values[slice(*borders["train"])])
            values = self.scaler.transform(values)
        marks = time_features(frame["date"], hp.freq)
        for split in SPLITS:
            rows = slice(*borders[split])
            self.datasets[split] = ForecastWindows(values[rows], marks[rows], hp.seq_len, hp.label_len, hp.pred_len,
                                                   split)

    def _loader(self, split: str, train: bool) -> DataLoader:
        # training drops its last partial batch (as Time-Series-Library); test keeps every window
        drop_last = train or (split == "val" and self.hparams.val_drop_last)
        return DataLoader(self.datasets[split], batch_size=self.hparams.batch_size, shuffle=train,
                          drop_last=drop_last, num_workers=self.hparams.num_workers)

