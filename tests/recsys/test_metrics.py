"""Full-ranking metrics: ranks against a sort, closed-form values, accumulation over batches, PAD masking."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.recsys.metrics import RankingMetrics, ranking_metrics, target_ranks


def test_ranks_match_a_full_sort_and_ignore_pad():
    torch.manual_seed(0)
    scores = torch.randn(64, 40)
    target = torch.randint(1, 40, (64,))
    scores[:, 0] = 1e9  # PAD scores highest but must never count
    ranks = target_ranks(scores, target)
    order = scores[:, 1:].argsort(dim=1, descending=True) + 1  # [B, 39]
    expected = (order == target[:, None]).float().argmax(1) + 1
    assert ranks.tolist() == expected.tolist()


def test_closed_form_values():
    out = ranking_metrics(torch.tensor([1, 3, 10, 11]), ks=(10,))
    assert out["hr@10"].tolist() == [1, 1, 1, 0]
    assert out["ndcg@10"].tolist() == pytest.approx([1.0, 0.5, 1 / math.log2(11), 0.0])
    assert out["mrr@10"].tolist() == pytest.approx([1.0, 1 / 3, 0.1, 0.0])


def test_accumulates_over_batches_as_one_pass():
    torch.manual_seed(1)
    scores, target = torch.randn(50, 30), torch.randint(1, 30, (50,))
    metric = RankingMetrics([5, 10])
    metric.update(scores[:17], target[:17])
    metric.update(scores[17:], target[17:])
    once = ranking_metrics(target_ranks(scores, target), (5, 10))
    for name, value in metric.compute().items():
        assert float(value) == pytest.approx(float(once[name].mean()))


def test_bad_input():
    with pytest.raises(ValueError, match="target ids"):
        target_ranks(torch.randn(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="scores must be"):
        target_ranks(torch.randn(5), torch.tensor([1]))
    with pytest.raises(ValueError, match="ks must be"):
        RankingMetrics([0])
