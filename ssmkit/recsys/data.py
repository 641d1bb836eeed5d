"""Sequential-recommendation data with RecBole's protocol, read with polars.

Readers return one frame with the columns ``user``, ``item``, ``time`` (original ids, any type):

- ``read_atomic``: RecBole atomic files (``.inter``; ``.item`` / ``.user`` also parse), tab-separated with
  ``name:type`` headers (``type`` in token, token_seq, float, float_seq);
- ``read_iclrec``: ICLRec ``.txt``, one user per line ``user item item ...`` already in time order;
- ``read_ml1m``: MovieLens-1M ``ratings.dat`` (``user::item::rating::timestamp``);
- ``check_frame``: any polars frame with user / item / time columns.

``build_sequences`` then applies RecBole's sequential defaults: iterative k-core filtering (5 users, 5 items,
repeated until nothing changes), id remapping with PAD = 0 (so ``n_items`` counts the PAD row), order by time within
each user (stable: ties keep the file order), every prefix as a sample (``i_1..i_{t-1} -> i_t``), leave-one-out by
time (a user's last target is test, the one before is validation, the rest train). Batches are made by
``PrefixBatches`` from the flat item array in one vectorized gather: the last ``max_len`` items, right-padded with 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from ssmkit.core.datamodule import SplitDataModule

__all__ = [
    "PrefixBatches", "SequenceData", "SequentialDataModule", "build_sequences", "check_frame", "kcore_filter",
    "read_atomic", "read_iclrec", "read_interactions", "read_ml1m",
]

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")
SPLITS = ("train", "val", "test")


def read_atomic(path: str | os.PathLike, user_field: str = "user_id", item_field: str = "item_id",
                time_field: str | None = "timestamp") -> pl.DataFrame:
    """Read a RecBole atomic file.

    Args:
        path: a tab-separated file whose header cells are ``name:type``.
        user_field, item_field, time_field: header names mapped to ``user`` / ``item`` / ``time``; with
            ``time_field=None`` (or a file without it) the file order is the time order.

    Returns:
        Frame ``user, item, time`` for an interaction file; the whole file with typed columns named by
        ``name`` when the file has no user/item pair (``.item`` / ``.user`` files).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_atomic: file not found: {path}")
    with path.open() as f:
        header = f.readline().rstrip("\n\r").split("\t")
    names, dtypes = [], {}
    for i, cell in enumerate(header):
        name, sep, kind = cell.partition(":")
        if not sep or not name or kind not in ATOMIC_TYPES:
            raise ValueError(f"read_atomic: {path.name}: header column {i + 1} must be 'name:type' with type in "
                             f"{ATOMIC_TYPES}, found {cell!r}")
        names.append(name)
        dtypes[name] = pl.Float64 if kind == "float" else pl.Utf8
    frame = pl.read_csv(path, separator="\t", has_header=False, skip_rows=1, new_columns=names,
                        schema_overrides=dtypes, quote_char=None)
    if user_field not in names or item_field not in names:
        return frame
    if time_field is None or time_field not in names:
        return check_frame(frame.select(user=pl.col(user_field), item=pl.col(item_field),
                                        time=pl.int_range(pl.len())))
    return check_frame(frame.select(user=pl.col(user_field), item=pl.col(item_field), time=pl.col(time_field)))


def read_iclrec(path: str | os.PathLike) -> pl.DataFrame:
    """Read an ICLRec sequence file (``user item item ...`` per line, time-ordered) as ``user, item, time``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_iclrec: file not found: {path}")
    lines = pl.read_csv(path, has_header=False, new_columns=["line"], separator="\x1f", quote_char=None)
    tokens = lines.select(pl.col("line").str.strip_chars().str.split(" "))["line"]
    short = tokens.list.len() < 2
    if short.any():
        row = int(short.arg_max()) + 1
        raise ValueError(f"read_iclrec: {path.name} line {row}: expected 'user item [item ...]', found "
                         f"{lines['line'][row - 1]!r}")
    frame = pl.DataFrame({"user": tokens.list.first(), "item": tokens.list.slice(1)})
    frame = frame.with_columns(time=pl.int_ranges(pl.col("item").list.len())).explode("item", "time")
    return check_frame(_integer_ids(frame, path.name))


def read_ml1m(path: str | os.PathLike) -> pl.DataFrame:
    """Read MovieLens-1M ``ratings.dat`` (``user::item::rating::timestamp``) as ``user, item, time``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_ml1m: file not found: {path}")
    lines = pl.read_csv(path, has_header=False, new_columns=["line"], separator="\x1f", quote_char=None)
    parts = lines["line"].str.split("::")
    bad = parts.list.len() != 4
    if bad.any():
        row = int(bad.arg_max()) + 1
        raise ValueError(f"read_ml1m: {path.name} line {row}: expected 'user::item::rating::timestamp', found "
                         f"{lines['line'][row - 1]!r}")
    frame = pl.DataFrame({"user": parts.list.get(0), "item": parts.list.get(1),
                          "time": parts.list.get(3).cast(pl.Float64, strict=False)})
    return check_frame(_integer_ids(frame, path.name))


