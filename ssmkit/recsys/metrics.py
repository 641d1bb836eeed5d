"""Full-ranking top-k metrics with one target per row (RecBole's full sort, sequential protocol).

Every item is ranked; only the PAD column 0 is masked (items the user has seen stay in the ranking, as in RecBole's
sequential evaluation). With rank r (1 = best) of the target: HR@k = [r <= k], NDCG@k = [r <= k] / log2(r + 1),
MRR@k = [r <= k] / r, each averaged over rows. Ties are broken in the target's favour (items scoring strictly higher
count), which is what a top-k with the target first among equals gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

__all__ = ["RankingMetrics", "ranking_metrics", "target_ranks"]

METRICS = ("hr", "ndcg", "mrr")


def target_ranks(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among all items but PAD.

    Args:
        scores: [B, n_items] (column 0 is PAD and never ranks above the target).
        target: [B] item ids in [1, n_items).

    Returns:
        [B] int64 ranks.
    """
    if scores.dim() != 2 or target.shape != scores.shape[:1]:
        raise ValueError(f"scores must be [B, n_items] and target [B], found {list(scores.shape)} and "
                         f"{list(target.shape)}")
    if target.numel() and (int(target.min()) < 1 or int(target.max()) >= scores.shape[1]):
        raise ValueError(f"target ids must lie in [1, n_items={scores.shape[1]}), found range "
                         f"[{int(target.min())}, {int(target.max())}]")
    target_score = scores.gather(1, target[:, None])  # [B, 1]
    higher = scores[:, 1:] > target_score  # [B, n_items - 1], PAD left out
    return higher.sum(1) + 1  # [B]


def ranking_metrics(ranks: torch.Tensor, ks: Sequence[int] = (5, 10, 20)) -> dict[str, torch.Tensor]:
    """Per-row HR / NDCG / MRR at each k from the target ranks [B]; returns ``{"hr@10": [B], ...}``."""
    ranks = ranks.double()  # [B]
    out = {}
    for k in ks:
        hit = (ranks <= k).double()  # [B]
        out[f"hr@{k}"] = hit
        out[f"ndcg@{k}"] = hit / torch.log2(ranks + 1)
        out[f"mrr@{k}"] = hit / ranks
    return out


class RankingMetrics(Metric):
    """Accumulates HR / NDCG / MRR at each k over all rows of a split (sums and counts; ``compute`` gives means).

    Args:
        ks: cut-offs, e.g. (5, 10, 20).
    """

    full_state_update = False

    def __init__(self, ks: Sequence[int] = (5, 10, 20)) -> None:
        super().__init__()
        if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
            raise ValueError(f"ks must be a non-empty list of positive ints, found {ks!r}")
        self.ks = tuple(ks)
        self.names = [f"{m}@{k}" for k in self.ks for m in METRICS]
        self.add_state("sums", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> None:
        """scores [B, n_items], target [B]."""
        per_row = ranking_metrics(target_ranks(scores, target), self.ks)
        self.sums += torch.stack([per_row[name].sum() for name in self.names])
        self.count += target.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        return {name: self.sums[i] / self.count for i, name in enumerate(self.names)}
