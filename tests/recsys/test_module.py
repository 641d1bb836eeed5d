"""SequentialRecommender: model built from the data module in setup, full-ranking metrics over a whole split,
refusal of a model whose n_items / max_len differ from the data."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from ssmkit.recsys.data import SequentialDataModule
from ssmkit.recsys.metrics import ranking_metrics, target_ranks
from ssmkit.recsys.module import SequentialRecommender

from .test_data import random_frame

TINY = {"hidden_size": 8, "d_state": 2, "backend": "naive"}


def _trainer(tmp_path):
    return L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)


def test_setup_builds_from_the_data_and_test_metrics_cover_the_split(tmp_path):
    dm = SequentialDataModule(frame=random_frame(n_users=20), max_len=5, batch_size=8, eval_batch_size=7,
                              user_min=1, item_min=1)
    module = SequentialRecommender("mamba4rec", TINY)
    assert module.model is None
    trainer = _trainer(tmp_path)
    trainer.fit(module, datamodule=dm)
    assert module.model.n_items == dm.n_items and module.hparams.max_len == 5
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    with torch.no_grad():
        batch = dm.datasets["test"][list(range(20))]
        scores = module.eval()(batch["item_seq"], batch["lengths"])
    expected = ranking_metrics(target_ranks(scores, batch["target"]), (5, 10, 20))
    for name in ("hr@10", "ndcg@10", "mrr@5", "ndcg@20"):
        assert metrics[f"test/{name}"] == pytest.approx(float(expected[name].mean()), abs=1e-6)


def test_model_for_other_data_is_refused(tmp_path):
    dm = SequentialDataModule(frame=random_frame(), max_len=5, user_min=1, item_min=1)
    module = SequentialRecommender("mamba4rec", TINY, n_items=dm.n_items + 3, max_len=5)
    with pytest.raises(ValueError, match=f"n_items={dm.n_items + 3}.*n_items={dm.n_items}"):
        _trainer(tmp_path).fit(module, datamodule=dm)
