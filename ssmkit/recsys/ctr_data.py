"""Long-history CTR data for DARE / TWIN: thuml/DARE's preprocessing on any interaction log, and its own files.

Protocol (thuml/DARE ``preprocess/taobao_v4.py``, ``tmall_v4.py``, ``dataset.py``; facts only):

- per user, interactions sorted by time; users with fewer than ``min_interactions`` (official 210) are dropped;
- training targets at positions ``-3, -8, ..., -93`` (``num_train_targets`` = 19, stride 5), validation ``-2``, test
  ``-1``; each uses the interactions before it, truncated to the last ``max_length`` (200) and LEFT-padded with id 0;
- ``negatives`` (2) negatives per positive, sampled with probability proportional to the item's frequency in the
  whole log, never an item of the user's sequence; a negative's category is the item's category (last one seen);
- ids: items and categories are re-indexed from 1 (official: in order of first appearance; here: in sorted raw-id
  order, ``Vocabulary``), 0 = padding and the last index = OOV (used only when ``encode(..., unknown="oov")`` asks).

Sources (``CTRDataModule(dataset=...)``):

- ``"ml-100k"``: ``<data_dir>/ml-100k/ml-100k.inter`` + ``ml-100k.item`` (RecBole atomic files); every rating is an
  interaction; the category of a movie is its whole genre set (``"Comedy Romance"``: 216 categories) because
  MovieLens has no category tree and the first listed genre is alphabetical, not informative;
- ``"synthetic"``: a small generated log (tests, smoke runs);
- ``"frame"``: a polars frame with integer columns ``user``, ``item``, ``category``, ``time`` given in Python;
- ``"official"``: a folder of thuml/DARE's preprocessed Taobao / Tmall files (``train_0001_102400.npy`` ...,
  ``val.npy``, ``test.npy``: object arrays of ``[uid, iid, cid, [1, 0] | [0, 1], hist_iid, hist_cid]``). These are
  pickles: load only files you made or trust. Taobao's training set (48 files of 102,400 rows per the official
  preprocess README) holds about 8 GB of int32 histories in memory.

Batches are dicts of tensors: ``item``, ``category``, ``label`` (1 = click), ``user`` [B] and ``history_item``,
``history_category`` [B, L]. Validation and test keep every sample (the official loader drops the last partial batch).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from ssmkit.core.datamodule import SplitDataModule

SPLITS = ("train", "val", "test")
COLUMNS = ("user", "item", "category", "time")
DEFAULT_DATA_DIR = os.environ.get("SSMKIT_RECSYS_DATA", "../shared/data/recsys")


def check_ctr_frame(frame: pl.DataFrame, source: str = "frame") -> pl.DataFrame:
    """Validate an interaction log: integer, non-negative ``user``/``item``/``category`` ids, a ``time``, no nulls."""
    if not isinstance(frame, pl.DataFrame):
        raise TypeError(f"{source}: expected a polars DataFrame, found {type(frame).__name__}")
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; expected {list(COLUMNS)}, found {frame.columns}")
    frame = frame.select(COLUMNS)
    for column in ("user", "item", "category"):
        dtype = frame.schema[column]
        if not dtype.is_integer():
            raise TypeError(f"{source}: column {column!r} must hold integer ids, found dtype {dtype}")
        negative = frame.filter(pl.col(column) < 0)
        if negative.height:
            found = negative[column].head(5).to_list()
            raise ValueError(f"{source}: column {column!r} must hold ids >= 0, found {found}")
    nulls = {c: n for c, n in zip(frame.columns, frame.null_count().row(0)) if n}
    if nulls:
        raise ValueError(f"{source}: null values in columns {nulls}")
    if frame.height == 0:
        raise ValueError(f"{source}: the interaction log is empty")
    return frame


def read_movielens(folder: str | os.PathLike) -> pl.DataFrame:
    """ML-100k atomic files -> ``user, item, category, time`` (category = index of the movie's genre set)."""
    folder = Path(folder)
    inter, items = folder / "ml-100k.inter", folder / "ml-100k.item"
    for path in (inter, items):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (expected RecBole's ml-100k atomic files in {folder})")
    log = pl.read_csv(inter, separator="\t", quote_char=None)
    genres = pl.read_csv(items, separator="\t", quote_char=None, infer_schema=False)
    genres = genres.select(pl.col("item_id:token").cast(pl.Int64).alias("item"), pl.col("class:token_seq")
                           .rank("dense").cast(pl.Int64).alias("category"))
    log = log.select(pl.col("user_id:token").cast(pl.Int64).alias("user"), pl.col("item_id:token").cast(pl.Int64)
                     .alias("item"), pl.col("timestamp:float").alias("time"))
    frame = log.join(genres, on="item", how="left", maintain_order="left")
    return check_ctr_frame(frame, source=str(inter))


def generate_interactions(num_users: int = 12, num_items: int = 60, num_categories: int = 6, length: int = 130,
                          seed: int = 0) -> pl.DataFrame:
    """A small synthetic log with a learnable signal: each user mostly browses two preferred categories."""
    rng = np.random.default_rng(seed)
    item_category = rng.integers(0, num_categories, num_items)
    rows = []
    for user in range(num_users):
        liked = rng.choice(num_categories, size=2, replace=False)
        pool = np.flatnonzero(np.isin(item_category, liked))
        picks = np.where(rng.random(length) < 0.8, rng.choice(pool, length), rng.integers(0, num_items, length))
        rows += [(user, int(i), int(item_category[i]), t) for t, i in enumerate(picks)]
    return pl.DataFrame(rows, schema=COLUMNS, orient="row")


@dataclass
class Vocabulary:
    """Raw ids -> indices 1..n (sorted raw order); 0 = padding, n + 1 = OOV."""

    raw: np.ndarray

    @property
    def size(self) -> int:
        """Table rows: padding + known ids + OOV."""
        return len(self.raw) + 2

    @property
    def oov(self) -> int:
        return len(self.raw) + 1

    def encode(self, values: np.ndarray, unknown: str = "error", name: str = "item") -> np.ndarray:
        """Map raw ids; unknown ids raise (``unknown="error"``) or become the OOV index (``unknown="oov"``)."""
        if unknown not in ("error", "oov"):
            raise ValueError(f"unknown must be 'error' or 'oov', found {unknown!r}")
        values = np.asarray(values)
        if values.dtype.kind not in "iu":
            raise TypeError(f"{name} ids must be integers, found dtype {values.dtype}")
        if values.size and values.min() < 0:
            raise ValueError(f"{name} ids must be >= 0, found {values[values < 0][:5].tolist()}")
        index = np.searchsorted(self.raw, values).clip(max=max(len(self.raw) - 1, 0))
        known = self.raw[index] == values
        if not known.all() and unknown == "error":
            raise ValueError(f"{name} ids never seen in the training log: {np.unique(values[~known])[:5].tolist()}; "
                             f"pass unknown='oov' to map them to the OOV index {self.oov}")
        return np.where(known, index + 1, self.oov)


@dataclass
class CTRSplit:
    """One split as arrays: ``user, item, category, label`` [N] and ``history_item, history_category`` [N, L]."""

    user: np.ndarray
    item: np.ndarray
    category: np.ndarray
    label: np.ndarray
    history_item: np.ndarray
    history_category: np.ndarray

    def __len__(self) -> int:
        return len(self.item)


def _left_pad(seq: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(length, dtype=np.int64)
    seq = seq[-length:]
    out[length - len(seq):] = seq
    return out


def build_ctr_samples(frame: pl.DataFrame, max_length: int = 200, min_interactions: int = 210,
                      num_train_targets: int = 19, target_stride: int = 5, negatives: int = 2,
                      seed: int = 2024) -> tuple[dict[str, CTRSplit], Vocabulary, Vocabulary]:
    """thuml/DARE's samples from an interaction log (see the module docstring).

    Returns:
        ``({"train", "val", "test"}: CTRSplit, item vocabulary, category vocabulary)``; ids in the splits are indices.
    """
    frame = check_ctr_frame(frame)
    deepest = 3 + target_stride * (num_train_targets - 1)
    if min_interactions < deepest + 1:
        raise ValueError(f"min_interactions must be >= {deepest + 1} so that the deepest training target (position "
                         f"-{deepest}) has a history, found {min_interactions}")
    frame = frame.sort(["user", "time"], maintain_order=True)
    items = Vocabulary(np.unique(frame["item"].to_numpy()))
    categories = Vocabulary(np.unique(frame["category"].to_numpy()))
    item_index = items.encode(frame["item"].to_numpy())
    category_index = categories.encode(frame["category"].to_numpy(), name="category")
    item_category = np.zeros(items.size, dtype=np.int64)
    item_category[item_index] = category_index  # the last category seen for each item wins
    frequency = np.bincount(item_index, minlength=items.size).astype(np.float64)

    users = frame["user"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    offsets = {"train": [3 + target_stride * i for i in range(num_train_targets)], "val": [2], "test": [1]}
    rows: dict[str, list] = {split: [] for split in SPLITS}
    rng = np.random.default_rng(seed)
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end - start < min_interactions:
            continue
        seq_items, seq_cats = item_index[start:end], category_index[start:end]
        probability = frequency.copy()
        probability[np.unique(seq_items)] = 0.0
        if probability.sum() <= 0:
            raise ValueError(f"user {users[start]}: every item is in the user's sequence; no negative can be sampled")
        drawn = iter(rng.choice(items.size, size=(num_train_targets + 2) * negatives,
                                p=probability / probability.sum()))
        for split, split_offsets in offsets.items():
            for offset in split_offsets:
                t = len(seq_items) - offset
                history = (_left_pad(seq_items[:t], max_length), _left_pad(seq_cats[:t], max_length))
                rows[split].append((users[start], seq_items[t], seq_cats[t], 1, *history))
                for _ in range(negatives):
                    negative = next(drawn)
                    rows[split].append((users[start], negative, item_category[negative], 0, *history))
    if not rows["test"]:
        raise ValueError(f"no user has >= min_interactions={min_interactions} interactions "
                         f"(longest history: {int(np.diff(bounds).max())})")
    splits = {split: CTRSplit(*(np.stack(column) for column in zip(*split_rows)))
              for split, split_rows in rows.items()}
    return splits, items, categories


def read_official_split(paths: list[Path], max_length: int = 200) -> CTRSplit:
    """Rows ``[uid, iid, cid, [1, 0] | [0, 1], hist_iid, hist_cid]`` of official .npy files -> one ``CTRSplit``."""
    parts = []
    for path in paths:
        rows = np.load(path, allow_pickle=True)
        if rows.ndim != 2 or rows.shape[1] < 6:
            raise ValueError(f"{path}: expected rows [uid, iid, cid, label pair, hist_iid, hist_cid], found an array "
                             f"of shape {rows.shape}")
        label = np.array([pair[0] for pair in rows[:, 3]], dtype=np.int64)
        hist = [np.stack([_left_pad(np.asarray(h, dtype=np.int64), max_length) for h in rows[:, c]]) for c in (4, 5)]
        parts.append(CTRSplit(rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64), rows[:, 2].astype(np.int64),
                              label, hist[0].astype(np.int32), hist[1].astype(np.int32)))
    return CTRSplit(*(np.concatenate(column) for column in zip(*(vars(p).values() for p in parts))))


def read_official(folder: str | os.PathLike, max_length: int = 200) -> dict[str, CTRSplit]:
    """thuml/DARE's preprocessed folder: ``train_NNNN_COUNT.npy`` (in index order), ``val.npy``, ``test.npy``."""
    folder = Path(folder)
    train = sorted(p for p in folder.glob("train_*_*.npy") if re.fullmatch(r"train_\d+_\d+\.npy", p.name))
    missing = [name for name, ok in (("train_NNNN_COUNT.npy", train), ("val.npy", (folder / "val.npy").is_file()),
                                     ("test.npy", (folder / "test.npy").is_file())) if not ok]
    if missing:
        raise FileNotFoundError(f"{folder}: missing official DARE files {missing}")
    return {"train": read_official_split(train, max_length), "val": read_official_split([folder / "val.npy"],
            max_length), "test": read_official_split([folder / "test.npy"], max_length)}


class CTRBatches(Dataset):
    """Index a ``CTRSplit`` with a list of rows (use with a ``BatchSampler``) -> a dict batch of tensors."""

    def __init__(self, split: CTRSplit):
        # kept in their stored width (the official histories are int32), widened per batch
        self.tensors = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in vars(split).items()}

    def __len__(self) -> int:
        return len(self.tensors["item"])

    def __getitem__(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return {name: value[rows].long() for name, value in self.tensors.items()}


class CTRDataModule(SplitDataModule):
    """thuml/DARE's CTR samples from ML-100k, a synthetic log, a polars frame, or the official Taobao/Tmall files.

    Args:
        dataset: "ml-100k", "synthetic", "frame" or "official" (see the module docstring).
        data_dir: folder of ``ml-100k/`` (default ``$SSMKIT_RECSYS_DATA`` or ``../shared/data/recsys``), or of the
            official files for ``"official"``.
        frame: the interaction log for ``"frame"``.
        max_length: history length (official 200).
        min_interactions: users with fewer interactions are dropped (official 210).
        num_train_targets: training targets per user (official 19), every ``target_stride`` (5) positions from -3.
        negatives: sampled negatives per positive (official 2).
        sample_seed: seed of the negative sampling (the data is the same for every training seed).
        synthetic: keyword arguments of ``generate_interactions`` for ``"synthetic"``.
        batch_size: training batch size; eval_batch_size: validation / test batch size.
        num_workers: DataLoader workers.
    """

    def __init__(self, dataset: str = "ml-100k", data_dir: str | None = None, frame: pl.DataFrame | None = None,
                 max_length: int = 200, min_interactions: int = 210, num_train_targets: int = 19,
                 target_stride: int = 5, negatives: int = 2, sample_seed: int = 2024, synthetic: dict | None = None,
                 batch_size: int = 256, eval_batch_size: int = 1024, num_workers: int = 0):
        super().__init__()
        if dataset not in ("ml-100k", "synthetic", "frame", "official"):
            raise ValueError(f"dataset must be 'ml-100k', 'synthetic', 'frame' or 'official', found {dataset!r}")
        if (dataset == "frame") != (frame is not None):
            raise ValueError(f"frame must be given exactly when dataset='frame' (dataset={dataset!r}, frame "
                             f"{'given' if frame is not None else 'None'})")
        for name, value in (("max_length", max_length), ("batch_size", batch_size),
                            ("eval_batch_size", eval_batch_size), ("num_train_targets", num_train_targets),
                            ("target_stride", target_stride), ("negatives", negatives)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CTRDataModule: {name} must be a positive int, found {value!r}")
        self.save_hyperparameters(ignore=["frame"])
        self.frame = frame
        self.splits: dict[str, CTRSplit] | None = None
        self.items: Vocabulary | None = None
        self.categories: Vocabulary | None = None

    def _load(self) -> dict[str, CTRSplit]:
        if self.splits is not None:
            return self.splits
        hp = self.hparams
        if hp.dataset == "official":
            if hp.data_dir is None:
                raise ValueError("dataset='official' needs data_dir: the folder of train_*.npy, val.npy, test.npy")
            self.splits = read_official(hp.data_dir, hp.max_length)
            return self.splits
        if hp.dataset == "ml-100k":
            frame = read_movielens(Path(hp.data_dir or DEFAULT_DATA_DIR) / "ml-100k")
        elif hp.dataset == "synthetic":
            frame = generate_interactions(**(hp.synthetic or {}))
        else:
            frame = self.frame
        self.splits, self.items, self.categories = build_ctr_samples(
            frame, hp.max_length, hp.min_interactions, hp.num_train_targets, hp.target_stride, hp.negatives,
            hp.sample_seed)
        return self.splits

    @property
    def num_items(self) -> int:
        """Item table rows the model needs (padding, items, OOV; official: the largest id + 1)."""
        splits = self._load()
        if self.items is not None:
            return self.items.size
        return int(max(max(s.item.max(), s.history_item.max()) for s in splits.values())) + 1

    @property
    def num_categories(self) -> int:
        """Category table rows the model needs."""
        splits = self._load()
        if self.categories is not None:
            return self.categories.size
        return int(max(max(s.category.max(), s.history_category.max()) for s in splits.values())) + 1

    def encode(self, items: np.ndarray, categories: np.ndarray, unknown: str = "error") -> tuple[np.ndarray, ...]:
        """Raw item / category ids of new data -> model indices (``unknown="oov"`` maps unseen ids to OOV)."""
        self._load()
        if self.items is None:
            raise ValueError("encode: the official files are already indexed; pass their ids to the model directly")
        return (self.items.encode(items, unknown, "item"),
                self.categories.encode(categories, unknown, "category"))

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def _loader(self, split: str, train: bool) -> DataLoader:
        data = CTRBatches(self._load()[split])
        size = self.hparams.batch_size if train else self.hparams.eval_batch_size
        order = RandomSampler(data) if train else SequentialSampler(data)
        return DataLoader(data, batch_size=None, sampler=BatchSampler(order, size, drop_last=False),
                          num_workers=self.hparams.num_workers)

