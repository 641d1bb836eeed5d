"""Sequential recommenders (plain nn.Modules, registered in ``ssmkit``'s model registry).

``SequentialModel`` is the contract they share (RecBole's ``SequentialRecommender`` API in our names):
``forward(item_seq [B, L], lengths [B]) -> [B, hidden]`` (the state at the last valid position of right-padded
rows), ``full_sort_scores`` (scores of every item, PAD included, as RecBole's ``full_sort_predict``) and
``recommend(history, k)``. Each subclass defines ``item_embedding`` (tied output layer) and ``encode``; one with its
own training objective also defines ``training_loss(item_seq, lengths, target)`` (BERT4Rec's masked items), which
``SequentialRecommender`` then uses instead of CE on ``full_sort_scores``.
Training (RecBole's prefix augmentation) only ever reads the last valid position, so the models run their last
position-wise stage (FFN, and the last attention query in SASRec) on that position alone: the same function, far
less work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["SequentialModel", "gather_last", "recbole_init"]


def gather_last(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x [B, L, D] -> x[b, lengths[b] - 1] [B, D] (RecBole ``gather_indexes``)."""
    index = (lengths - 1)[:, None, None].expand(-1, 1, x.shape[-1])  # [B, 1, D]
    return x.gather(1, index)[:, 0]  # [B, D]


def recbole_init(module: nn.Module) -> None:
    """RecBole's ``_init_weights`` (SASRec, BERT4Rec, Mamba4Rec), for ``model.apply``: Linear and Embedding weights
    ~ N(0, 0.02), Linear biases 0, LayerNorm weight 1 and bias 0 (the PAD row is drawn too, as in RecBole)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class SequentialModel(nn.Module):
    """Base of the next-item models: input checks, scoring with the tied item embedding, top-k recommendation.

    Subclasses set ``n_items``, ``max_len``, ``item_embedding`` and implement ``encode(item_seq, lengths)``.
    """

    n_items: int
    max_len: int
    item_embedding: nn.Embedding

    def check_input(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> None:
        """Raise a TypeError/ValueError naming the argument unless the batch is a valid right-padded id batch."""
        name = type(self).__name__
        for arg, value in (("item_seq", item_seq), ("lengths", lengths)):
            if not isinstance(value, torch.Tensor) or value.dtype.is_floating_point or value.dtype == torch.bool:
                found = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"{name}: {arg} must be an integer tensor, found {found}")
        if item_seq.dim() != 2 or lengths.shape != item_seq.shape[:1]:
            raise ValueError(f"{name}: item_seq must be [B, L] and lengths [B], found {list(item_seq.shape)} and "
                             f"{list(lengths.shape)}")
        if item_seq.numel() and (int(item_seq.min()) < 0 or int(item_seq.max()) >= self.n_items):
            raise ValueError(f"{name}: item ids must lie in [0, n_items={self.n_items}) (0 = PAD), found range "
                             f"[{int(item_seq.min())}, {int(item_seq.max())}]")
        if lengths.numel() and (int(lengths.min()) < 1 or int(lengths.max()) > item_seq.shape[1]):
            raise ValueError(f"{name}: lengths must lie in [1, L={item_seq.shape[1]}] (an empty history has no "
                             f"prediction), found range [{int(lengths.min())}, {int(lengths.max())}]")

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """item_seq [B, L], lengths [B] -> the state at the last valid position [B, hidden] (no input checks)."""
        raise TypeError(f"{type(self).__name__} must define encode()")

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Sequence representation at the last valid position.

        Args:
            item_seq: right-padded item ids [B, L] (0 = PAD).
            lengths: valid prefix per row [B], in [1, L].

        Returns:
            [B, hidden].
        """
        self.check_input(item_seq, lengths)
        return self.encode(item_seq, lengths)  # [B, hidden]

    def full_sort_scores(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores of every item, ``forward(...) @ item_embedding.weight.T`` [B, n_items] (PAD not masked)."""
        return self(item_seq, lengths) @ self.item_embedding.weight.T  # [B, n_items]

    def history_tensor(self, history: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """A user history (internal ids, oldest first) as a [1, <= max_len] tensor; raises on empty or bad ids."""
        seq = torch.as_tensor(history).reshape(-1)
        if seq.numel() == 0:
            raise ValueError(f"{type(self).__name__}.recommend: history is empty; at least one item is needed")
        if seq.dtype.is_floating_point or seq.dtype == torch.bool:
            raise TypeError(f"{type(self).__name__}.recommend: history must hold integer item ids, found {seq.dtype}")
        if int(seq.min()) < 1 or int(seq.max()) >= self.n_items:
            raise ValueError(f"{type(self).__name__}.recommend: history ids must lie in [1, n_items={self.n_items}), "
                             f"found range [{int(seq.min())}, {int(seq.max())}]")
        return seq[-self.max_len:][None].to(self.item_embedding.weight.device)  # [1, L]

    @torch.no_grad()
    def recommend(self, history: Sequence[int] | torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k next items for one history (eval mode; PAD excluded, seen items allowed as in the protocol).

        Args:
            history: internal item ids, oldest first (the last ``max_len`` are used).
            k: number of items.

        Returns:
            (items [k], scores [k]), best first.
        """
        if not isinstance(k, int) or not 1 <= k < self.n_items:
            raise ValueError(f"recommend: k must be an int in [1, n_items - 1 = {self.n_items - 1}], found {k!r}")
        seq = self.history_tensor(history)  # [1, L]
        was_training = self.training
        self.eval()
        scores = self.full_sort_scores(seq, torch.tensor([seq.shape[1]], device=seq.device))[0]  # [n_items]
        self.train(was_training)
        scores[0] = -torch.inf
        top = scores.topk(k)
        return top.indices, top.values
