"""BERT4Rec against an independent RecBole-style forward (bidirectional mask, RecBole's test-data reconstruction),
its training masks against RecBole's masking rules, its loss against a per-position loop, and learning a rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.recsys.models.bert4rec import BERT4Rec

from .test_baselines import _perturbed, recbole_sasrec_forward


def _batch(n_items=40, lengths=(10, 4, 1, 7), width=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    item_seq = torch.randint(1, n_items, (len(lengths), width), generator=g)
    return item_seq.masked_fill(torch.arange(width) >= lengths[:, None], 0), lengths


def test_scores_match_recbole_full_sort_predict():
    torch.manual_seed(0)
    model = _perturbed(BERT4Rec(40, hidden_size=16, inner_size=32, max_len=10))
    item_seq, lengths = _batch()
    # RecBole's reconstruct_test_data, row by row: MASK at position `length`, then drop the first column
    rebuilt = torch.cat([item_seq, torch.zeros(4, 1, dtype=torch.long)], dim=1)
    for row, length in enumerate(lengths.tolist()):
        rebuilt[row, length] = model.mask_token
    rebuilt = rebuilt[:, 1:]
    sd = model.state_dict()
    out = recbole_sasrec_forward(sd, rebuilt, lengths, n_layers=2, n_heads=2, causal=False)  # [B, H]
    expected = out @ sd["item_embedding.weight"][:40].T
    with torch.no_grad():
        torch.testing.assert_close(model.full_sort_scores(item_seq, lengths), expected, rtol=1e-4, atol=1e-5)
    assert model.full_sort_scores(item_seq, lengths).shape == (4, 40)  # the MASK row is not an item


def test_random_masks_follow_recbole():
    model = BERT4Rec(30, max_len=20, ft_ratio=0.0)  # mask_item_length = 4
    item_seq, lengths = _batch(n_items=30, lengths=[20] * 300 + [3] * 100 + [1] * 100, width=20)
    torch.manual_seed(1)
    hidden, predicted = model.training_masks(item_seq, lengths)
    valid = item_seq > 0
    assert not (hidden & ~valid).any() and not (predicted & ~hidden).any()
    assert not predicted[:, 0].any()  # RecBole's `masked_index > 0`
    assert hidden[:, 0].any()  # ... although first items are hidden
    assert (predicted.sum(1) <= 4).all()
    for row in range(item_seq.shape[0]):  # the predicted positions are the last <= 4 hidden ones (position 0 out)
        positions = hidden[row].nonzero().flatten().tolist()[-4:]
        assert predicted[row].nonzero().flatten().tolist() == [p for p in positions if p > 0]
    rate = float(hidden.sum()) / float(valid.sum())
    assert 0.17 < rate < 0.23  # mask_ratio 0.2


def test_fine_tuning_batches_mask_the_last_item():
    model = BERT4Rec(30, max_len=10, ft_ratio=1.0)
    item_seq, lengths = _batch(n_items=30)
    hidden, predicted = model.training_masks(item_seq, lengths)
    assert hidden.sum(1).tolist() == [1, 1, 1, 1]
    assert hidden[torch.arange(4), lengths - 1].all()
    assert predicted.sum(1).tolist() == [1, 1, 0, 1]  # length 1: the hidden item sits at position 0


def test_loss_is_ce_over_the_predicted_positions():
    model = BERT4Rec(40, hidden_size=16, inner_size=32, max_len=10, hidden_dropout=0.0, attn_dropout=0.0,
                     mask_ratio=0.3, ft_ratio=0.0)
    item_seq, lengths = _batch()
    torch.manual_seed(5)
    loss = model.training_loss(item_seq, lengths, torch.zeros(4, dtype=torch.long))
    torch.manual_seed(5)
    hidden, predicted = model.training_masks(item_seq, lengths)
    assert predicted.any()
    sequence = recbole_sasrec_forward(model.state_dict(), item_seq.masked_fill(hidden, 40), None, n_layers=2,
                                      n_heads=2, causal=False)  # [B, L, H]
    terms = []
    for row, position in predicted.nonzero().tolist():
        logits = sequence[row, position] @ model.item_embedding.weight[:40].T  # [n_items]
        terms.append(F.cross_entropy(logits[None], item_seq[row, position][None]))
    torch.testing.assert_close(loss.detach(), torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


def test_no_predicted_position_gives_a_zero_loss_with_gradients():
    model = BERT4Rec(20, hidden_size=8, inner_size=16, max_len=5, ft_ratio=1.0)
    loss = model.training_loss(torch.tensor([[3, 0, 0]]), torch.tensor([1]), torch.tensor([4]))
    assert float(loss.detach()) == 0.0 and loss.requires_grad


def test_learns_a_next_item_rule():
    # next item = previous item + 1 (mod 19, ids 1..19), learned through masking alone. Histories of length 1 are
    # left out: RecBole's scoring drops the first column, so such a row is scored from the MASK alone.
    torch.manual_seed(0)
    model = BERT4Rec(20, hidden_size=16, inner_size=32, max_len=6, hidden_dropout=0.0, attn_dropout=0.0,
                     mask_ratio=0.5)

    def batch(size=64):
        start = torch.randint(1, 20, (size,))
        seq = (start[:, None] + torch.arange(7) - 1) % 19 + 1  # [size, 7]
        lengths = torch.randint(2, 7, (size,))
        return seq[:, :6].masked_fill(torch.arange(6) >= lengths[:, None], 0), lengths, seq[torch.arange(size), lengths]

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = model.training_loss(*batch())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    item_seq, lengths, target = batch(256)
    with torch.no_grad():
        top1 = model.eval().full_sort_scores(item_seq, lengths)[:, 1:].argmax(1) + 1
    assert (top1 == target).float().mean() > 0.9


@pytest.mark.parametrize("kwargs, match", [({"mask_ratio": 1.5}, "mask_ratio"), ({"ft_ratio": -0.1}, "ft_ratio"),
                                           ({"mask_ratio": 0.01, "max_len": 10}, "mask_ratio \\* max_len")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BERT4Rec(20, **kwargs)


def test_the_lightning_module_trains_it_with_its_own_loss(tmp_path, monkeypatch):
    import lightning as L

    from ssmkit.recsys.data import SequentialDataModule
    from ssmkit.recsys.module import SequentialRecommender

    from .test_data import random_frame

    calls = []
    original = BERT4Rec.training_loss
    monkeypatch.setattr(BERT4Rec, "training_loss", lambda self, *args: calls.append(1) or original(self, *args))
    dm = SequentialDataModule(frame=random_frame(n_users=20), max_len=5, batch_size=8, user_min=1, item_min=1)
    module = SequentialRecommender("bert4rec", {"hidden_size": 8, "inner_size": 16})
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    assert len(calls) == 2
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert 0.0 <= metrics["test/ndcg@10"] <= 1.0