def _integer_ids(frame: pl.DataFrame, source: str) -> pl.DataFrame:
    """Cast the string ``user`` / ``item`` columns to Int64; raise naming the first id that is not an int >= 0."""
    for column in ("user", "item"):
        bad = ~frame[column].str.contains(r"^\d+$")
        if bad.any():
            found = frame[column][int(bad.arg_max())]
            raise ValueError(f"{source}: {column} ids must be integers >= 0, found {found!r}")
    return frame.with_columns(pl.col("user").cast(pl.Int64), pl.col("item").cast(pl.Int64))


def read_interactions(path: str | os.PathLike, fmt: str = "auto") -> pl.DataFrame:
    """Dispatch on ``fmt`` ("atomic" | "iclrec" | "ml1m" | "auto": ``.inter`` -> atomic, ``.dat`` -> ml1m,
    ``.txt`` -> iclrec)."""
    suffixes = {".inter": "atomic", ".dat": "ml1m", ".txt": "iclrec"}
    if fmt == "auto":
        fmt = suffixes.get(Path(path).suffix)
        if fmt is None:
            raise ValueError(f"data_path: cannot infer the format of {path!r} from its suffix (expected one of "
                             f"{list(suffixes)}); pass fmt='atomic' | 'iclrec' | 'ml1m'")
    readers = {"atomic": read_atomic, "iclrec": read_iclrec, "ml1m": read_ml1m}
    if fmt not in readers:
        raise ValueError(f"fmt must be one of {['auto', *readers]}, found {fmt!r}")
    return readers[fmt](path)


def check_frame(frame: pl.DataFrame) -> pl.DataFrame:
    """Validate an interaction frame: columns ``user``, ``item``, ``time``, no nulls; integer-typed ids >= 0.

    Returns:
        The frame restricted to those three columns.
    """
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"interactions must be a polars DataFrame, found {type(frame).__name__}")
    missing = [c for c in ("user", "item", "time") if c not in frame.columns]
    if missing:
        raise ValueError(f"interactions: missing column(s) {missing}; found columns {frame.columns}")
    frame = frame.select("user", "item", "time")
    for column in ("user", "item", "time"):
        nulls = frame[column].null_count()
        if nulls:
            raise ValueError(f"interactions: column {column!r} has {nulls} null / unparsable value(s)")
    for column in ("user", "item"):
        dtype = frame[column].dtype
        if dtype.is_float():
            raise TypeError(f"interactions: column {column!r} must hold integer or string ids, found {dtype}")
        if dtype.is_integer() and frame[column].min() < 0:
            raise ValueError(f"interactions: column {column!r} must hold ids >= 0, found {frame[column].min()}")
    return frame


def kcore_filter(frame: pl.DataFrame, user_min: int = 5, item_min: int = 5) -> pl.DataFrame:
    """Drop users with < ``user_min`` and items with < ``item_min`` interactions, repeated until stable (RecBole)."""
    while True:
        n = frame.height
        frame = frame.filter(pl.len().over("item") >= item_min)
        frame = frame.filter(pl.len().over("user") >= user_min)
        if frame.height == n:
            return frame


@dataclass
class SequenceData:
    """Remapped sequences and leave-one-out samples.

    Attributes:
        items: flat item ids [T] (int64, 1..n_items-1), users concatenated, each user's items in time order.
        user_start: offset of each user's first item in ``items`` [U].
        item_ids: original id of each internal item id (index 0 is PAD, stored as None).
        user_ids: original id of each internal user (0-based, order of ``user_start``).
        samples: per split, the flat position of each sample's target [S] (its prefix ends right before it).
    """

    items: np.ndarray
    user_start: np.ndarray
    item_ids: list
    user_ids: list
    samples: dict[str, np.ndarray]

    @property
    def n_items(self) -> int:
        """Item vocabulary size including the PAD row."""
        return len(self.item_ids)

    def encode(self, raw_items: list, unknown: str = "error") -> list[int]:
        """Map original item ids to internal ids.

        Args:
            raw_items: original ids (same type as in the data file).
            unknown: "error" raises on ids absent from the data; "drop" leaves them out.
        """
        if unknown not in ("error", "drop"):
            raise ValueError(f"unknown must be 'error' or 'drop', found {unknown!r}")
        lookup = {raw: i for i, raw in enumerate(self.item_ids) if i > 0}
        missing = [raw for raw in raw_items if raw not in lookup]
        if missing and unknown == "error":
            raise ValueError(f"item ids never seen in the training data: {missing[:10]} (pass unknown='drop' to "
                             f"skip them)")
        return [lookup[raw] for raw in raw_items if raw in lookup]


