"""CTR metrics (AUC, GAUC, logloss, through torchmetrics) and the retrieval quality of a search stage (NDCG@k).

As thuml/DARE computes them (``train_pytorch.py``, ``utils.py``; facts only):

- AUC over all samples of a split: the exact AUC (``BinaryAUROC``, ties count 1/2). The official ``calc_auc`` draws
  trapezoids between consecutive negatives, so it reads lower by up to 1 / (2 * negatives of the group) and depends
  on the order of tied scores: negligible on Taobao's test set, not on small category groups (tested);
- GAUC = the official ``category_average_auc``: AUC per TARGET CATEGORY, averaged with weights = the group sizes;
  groups holding one class only are left out of both sums (the official ``try/except`` around a division by zero);
- logloss = mean binary cross-entropy of the click probability (the official evaluation loss adds the auxiliary
  loss; ours is the main prediction only).

Every metric takes click LOGITS (``DARE.forward``); probabilities are computed in float64.

Retrieval quality (``analysis/attention_accuracy_analysis/calc_gt.py`` and ``gsu_performance.py``): the ground-truth
relevance of a behaviour of category ``c_b`` at position ``p`` (1 = most recent) for a target of category ``c_t`` is the
mutual information between "the history has category c_b at position p" and the click label, estimated from counts
over samples with target category ``c_t`` (zero counts read 1e-5). A search stage is scored by NDCG@k of its top-k
against that relevance (``retrieval_ndcg``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.aggregation import MeanMetric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.functional.classification import binary_auroc

__all__ = ["AUC", "CategoryMutualInformation", "GroupedAUC", "LogLoss", "ctr_metrics", "retrieval_ndcg"]


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    if not logits.dtype.is_floating_point:
        raise TypeError(f"CTR metrics: logits must be a float tensor, found {logits.dtype}")
    return torch.sigmoid(logits.double())


def _check(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.dim() != 1 or target.shape != logits.shape:
        raise ValueError(f"CTR metrics: logits and target must both be [N], found {tuple(logits.shape)} and "
                         f"{tuple(target.shape)}")
    bad = ~((target == 0) | (target == 1))
    if bad.any():
        raise ValueError(f"CTR metrics: target must hold 0/1 labels, found {target[bad][:5].tolist()}")
    return target.long()


class AUC(BinaryAUROC):
    """AUC of click logits [N] against 0/1 labels [N] over everything seen since the last reset."""

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        super().update(_probabilities(logits), _check(logits, target))


class LogLoss(MeanMetric):
    """Mean binary cross-entropy of click logits [N] against 0/1 labels [N]."""

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        target = _check(logits, target)
        super().update(F.binary_cross_entropy_with_logits(logits.double(), target.double(), reduction="none"))


class GroupedAUC(Metric):
    """GAUC: AUC per group (the target category), weighted by group size; single-class groups are left out."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("probs", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")
        self.add_state("groups", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, target: torch.Tensor, groups: torch.Tensor) -> None:
        """logits, target, groups: [N] (groups: integer ids, e.g. the target category)."""
        target = _check(logits, target)
        if groups.shape != logits.shape or groups.dtype.is_floating_point:
            raise ValueError(f"GroupedAUC: groups must be an integer [N] tensor like logits {tuple(logits.shape)}, "
                             f"found {groups.dtype} {tuple(groups.shape)}")
        self.probs.append(_probabilities(logits))
        self.labels.append(target)
        self.groups.append(groups.long())

    def compute(self) -> torch.Tensor:
        probs, labels, groups = (torch.cat(x) if isinstance(x, list) else x
                                 for x in (self.probs, self.labels, self.groups))
        total, weight = torch.zeros((), dtype=torch.float64), 0
        for group in groups.unique():
            members = groups == group
            group_labels = labels[members]
            if group_labels.min() == group_labels.max():
                continue
            total = total + members.sum() * binary_auroc(probs[members], group_labels)
            weight += int(members.sum())
        return total / weight if weight else torch.tensor(float("nan"), dtype=torch.float64)


def ctr_metrics(prefix: str = "") -> MetricCollection:
    """``{prefix}auc``, ``{prefix}gauc``, ``{prefix}logloss``; ``update(logits, target, groups=category)``."""
    return MetricCollection({"auc": AUC(), "gauc": GroupedAUC(), "logloss": LogLoss()}, prefix=prefix)


