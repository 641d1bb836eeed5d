"""CTR metrics against independent implementations of AUC, thuml/DARE's category_average_auc, MI and NDCG."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.recsys.ctr_metrics import CategoryMutualInformation, ctr_metrics, retrieval_ndcg


def official_auc(pairs: list[tuple[float, int]]) -> float:
    """utils.calc_auc semantics: sort by score, walk the ROC, trapezoids where the FP rate moves."""
    pairs = sorted(pairs, key=lambda d: d[0], reverse=True)
    pos = sum(1 for _, t in pairs if t == 1)
    neg = len(pairs) - pos
    fp = tp = 0
    auc = prev_x = prev_y = 0.0
    for _, t in pairs:
        tp, fp = tp + (t == 1), fp + (t != 1)
        x, y = fp / neg, tp / pos
        if x != prev_x:
            auc += (x - prev_x) * (y + prev_y) / 2
            prev_x, prev_y = x, y
    return auc


def exact_auc(pairs: list[tuple[float, int]]) -> float:
    """P(score of a positive > score of a negative), ties 1/2 (Mann-Whitney), by brute force."""
    pos = [p for p, t in pairs if t == 1]
    neg = [p for p, t in pairs if t != 1]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def data(n: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    label = (torch.rand(n, generator=g) < 0.35).long()
    logits = torch.randn(n, generator=g) + 1.2 * label  # continuous: no ties
    groups = torch.randint(0, 6, (n,), generator=g)
    groups[:7], label[:7] = 9, 1  # a single-class group: left out of GAUC
    return logits, label, groups


def test_auc_gauc_logloss_match_the_official_definitions() -> None:
    logits, label, groups = data()
    metrics = ctr_metrics("test/")
    for chunk in range(0, 300, 64):  # accumulation over batches equals one pass
        part = slice(chunk, chunk + 64)
        metrics.update(logits[part], label[part], groups=groups[part])
    out = metrics.compute()
    p = torch.sigmoid(logits.double())
    pairs = list(zip(p.tolist(), label.tolist()))
    assert out["test/auc"].item() == pytest.approx(exact_auc(pairs), abs=1e-6)
    # the official calc_auc draws trapezoids between negatives: it reads low by at most 1 / (2 * negatives)
    negatives = int((label == 0).sum())
    assert 0 <= exact_auc(pairs) - official_auc(pairs) <= 1 / (2 * negatives) + 1e-12
    total = weight = 0.0
    for c in set(groups.tolist()):
        member = groups == c
        if label[member].min() == label[member].max():
            continue
        total += member.sum().item() * exact_auc(list(zip(p[member].tolist(), label[member].tolist())))
        weight += member.sum().item()
    assert out["test/gauc"].item() == pytest.approx(total / weight, abs=1e-6)
    logloss = -(label * p.log() + (1 - label) * (1 - p).log()).mean().item()
    assert out["test/logloss"].item() == pytest.approx(logloss, abs=1e-6)


def test_bad_metric_input_raises() -> None:
    metrics = ctr_metrics()
    with pytest.raises(ValueError, match="0/1 labels"):
        metrics.update(torch.zeros(3), torch.tensor([0, 2, 1]), groups=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="both be"):
        metrics.update(torch.zeros(3), torch.tensor([0, 1]), groups=torch.zeros(3, dtype=torch.long))


def official_mi(x_p: float, x_n: float, t_p: float, t_n: float) -> float:
    """calc_gt.py / gsu_performance.py mutual information of one (target cat, behaviour cat, position)."""
    s = t_p + t_n
    m1 = x_p / s * math.log2(x_p * s / ((x_p + x_n) * t_p))
    m2 = x_n / s * math.log2(x_n * s / ((x_p + x_n) * t_n))
    m3 = (t_p - x_p) / s * math.log2((t_p - x_p) * s / ((t_p + t_n - x_p - x_n) * t_p))
    m4 = (t_n - x_n) / s * math.log2((t_n - x_n) * s / ((t_p + t_n - x_p - x_n) * t_n))
    return m1 + m2 + m3 + m4


def test_mutual_information_from_counts() -> None:
    # 10 samples of target category 1, history length 2; position 1 = the last column
    label = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    history_category = torch.tensor([[2, 3]] * 3 + [[2, 2]] + [[3, 3]] * 3 + [[2, 2]] * 2 + [[2, 3]])
    history_item = torch.ones_like(history_category)
    target = torch.ones(10, dtype=torch.long)
    mi = CategoryMutualInformation(target, history_category, history_item, label, min_target_samples=1,
                                   min_count=1, max_rare=2)
    relevance, rows = mi.relevance(target[:1], torch.tensor([[2, 3]]), torch.tensor([[0, 1]]))
    # position 1 (last column), category 3: 3 positives of 4 and 4 negatives of 6 have it
    assert relevance[0, 1].item() == pytest.approx(official_mi(3, 4, 4, 6), rel=1e-9)
    assert relevance[0, 0].item() == float("-inf") and rows.tolist() == [True]
    strict = CategoryMutualInformation(target, history_category, history_item, label, min_target_samples=11)
    assert strict.relevance(target[:1], torch.tensor([[2, 3]]), torch.tensor([[1, 1]]))[1].tolist() == [False]


def test_retrieval_ndcg() -> None:
    relevance = torch.tensor([[0.5, 0.1, 0.9, 0.0], [1.0, 2.0, 3.0, float("-inf")]])
    perfect = retrieval_ndcg(relevance.nan_to_num(neginf=-1.0), relevance, k=2)
    assert torch.allclose(perfect, torch.ones(2, dtype=torch.float64))
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 9.0]])
    got = retrieval_ndcg(scores, relevance, k=2)
    ideal0 = 0.9 + 0.5 / math.log2(3)
    assert got[0].item() == pytest.approx((0.5 + 0.1 / math.log2(3)) / ideal0)
    assert got[1].item() < 1.0  # the padding pick counts 0
