"""SASRec: "Self-Attentive Sequential Recommendation" (Kang & McAuley, ICDM 2018), as RecBole 1.2 implements it.

RecBole's ``SASRec`` (recbole/model/sequential_recommender/sasrec.py and layers.py ``TransformerEncoder``) with its
default config (recbole/properties/model/SASRec.yaml): learned position embedding, item + position -> LayerNorm
-> dropout, ``n_layers`` post-norm Transformer layers (explicit scaled dot-product attention with a causal and
key-padding mask, attention-probability dropout, GELU FFN), the state at the last valid position, tied item
embedding scores, CE over all items, N(0, 0.02) init. Module names follow RecBole's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.drop import Dropout
from ssmkit.core.registry import register_model

from . import SequentialModel, gather_last, recbole_init


class MultiHeadAttention(nn.Module):
    """Self-attention with an additive mask, then dense -> dropout -> LayerNorm(+ input)."""

    def __init__(self, n_heads: int, hidden_size: int, hidden_dropout: float, attn_dropout: float,
                 eps: float) -> None:
        super().__init__()
        if hidden_size % n_heads:
            raise ValueError(f"SASRec: hidden_size ({hidden_size}) must be a multiple of n_heads ({n_heads})")
        self.n_heads = n_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.attn_dropout = Dropout(attn_dropout)
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.out_dropout = Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, D], mask: additive [B, 1, Q, L] -> [B, Q, D]; queries are x (Q = L) or ``query`` [B, Q, D]."""
        query = x if query is None else query
        batch, dim = x.shape[0], x.shape[2]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, t.shape[1], self.n_heads, dim // self.n_heads).transpose(1, 2)  # [B, h, *, D/h]

        q, k, v = heads(self.query(query)), heads(self.key(x)), heads(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.n_heads) + mask  # [B, h, Q, L]
        probs = self.attn_dropout(scores.softmax(-1))  # [B, h, Q, L]
        context = (probs @ v).transpose(1, 2).reshape(batch, query.shape[1], dim)  # [B, Q, D]
        return self.LayerNorm(self.out_dropout(self.dense(context)) + query)


class FeedForward(nn.Module):
    """dense_1 -> GELU -> dense_2 -> dropout -> LayerNorm(+ input)."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.dense_1 = nn.Linear(hidden_size, inner_size)
        self.dense_2 = nn.Linear(inner_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=eps)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D] -> [B, L, D]."""
        return self.LayerNorm(self.dropout(self.dense_2(F.gelu(self.dense_1(x)))) + x)


