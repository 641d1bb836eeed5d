"""CTR data: thuml/DARE's sample construction, negative sampling, official file loader, bad input (generated data)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ssmkit.recsys.ctr_data import CTRDataModule, Vocabulary, build_ctr_samples, check_ctr_frame, read_movielens

L = 20


def log(lengths: dict[int, int], num_items: int = 400) -> pl.DataFrame:
    """User u's t-th interaction is item 1000 * (u + 1) + t (unique, so positions can be read back), category t % 3;
    filler users browse items 0..num_items-1 so that the frequency sampler has a pool."""
    rows = [(u, 1000 * (u + 1) + t, t % 3, t) for u, n in lengths.items() for t in range(n)]
    rows += [(10_000 + i // 50, i, 7, i) for i in range(num_items)]  # short filler users: never sampled
    return pl.DataFrame(rows, schema=["user", "item", "category", "time"], orient="row")


def test_targets_histories_and_padding_follow_the_official_positions() -> None:
    frame = log({0: 130, 1: 94, 2: 93})  # user 2 has too few interactions and is dropped
    splits, items, _ = build_ctr_samples(frame, max_length=L, min_interactions=94, seed=0)
    raw = items.raw  # index i <-> raw[i - 1]
    positives = {s: (split.user[split.label == 1], split.item[split.label == 1], split.history_item[split.label == 1])
                 for s, split in splits.items()}
    users, targets, histories = positives["train"]
    assert sorted(set(users.tolist())) == [0, 1] and len(targets) == 2 * 19
    for user, n in ((0, 130), (1, 94)):
        mine = users == user
        expected_t = [n - 3 - 5 * j for j in range(19)]  # positions -3, -8, ..., -93
        assert sorted(raw[targets[mine] - 1] - 1000 * (user + 1)) == sorted(expected_t)
        for target, history in zip(targets[mine], histories[mine]):
            t = raw[target - 1] - 1000 * (user + 1)
            valid = history[history > 0]
            assert (history[: L - len(valid)] == 0).all()  # left padding
            assert (raw[valid - 1] - 1000 * (user + 1)).tolist() == list(range(max(0, t - L), t))
    for split, offset in (("val", 2), ("test", 1)):
        users, targets, histories = positives[split]
        assert (raw[targets[users == 0] - 1] - 1000).tolist() == [130 - offset]
        assert (raw[histories[users == 0][0] - 1] - 1000).tolist() == list(range(130 - offset - L, 130 - offset))


def test_negatives_two_per_positive_by_frequency_never_from_the_user_sequence() -> None:
    frame = log({0: 120, 1: 120})
    popular = pl.DataFrame({"user": [20_000 + t // 50 for t in range(3000)], "item": [5] * 3000,
                            "category": [7] * 3000, "time": list(range(3000))})
    frame = pl.concat([frame, popular])
    splits, items, categories = build_ctr_samples(frame, max_length=L, min_interactions=94, seed=1)
    for split in splits.values():
        assert (split.label == 0).sum() == 2 * (split.label == 1).sum()
    train = splits["train"]
    negatives = train.item[train.label == 0]
    own = set(train.item[(train.label == 1) & (train.user == 0)]) | set(train.history_item[train.user == 0].ravel())
    assert not own & set(negatives[train.user[train.label == 0] == 0].tolist())
    assert (negatives == items.encode(np.array([5]))[0]).mean() > 0.5  # item 5 holds ~3000 / 3640 of the log
    raw = items.raw[negatives - 1]
    expected = categories.encode(np.where(raw < 1000, 7, raw % 1000 % 3), name="category")  # the item's category
    assert (train.category[train.label == 0] == expected).all()


def test_vocabulary_unknown_ids_error_or_oov() -> None:
    vocab = Vocabulary(np.array([3, 7, 10]))
    assert vocab.encode(np.array([10, 3])).tolist() == [3, 1] and vocab.size == 5
    with pytest.raises(ValueError, match=r"never seen in the training log: \[8\]"):
        vocab.encode(np.array([3, 8]))
    assert vocab.encode(np.array([3, 8]), unknown="oov").tolist() == [1, 4]
    with pytest.raises(ValueError, match=">= 0"):
        vocab.encode(np.array([-1]))
    with pytest.raises(TypeError, match="integers"):
        vocab.encode(np.array([1.5]))


def test_bad_logs_raise_clear_errors() -> None:
    frame = log({0: 100})
    with pytest.raises(TypeError, match="'item' must hold integer ids, found dtype Float64"):
        check_ctr_frame(frame.with_columns(pl.col("item").cast(pl.Float64)))
    with pytest.raises(ValueError, match="'user' must hold ids >= 0"):
        check_ctr_frame(frame.with_columns(pl.when(pl.col("time") == 0).then(-1).otherwise(pl.col("user"))
                                           .alias("user")))
    with pytest.raises(ValueError, match="missing columns"):
        check_ctr_frame(frame.drop("category"))
    with pytest.raises(ValueError, match="min_interactions must be >= 94"):
        build_ctr_samples(frame, min_interactions=50)
    with pytest.raises(ValueError, match="no user has >= min_interactions=210"):
        build_ctr_samples(frame, min_interactions=210)
    with pytest.raises(ValueError, match="frame must be given exactly when"):
        CTRDataModule(dataset="frame")


def test_datamodule_batches_keep_every_eval_sample() -> None:
    data = CTRDataModule(dataset="frame", frame=log({0: 100, 1: 110, 2: 97}), max_length=L, min_interactions=94,
                         batch_size=16, eval_batch_size=4)
    data.setup("fit")
    assert data.num_items == 400 + 100 + 110 + 97 + 2 and data.num_categories == 4 + 2
    val = list(data.val_dataloader())
    assert sum(len(b["item"]) for b in val) == 9 and val[0]["history_item"].shape == (4, L)
    first = next(iter(data.train_dataloader()))
    assert set(first) == {"user", "item", "category", "label", "history_item", "history_category"}
    items, cats = data.encode(np.array([1001, 123456]), np.array([0, 1]), unknown="oov")
    assert items[1] == data.num_items - 1 and cats.tolist() == [1, 2]


def test_official_npy_files(tmp_path) -> None:
    def rows(n: int, start: int) -> np.ndarray:
        out = [[u, start + u, 3, [1, 0] if u % 3 == 0 else [0, 1], [0] * (L - 5) + [1, 2, 3, 4, start + u],
                [0] * (L - 5) + [1, 1, 2, 2, 3]] for u in range(n)]
        return np.asarray(out, dtype=object)

    np.save(tmp_path / "train_0001_6.npy", rows(6, 10))
    np.save(tmp_path / "train_0002_3.npy", rows(3, 20))
    np.save(tmp_path / "val.npy", rows(3, 30))
    np.save(tmp_path / "test.npy", rows(3, 40))
    data = CTRDataModule(dataset="official", data_dir=str(tmp_path), max_length=L + 4)
    data.setup("fit")
    train = data.splits["train"]
    assert len(train) == 9 and train.label.tolist() == [1, 0, 0] * 3
    assert train.history_item.shape == (9, L + 4) and (train.history_item[:, :9] == 0).all()  # re-padded on the left
    assert data.num_items == 43 and data.num_categories == 4
    with pytest.raises(FileNotFoundError, match=r"missing official DARE files \['val.npy'\]"):
        (tmp_path / "val.npy").unlink()
        CTRDataModule(dataset="official", data_dir=str(tmp_path)).setup("fit")


def test_read_movielens_genre_sets_as_categories(tmp_path) -> None:
    (tmp_path / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                            "1\t10\t3\t5\n1\t11\t4\t3\n2\t10\t5\t1\n")
    (tmp_path / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\t"
                                           "class:token_seq\n10\tA\t1995\tComedy Romance\n11\tB\tV\tDrama\n")
    frame = read_movielens(tmp_path)
    assert frame.columns == ["user", "item", "category", "time"] and frame.height == 3
    assert frame.filter(pl.col("item") == 10)["category"].n_unique() == 1
    assert frame["category"].n_unique() == 2