def build_sequences(frame: pl.DataFrame, user_min: int = 5, item_min: int = 5) -> SequenceData:
    """k-core filter, remap (PAD = 0), order by time and split leave-one-out (see the module docstring)."""
    frame = kcore_filter(check_frame(frame), user_min, item_min)
    if frame.height == 0:
        raise ValueError(f"interactions: nothing left after {user_min}-core (users) / {item_min}-core (items) "
                         f"filtering")
    item_ids = frame["item"].unique(maintain_order=True)
    frame = frame.with_columns(iid=pl.col("item").replace_strict(item_ids, pl.Series(range(1, len(item_ids) + 1)),
                                                                 return_dtype=pl.Int64))
    frame = frame.with_row_index("order").sort(["user", "time", "order"], maintain_order=True)
    counts = frame.group_by("user", maintain_order=True).len()
    if counts["len"].min() < 3:
        raise ValueError(f"interactions: every user needs >= 3 interactions for a leave-one-out split, found "
                         f"{counts['len'].min()} (raise user_min)")
    items = frame["iid"].to_numpy().astype(np.int64)
    lengths = counts["len"].to_numpy().astype(np.int64)
    user_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # position within the user, and how many targets come after it
    pos = np.arange(len(items)) - np.repeat(user_start, lengths)
    from_end = np.repeat(lengths, lengths) - 1 - pos
    targets = pos >= 1
    samples = {"train": np.flatnonzero(targets & (from_end >= 2)), "val": np.flatnonzero(from_end == 1),
               "test": np.flatnonzero(from_end == 0)}
    return SequenceData(items=items, user_start=user_start, item_ids=[None, *item_ids.to_list()],
                        user_ids=counts["user"].to_list(), samples=samples)


class PrefixBatches(Dataset):
    """Samples of one split; indexing with a list of sample indices returns a whole batch.

    Each sample is ``(item_seq [max_len], length, target)``: the last ``max_len`` items before the target,
    right-padded with 0. Used with ``batch_size=None`` and a ``BatchSampler``.
    """

    def __init__(self, data: SequenceData, split: str, max_len: int) -> None:
        self.items = torch.tensor(data.items)  # [T]
        self.target_pos = torch.tensor(data.samples[split])  # [S]
        user_of_item = np.repeat(np.arange(len(data.user_start)), np.diff([*data.user_start, len(data.items)]))
        self.start = torch.tensor(data.user_start[user_of_item[data.samples[split]]])  # [S]
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.target_pos)

    def __getitem__(self, index: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(index)
        target_pos = self.target_pos[index]  # [B]
        lengths = torch.clamp(target_pos - self.start[index], max=self.max_len)  # [B]
        offsets = torch.arange(self.max_len)  # [L]
        gather = target_pos[:, None] - lengths[:, None] + offsets  # [B, L]
        valid = offsets < lengths[:, None]  # [B, L]
        item_seq = torch.where(valid, self.items[gather.clamp(max=len(self.items) - 1)], 0)  # [B, L]
        return {"item_seq": item_seq, "lengths": lengths, "target": self.items[target_pos]}


class SequentialDataModule(SplitDataModule):
    """Leave-one-out next-item data (RecBole sequential protocol) for ``SequentialRecommender``.

    The file is read and split in ``__init__`` so that ``n_items`` and ``max_len`` exist before the model is built.

    Args:
        data_path: interaction file (RecBole ``.inter``, ICLRec ``.txt`` or ML-1M ``ratings.dat``).
        fmt: "auto" (by suffix), "atomic", "iclrec" or "ml1m".
        max_len: keep the last ``max_len`` items of each prefix (RecBole MAX_ITEM_LIST_LENGTH).
        batch_size: training batch; ``eval_batch_size``: validation / test batch.
        user_min, item_min: k-core thresholds (RecBole: 5 and 5).
        frame: an interaction frame used instead of ``data_path`` (tests, notebooks).
    """

    def __init__(self, data_path: str | None = None, fmt: str = "auto", max_len: int = 50, batch_size: int = 256,
                 eval_batch_size: int = 1024, user_min: int = 5, item_min: int = 5,
                 frame: pl.DataFrame | None = None) -> None:
        super().__init__()
        for name, value in (("max_len", max_len), ("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, found {value!r}")
        if (data_path is None) == (frame is None):
            raise ValueError("give exactly one of data_path (a file) and frame (a polars DataFrame)")
        self.save_hyperparameters(ignore=["frame"])
        frame = read_interactions(data_path, fmt) if frame is None else frame
        self.data = build_sequences(frame, user_min, item_min)
        self.max_len = max_len
        self.datasets = {split: PrefixBatches(self.data, split, max_len) for split in SPLITS}

    @property
    def n_items(self) -> int:
        """Item vocabulary size including PAD."""
        return self.data.n_items

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        batch_size = self.hparams.batch_size if train else self.hparams.eval_batch_size
        sampler = RandomSampler(dataset) if train else SequentialSampler(dataset)
        return DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None)