class TransformerLayer(nn.Module):
    def __init__(self, n_heads: int, hidden_size: int, inner_size: int, hidden_dropout: float, attn_dropout: float,
                 eps: float) -> None:
        super().__init__()
        self.multi_head_attention = MultiHeadAttention(n_heads, hidden_size, hidden_dropout, attn_dropout, eps)
        self.feed_forward = FeedForward(hidden_size, inner_size, hidden_dropout, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, D] -> [B, Q, D] (Q = L, or the rows of ``query`` [B, Q, D])."""
        return self.feed_forward(self.multi_head_attention(x, mask, query))


class TransformerEncoder(nn.Module):
    def __init__(self, n_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layer = nn.ModuleList(TransformerLayer(**layer_kwargs) for _ in range(n_layers))


class TransformerRecommender(SequentialModel):
    """RecBole's Transformer recommender body, shared by SASRec and BERT4Rec: item + learned position embedding ->
    LayerNorm -> dropout (``embed``), then ``n_layers`` post-norm layers (``trm_encoder``), N(0, 0.02) init.

    Args:
        n_items: item vocabulary size including PAD.
        hidden_size, n_layers, n_heads, inner_size, hidden_dropout, attn_dropout, layer_norm_eps: as RecBole's.
        max_len: longest history (size of the position embedding).
        extra_tokens: embedding rows after the items (BERT4Rec's MASK token).
    """

    def __init__(self, n_items: int, hidden_size: int, n_layers: int, n_heads: int, inner_size: int,
                 hidden_dropout: float, attn_dropout: float, max_len: int, layer_norm_eps: float,
                 extra_tokens: int = 0) -> None:
        super().__init__()
        if not isinstance(n_items, int) or n_items < 2:
            raise ValueError(f"{type(self).__name__}: n_items must be an int >= 2 (PAD + at least one item), found "
                             f"{n_items!r}")
        self.n_items, self.max_len, self.hidden_size = n_items, max_len, hidden_size
        self.item_embedding = nn.Embedding(n_items + extra_tokens, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        self.trm_encoder = TransformerEncoder(n_layers, n_heads=n_heads, hidden_size=hidden_size,
                                              inner_size=inner_size, hidden_dropout=hidden_dropout,
                                              attn_dropout=attn_dropout, eps=layer_norm_eps)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = Dropout(hidden_dropout)
        self.apply(recbole_init)

    def embed(self, item_seq: torch.Tensor) -> torch.Tensor:
        """item_seq [B, L] (L <= max_len) -> dropout(LayerNorm(item + position embedding)) [B, L, H]."""
        length = item_seq.shape[1]
        if length > self.max_len:
            raise ValueError(f"{type(self).__name__}: item_seq has length {length}, more than "
                             f"max_len={self.max_len} positions")
        positions = torch.arange(length, device=item_seq.device)  # [L]
        return self.dropout(self.LayerNorm(self.item_embedding(item_seq) + self.position_embedding(positions)))


class SASRec(TransformerRecommender):
    """SASRec with RecBole's defaults.

    Args:
        n_items: item vocabulary size including PAD.
        hidden_size, n_layers, n_heads, inner_size: 64, 2, 2, 256 in RecBole.
        hidden_dropout, attn_dropout: 0.5 and 0.5 in RecBole.
        max_len: longest history (size of the position embedding).
        layer_norm_eps: 1e-12.
    """

    def __init__(self, n_items: int, hidden_size: int = 64, n_layers: int = 2, n_heads: int = 2,
                 inner_size: int = 256, hidden_dropout: float = 0.5, attn_dropout: float = 0.5, max_len: int = 50,
                 layer_norm_eps: float = 1e-12) -> None:
        super().__init__(n_items, hidden_size, n_layers, n_heads, inner_size, hidden_dropout, attn_dropout, max_len,
                         layer_norm_eps)

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """item_seq [B, L] (L <= max_len), lengths [B] -> the state at position lengths - 1 [B, hidden]."""
        length = item_seq.shape[1]
        x = self.embed(item_seq)  # [B, L, H]
        allowed = torch.ones(length, length, dtype=torch.bool, device=item_seq.device).tril()  # [L, L]
        allowed = allowed & (item_seq > 0)[:, None, None, :]  # [B, 1, L, L]
        mask = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device).masked_fill(~allowed, -10000.0)
        *layers, last = self.trm_encoder.layer
        for layer in layers:
            x = layer(x, mask)  # [B, L, H]
        # the last layer is evaluated for the last valid query only (its rows are independent)
        rows = (lengths - 1)[:, None, None, None].expand(-1, 1, 1, length)  # [B, 1, 1, L]
        return last(x, mask.gather(2, rows), gather_last(x, lengths)[:, None])[:, 0]  # [B, H]


def _example(model: SASRec, batch_size: int):
    lengths = torch.randint(1, 8, (batch_size,))  # [B]
    item_seq = torch.randint(1, model.n_items, (batch_size, 7)).masked_fill(torch.arange(7) >= lengths[:, None], 0)
    return {"item_seq": item_seq, "lengths": lengths}, (batch_size, model.hidden_size)


@register_model(domain="recsys", example_input=_example, test_overrides={"n_items": 50, "hidden_size": 16,
                                                                          "inner_size": 32})
def sasrec(n_items: int, **kwargs) -> SASRec:
    """SASRec, RecBole defaults (2 layers, 2 heads, hidden 64, inner 256, dropout 0.5 / 0.5)."""
    return SASRec(n_items, **kwargs)
