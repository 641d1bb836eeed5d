"""GRU4Rec: "Session-based Recommendations with Recurrent Neural Networks" (Hidasi et al., ICLR 2016), as RecBole 1.2
implements it (recbole/model/sequential_recommender/gru4rec.py, default config GRU4Rec.yaml).

Item embedding (64) -> dropout (0.3) -> GRU (hidden 128, 1 layer, no bias) -> Linear back to 64 -> the state at the
last valid position, scored against the tied item embedding (CE over all items). Init: Xavier-normal embedding,
Xavier-uniform GRU input and hidden weights of the first layer. Module names follow RecBole's.
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.core.drop import Dropout
from ssmkit.core.registry import register_model

from . import SequentialModel, gather_last


class GRU4Rec(SequentialModel):
    """GRU4Rec with RecBole's defaults.

    Args:
        n_items: item vocabulary size including PAD.
        embedding_size: item embedding width (64).
        hidden_size: GRU width (128).
        n_layers: GRU layers (1).
        dropout: embedding dropout (0.3).
        max_len: longest history used by ``recommend``.
    """

    def __init__(self, n_items: int, embedding_size: int = 64, hidden_size: int = 128, n_layers: int = 1,
                 dropout: float = 0.3, max_len: int = 50) -> None:
        super().__init__()
        if not isinstance(n_items, int) or n_items < 2:
            raise ValueError(f"GRU4Rec: n_items must be an int >= 2 (PAD + at least one item), found {n_items!r}")
        self.n_items, self.max_len, self.hidden_size = n_items, max_len, embedding_size
        self.item_embedding = nn.Embedding(n_items, embedding_size, padding_idx=0)
        self.emb_dropout = Dropout(dropout)
        self.gru_layers = nn.GRU(embedding_size, hidden_size, num_layers=n_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(hidden_size, embedding_size)
        nn.init.xavier_normal_(self.item_embedding.weight)
        nn.init.xavier_uniform_(self.gru_layers.weight_hh_l0)
        nn.init.xavier_uniform_(self.gru_layers.weight_ih_l0)

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """item_seq [B, L], lengths [B] -> the state at position lengths - 1 [B, embedding_size] (right padding:
        the GRU output there does not depend on the padding)."""
        h, _ = self.gru_layers(self.emb_dropout(self.item_embedding(item_seq)))  # [B, L, hidden]
        return self.dense(gather_last(h, lengths))  # [B, E]


def _example(model: GRU4Rec, batch_size: int):
    lengths = torch.randint(1, 8, (batch_size,))  # [B]
    item_seq = torch.randint(1, model.n_items, (batch_size, 7)).masked_fill(torch.arange(7) >= lengths[:, None], 0)
    return {"item_seq": item_seq, "lengths": lengths}, (batch_size, model.hidden_size)


@register_model(domain="recsys", example_input=_example, test_overrides={"n_items": 50, "embedding_size": 16,
                                                                          "hidden_size": 16})
def gru4rec(n_items: int, **kwargs) -> GRU4Rec:
    """GRU4Rec, RecBole defaults (embedding 64, GRU hidden 128, 1 layer, dropout 0.3)."""
    return GRU4Rec(n_items, **kwargs)
