"""Mamba4Rec: "Mamba4Rec: Towards Efficient Sequential Recommendation with Selective State Space Models"
(Liu et al., arXiv 2403.03900, RelKD@KDD 2024).

Faithful to chengkai-liu/Mamba4Rec (``mamba4rec.py``, on RecBole 1.2): item embedding (no position embedding),
dropout then LayerNorm (eps 1e-12), per layer a Mamba mixer whose output goes through dropout and LayerNorm (with a
residual only when there are 2+ layers), then a post-norm position-wise FFN (inner 4 * hidden, GELU). The sequence is
represented by the hidden state at its last valid position; scores are its dot products with the (tied) item
embedding, trained with CE over all items. The official ``_init_weights`` re-initialises every Linear and Embedding
N(0, 0.02), Mamba's own included, and zeroes every Linear bias (``dt_proj.bias`` too); A_log, D and the conv keep
Mamba's init. Module names are the official ones, so a RecBole checkpoint's ``state_dict`` loads key for key.

Online inference: ``start_session(history)`` keeps each layer's recurrent state; ``Mamba4RecSession.add(item)``
costs one step (O(1) in the history length) and equals recomputing from scratch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.cache import MambaCache
from ssmkit.core.checkpoint import register_converter, select_state_dict
from ssmkit.core.drop import Dropout
from ssmkit.core.mixers import Mamba
from ssmkit.core.registry import register_model

from . import SequentialModel, gather_last, recbole_init


class FeedForward(nn.Module):
    """Post-norm position-wise FFN: LayerNorm(x + Dropout(W2(Dropout(GELU(W1 x)))))."""

    def __init__(self, d_model: int, inner_size: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, inner_size)
        self.w_2 = nn.Linear(inner_size, d_model)
        self.dropout = Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(d_model, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D] -> [B, L, D]."""
        h = self.dropout(F.gelu(self.w_1(x)))  # [B, L, 4D]
        return self.LayerNorm(self.dropout(self.w_2(h)) + x)


class MambaLayer(nn.Module):
    """Mamba -> Dropout -> (+ input if num_layers > 1) -> LayerNorm -> FFN."""

    def __init__(self, d_model: int, d_state: int, d_conv: int, expand: int, dropout: float, num_layers: int,
                 backend: str) -> None:
        super().__init__()
        self.residual = num_layers > 1
        self.mamba = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
        self.dropout = Dropout(dropout)
        self.LayerNorm = nn.LayerNorm(d_model, eps=1e-12)
        self.ffn = FeedForward(d_model, 4 * d_model, dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, cache: MambaCache | None = None,
                last_only: bool = False) -> torch.Tensor:
        """x: [B, L, D] -> [B, L, D] (``last_only``: [B, 1, D] at position lengths - 1); ``lengths`` / ``cache`` go to
        the Mamba mixer."""
        h = self.mamba(x, lengths=lengths, cache=cache)  # [B, L, D]
        if last_only:
            # everything after the mixer is position-wise: only the last valid position is needed
            h, x = gather_last(h, lengths)[:, None], gather_last(x, lengths)[:, None]  # [B, 1, D]
        h = self.dropout(h)
        return self.ffn(self.LayerNorm(h + x if self.residual else h))


class Mamba4Rec(SequentialModel):
    """Mamba4Rec next-item model.

    Args:
        n_items: item vocabulary size including the PAD row 0.
        hidden_size: embedding / model width (official 64).
        n_layers: Mamba layers (official 1; 2 on Amazon per the author's issue #8).
        d_state, d_conv, expand: Mamba state size, conv width, expansion (official 32, 4, 2).
        max_len: longest history used (RecBole MAX_ITEM_LIST_LENGTH; the scan itself has no length limit).
        dropout: embedding / layer / FFN dropout (official 0.2 on ML-1M, 0.4 on Amazon).
        backend: selective-scan backend ("auto": the fused CPU kernel on CPU, Triton on CUDA).
    """

    def __init__(self, n_items: int, hidden_size: int = 64, n_layers: int = 1, d_state: int = 32, d_conv: int = 4,
                 expand: int = 2, max_len: int = 50, dropout: float = 0.2, backend: str = "auto") -> None:
        super().__init__()
        if not isinstance(n_items, int) or n_items < 2:
            raise ValueError(f"Mamba4Rec: n_items must be an int >= 2 (PAD + at least one item), found {n_items!r}")
        self.n_items, self.max_len, self.hidden_size = n_items, max_len, hidden_size
        self.item_embedding = nn.Embedding(n_items, hidden_size, padding_idx=0)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=1e-12)
        self.dropout = Dropout(dropout)
        self.mamba_layers = nn.ModuleList(
            MambaLayer(hidden_size, d_state, d_conv, expand, dropout, n_layers, backend) for _ in range(n_layers))
        self.apply(recbole_init)  # the official init, after Mamba built its own: overrides its Linear and dt_proj init

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """item_seq [B, L], lengths [B] -> the state at position lengths - 1 [B, hidden]."""
        x = self.LayerNorm(self.dropout(self.item_embedding(item_seq)))  # [B, L, H]
        for i, layer in enumerate(self.mamba_layers):
            x = layer(x, lengths=lengths, last_only=i == len(self.mamba_layers) - 1)  # [B, L, H] ([B, 1, H] last)
        return x[:, 0]  # [B, H]

    @torch.no_grad()
    def start_session(self, history: Sequence[int] | torch.Tensor | None = None) -> Mamba4RecSession:
        """An online session for one user, optionally primed with a history (internal ids, oldest first).

        The whole history is absorbed (no ``max_len`` truncation: the recurrent state summarises it).
        """
        return Mamba4RecSession(self, history)