class CategoryMutualInformation:
    """Ground-truth relevance of (target category, behaviour category, position) from labelled samples.

    Args:
        target_category: [N] target category of each sample.
        history_category: [N, L] behaviour categories, left-padded (``history_item == 0`` marks padding).
        history_item: [N, L] behaviour items (only to find the padding).
        label: [N] 0/1 click labels.
        min_target_samples: a target category with fewer samples is not scored (official 700).
        min_count: a (target cat, behaviour cat, position) seen fewer times among positives or among negatives is
            "rare" (official 50).
        max_rare: a row with more rare behaviours is not scored (official 20).
    """

    def __init__(self, target_category: torch.Tensor, history_category: torch.Tensor, history_item: torch.Tensor,
                 label: torch.Tensor, min_target_samples: int = 700, min_count: int = 50, max_rare: int = 20):
        length = history_category.shape[1]
        self.length, self.min_target_samples = length, min_target_samples
        self.min_count, self.max_rare = min_count, max_rare
        self.num_categories = int(max(target_category.max(), history_category.max())) + 1
        label = label.long()
        keys = self._keys(target_category[:, None].expand_as(history_category), history_category)  # [N, L]
        valid = history_item > 0  # [N, L]
        self.keys, counts = [], []
        for y in (1, 0):
            chosen = keys[valid & (label[:, None] == y)]
            unique, count = chosen.unique(return_counts=True)
            self.keys.append(unique)
            counts.append(count.double())
        self.counts = counts
        self.target_counts = [torch.bincount(target_category[label == y], minlength=self.num_categories).double()
                              for y in (1, 0)]

    def _keys(self, target_category: torch.Tensor, history_category: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(self.length, 0, -1).expand_as(history_category)  # [N, L], 1 = most recent
        return (target_category.long() * self.num_categories + history_category.long()) * (self.length + 1) \
            + positions

    def _lookup(self, keys: torch.Tensor, y: int) -> torch.Tensor:
        table, counts = self.keys[y], self.counts[y]
        where = torch.searchsorted(table, keys).clamp(max=max(len(table) - 1, 0))
        found = (table[where] == keys) if len(table) else torch.zeros_like(keys, dtype=torch.bool)
        return torch.where(found, counts[where] if len(table) else torch.zeros_like(keys, dtype=torch.float64),
                           torch.full_like(keys, 1e-5, dtype=torch.float64))

    def relevance(self, target_category: torch.Tensor, history_category: torch.Tensor,
                  history_item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mutual information [B, L] (padding: -inf) and a [B] mask of the rows that pass the official filters."""
        if history_category.shape[1] != self.length:
            raise ValueError(f"relevance: history length must be {self.length}, found {history_category.shape[1]}")
        if int(max(target_category.max(), history_category.max())) >= self.num_categories:
            raise ValueError(f"relevance: category ids must be < {self.num_categories} (the fitted range)")
        keys = self._keys(target_category[:, None].expand_as(history_category), history_category)  # [B, L]
        x_p, x_n = self._lookup(keys, 0), self._lookup(keys, 1)  # [B, L] counts among positives / negatives
        t_p = self.target_counts[0][target_category][:, None]  # [B, 1]
        t_n = self.target_counts[1][target_category][:, None]  # [B, 1]
        s = t_p + t_n

        def term(joint, marginal_x, marginal_y):
            return joint / s * torch.log2(joint * s / (marginal_x * marginal_y))

        rest_p, rest_n = t_p - x_p, t_n - x_n
        mi = term(x_p, x_p + x_n, t_p) + term(x_n, x_p + x_n, t_n) + term(rest_p, rest_p + rest_n, t_p) \
            + term(rest_n, rest_p + rest_n, t_n)  # [B, L]
        padding = history_item == 0
        rare = ((x_p < self.min_count) | (x_n < self.min_count)) & ~padding  # [B, L]
        rows = (s[:, 0] >= self.min_target_samples) & (rare.sum(1) <= self.max_rare) & torch.isfinite(
            mi.masked_fill(padding, 0)).all(1)
        return mi.masked_fill(padding, float("-inf")), rows


def retrieval_ndcg(scores: torch.Tensor, relevance: torch.Tensor, k: int = 20) -> torch.Tensor:
    """NDCG@k of the top-k by ``scores`` against ``relevance`` (both [B, L]; padding relevance -inf) -> [B].

    DCG = sum_i rel[top_i] / log2(i + 2) over the k best-scored behaviours; the ideal DCG takes the k most relevant.
    Padding (non-finite relevance) counts 0. Rows whose ideal DCG is not positive give NaN.
    """
    if scores.shape != relevance.shape or scores.dim() != 2:
        raise ValueError(f"retrieval_ndcg: scores and relevance must both be [B, L], found {tuple(scores.shape)} "
                         f"and {tuple(relevance.shape)}")
    k = min(k, scores.shape[1])
    discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2)  # [k]
    gains = relevance.double().masked_fill(~torch.isfinite(relevance), 0)  # [B, L]
    picked = gains.gather(1, scores.topk(k, dim=1).indices)  # [B, k]
    ideal = gains.topk(k, dim=1).values  # [B, k]
    dcg, idcg = picked @ discount, ideal @ discount  # [B]
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-300), torch.full_like(dcg, float("nan")))
