"""Readers (RecBole atomic, ICLRec, ML-1M, polars frames), k-core, remapping, leave-one-out, prefix batches."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from ssmkit.recsys.data import (
    PrefixBatches,
    SequentialDataModule,
    build_sequences,
    kcore_filter,
    read_atomic,
    read_iclrec,
    read_ml1m,
)


def random_frame(n_users=12, n_items=9, per_user=(5, 15), seed=0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(u, int(rng.integers(n_items)), float(rng.integers(1000)))
            for u in range(n_users) for _ in range(int(rng.integers(*per_user)))]
    return pl.DataFrame(rows, schema=["user", "item", "time"], orient="row")


def kcore_reference(rows, k_user, k_item):
    """Plain-Python iterative k-core on (user, item) rows."""
    while True:
        users, items = {}, {}
        for u, i in rows:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        kept = [(u, i) for u, i in rows if users[u] >= k_user and items[i] >= k_item]
        if len(kept) == len(rows):
            return kept
        rows = kept


def test_atomic_reader_and_malformed_header(tmp_path):
    path = tmp_path / "toy.inter"
    path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                    "u1\ti9\t3\t20\nu1\ti7\t4\t10\nu2\ti9\t5\t30\n")
    frame = read_atomic(path)
    assert frame.columns == ["user", "item", "time"]
    assert frame.rows() == [("u1", "i9", 20.0), ("u1", "i7", 10.0), ("u2", "i9", 30.0)]
    bad = tmp_path / "bad.inter"
    bad.write_text("user_id:token\titem_id\ttimestamp:float\nu1\ti1\t1\n")
    with pytest.raises(ValueError, match="header column 2 .*'item_id'"):
        read_atomic(bad)
    bad.write_text("user_id:token\titem_id:tokn\nu1\ti1\n")
    with pytest.raises(ValueError, match="header column 2"):
        read_atomic(bad)


def test_iclrec_and_ml1m_readers(tmp_path):
    path = tmp_path / "Toy.txt"
    path.write_text("1 5 6 7\n2 6 5\n")
    assert read_iclrec(path).rows() == [(1, 5, 0), (1, 6, 1), (1, 7, 2), (2, 6, 0), (2, 5, 1)]
    path.write_text("1 5 -6 7\n")
    with pytest.raises(ValueError, match="item ids must be integers >= 0, found '-6'"):
        read_iclrec(path)
    path.write_text("1 5 2.5\n")
    with pytest.raises(ValueError, match="found '2.5'"):
        read_iclrec(path)
    ratings = tmp_path / "ratings.dat"
    ratings.write_text("1::1193::5::978300760\n1::661::3::978302109\n")
    assert read_ml1m(ratings).rows() == [(1, 1193, 978300760.0), (1, 661, 978302109.0)]
    ratings.write_text("1::1193::5\n")
    with pytest.raises(ValueError, match="line 1"):
        read_ml1m(ratings)


def test_frame_checks():
    with pytest.raises(ValueError, match="missing column"):
        build_sequences(pl.DataFrame({"user": [1], "item": [2]}))
    with pytest.raises(ValueError, match="ids >= 0"):
        build_sequences(pl.DataFrame({"user": [1, 1], "item": [-2, 3], "time": [0, 1]}))
    with pytest.raises(TypeError, match="integer or string ids"):
        build_sequences(pl.DataFrame({"user": [1, 1], "item": [2.5, 3.0], "time": [0, 1]}))


def test_kcore_is_iterative():
    frame = random_frame(n_users=20, n_items=12, per_user=(3, 10), seed=6)
    ours = kcore_filter(frame, 5, 5)
    expected = kcore_reference(list(zip(frame["user"], frame["item"])), 5, 5)
    assert sorted(zip(ours["user"], ours["item"])) == sorted(expected)
    one_pass = frame.filter(pl.len().over("item") >= 5).filter(pl.len().over("user") >= 5)
    assert 0 < ours.height < one_pass.height  # this frame needs a second round


def test_leave_one_out_split_and_remapping():
    frame = random_frame()
    data = build_sequences(frame, user_min=1, item_min=1)
    assert data.n_items == frame["item"].n_unique() + 1 and int(data.items.min()) == 1
    for u, start in enumerate(data.user_start):
        user = frame.filter(pl.col("user") == data.user_ids[u]).with_row_index().sort(["time", "index"])
        raw = [data.item_ids[i] for i in data.items[start:start + user.height]]
        assert raw == user["item"].to_list()  # time order, ties in file order
    n = np.diff([*data.user_start, len(data.items)])
    assert len(data.samples["test"]) == len(data.samples["val"]) == len(n)
    assert len(data.samples["train"]) == int((n - 3).sum())
    assert (data.samples["test"] == np.cumsum(n) - 1).all()
    assert data.encode([frame["item"][0]]) == [int(data.items[np.flatnonzero(
        [data.item_ids[i] == frame["item"][0] for i in data.items])[0]])]
    with pytest.raises(ValueError, match="never seen"):
        data.encode([10_000])
    assert data.encode([10_000, frame["item"][0]], unknown="drop") == data.encode([frame["item"][0]])


def test_prefix_batches_truncate_and_right_pad():
    data = build_sequences(random_frame(seed=1), user_min=1, item_min=1)
    for split in ("train", "val", "test"):
        batches = PrefixBatches(data, split, max_len=4)
        index = list(range(len(batches)))
        batch = batches[index]
        for j, pos in enumerate(data.samples[split]):
            start = data.user_start[np.searchsorted(data.user_start, pos, side="right") - 1]
            prefix = data.items[max(start, pos - 4):pos].tolist()
            assert batch["item_seq"][j].tolist() == prefix + [0] * (4 - len(prefix))
            assert int(batch["lengths"][j]) == len(prefix) and int(batch["target"][j]) == data.items[pos]


def test_datamodule_from_frame_and_arguments():
    dm = SequentialDataModule(frame=random_frame(), max_len=6, batch_size=8, eval_batch_size=5, user_min=1,
                              item_min=1)
    batch = next(iter(dm.train_dataloader()))
    assert batch["item_seq"].shape == (8, 6) and batch["item_seq"].dtype == torch.int64
    assert sum(len(b["target"]) for b in dm.test_dataloader()) == 12
    with pytest.raises(ValueError, match="max_len"):
        SequentialDataModule(frame=random_frame(), max_len=0)
    with pytest.raises(ValueError, match="exactly one"):
        SequentialDataModule()
    with pytest.raises(ValueError, match="nothing left"):
        SequentialDataModule(frame=random_frame(per_user=(2, 3)))