class Mamba4RecSession:
    """Incremental next-item inference: one recurrent step per new interaction.

    Args:
        model: a ``Mamba4Rec`` (used in eval mode).
        history: items seen so far (internal ids, oldest first) or None.
    """

    def __init__(self, model: Mamba4Rec, history: Sequence[int] | torch.Tensor | None = None) -> None:
        self.model = model
        self.caches = [layer.mamba.allocate_cache(1) for layer in model.mamba_layers]
        self.output: torch.Tensor | None = None  # [1, hidden] after the newest item
        if history is not None:
            seq = torch.as_tensor(history).reshape(-1)
            if seq.numel() == 0:
                raise ValueError("Mamba4RecSession: history is empty; pass None to start without one")
            self._absorb(seq)

    def _check(self, seq: torch.Tensor) -> torch.Tensor:
        if seq.dtype.is_floating_point or seq.dtype == torch.bool:
            raise TypeError(f"Mamba4RecSession: item ids must be integers, found {seq.dtype}")
        if int(seq.min()) < 1 or int(seq.max()) >= self.model.n_items:
            raise ValueError(f"Mamba4RecSession: item ids must lie in [1, n_items={self.model.n_items}), found range "
                             f"[{int(seq.min())}, {int(seq.max())}]")
        return seq.to(self.model.item_embedding.weight.device)

    @torch.no_grad()
    def _absorb(self, seq: torch.Tensor) -> None:
        """Run ``seq`` [T] through the layers from the cached states (T == 1 is one recurrent step)."""
        model = self.model
        was_training = model.training
        model.eval()
        x = model.LayerNorm(model.item_embedding(self._check(seq)[None]))  # [1, T, H]
        for layer, cache in zip(model.mamba_layers, self.caches):
            x = layer(x, cache=cache)  # [1, T, H]
        model.train(was_training)
        self.output = x[:, -1]  # [1, H]

    def add(self, item: int) -> None:
        """Absorb one new interaction in O(1)."""
        self._absorb(torch.as_tensor([item]))

    @torch.no_grad()
    def scores(self) -> torch.Tensor:
        """Scores of every item after the newest interaction [n_items] (PAD not masked)."""
        if self.output is None:
            raise ValueError("Mamba4RecSession: no interaction yet (empty history); add an item first")
        return (self.output @ self.model.item_embedding.weight.T)[0]  # [n_items]

    def recommend(self, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k next items (PAD excluded): (items [k], scores [k])."""
        if not isinstance(k, int) or not 1 <= k < self.model.n_items:
            raise ValueError(f"recommend: k must be an int in [1, {self.model.n_items - 1}], found {k!r}")
        scores = self.scores().clone()  # [n_items]
        scores[0] = -torch.inf
        top = scores.topk(k)
        return top.indices, top.values


@register_converter("mamba4rec")
def convert_recbole(checkpoint: Mapping, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Pick the ``state_dict`` of a RecBole checkpoint of the official Mamba4Rec (keys map one to one).

    Raises a ValueError when its item vocabulary (``item_embedding.weight`` rows) differs from the model's.
    """
    state_dict = select_state_dict(checkpoint, key="state_dict" if "state_dict" in checkpoint else None)
    weight = state_dict.get("item_embedding.weight")
    if model is not None and weight is not None and weight.shape[0] != model.n_items:
        raise ValueError(f"mamba4rec checkpoint: its item_embedding has {weight.shape[0]} rows (n_items incl. PAD) "
                         f"but the model was built with n_items={model.n_items}; the checkpoint belongs to other data")
    return state_dict


def _example(model: Mamba4Rec, batch_size: int):
    item_seq = torch.randint(1, model.n_items, (batch_size, 7))  # [B, L]
    lengths = torch.randint(1, 8, (batch_size,))  # [B]
    item_seq = item_seq.masked_fill(torch.arange(7) >= lengths[:, None], 0)
    return {"item_seq": item_seq, "lengths": lengths}, (batch_size, model.hidden_size)


@register_model(domain="recsys", example_input=_example, test_overrides={"n_items": 50, "hidden_size": 16,
                                                                          "d_state": 4})
def mamba4rec(n_items: int, **kwargs) -> Mamba4Rec:
    """Mamba4Rec (official ML-1M config: hidden 64, 1 layer, d_state 32, d_conv 4, expand 2, dropout 0.2)."""
    return Mamba4Rec(n_items, **kwargs)


@register_model(domain="recsys", example_input=_example)
def test_mamba4rec(n_items: int = 30, **kwargs) -> Mamba4Rec:
    """Tiny two-layer Mamba4Rec for tests."""
    return Mamba4Rec(n_items, **{**dict(hidden_size=16, n_layers=2, d_state=4, max_len=10), **kwargs})
