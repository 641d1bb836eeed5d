"""BERT4Rec: "Sequential Recommendation with Bidirectional Encoder Representations from Transformer" (Sun et al.,
CIKM 2019), as RecBole implements it.

RecBole's ``BERT4Rec`` (recbole/model/sequential_recommender/bert4rec.py, its default config BERT4Rec.yaml and the
``mask_itemseq`` batch transform of recbole/data/transform.py) with the same Transformer layers as our SASRec, but
bidirectional: the attention mask hides PAD keys only. A MASK token (id ``n_items``, one extra embedding row) stands
in for the items to predict.

Training (``training_loss``; RecBole's ``MaskItemSequence`` then ``calculate_loss`` with CE):

* with probability ``ft_ratio`` a whole batch is a "fine-tuning" batch: only the last valid item of every row is
  replaced by MASK and predicted;
* otherwise every valid item is replaced by MASK with probability ``mask_ratio``; the loss covers the last
  ``int(mask_ratio * max_len)`` masked positions of each row (RecBole keeps that many, dropping the oldest), and, as
  RecBole's ``targets = masked_index > 0``, never position 0 (a masked first item is hidden but not predicted);
* the loss is CE over the real items (MASK excluded) at those positions, averaged over them.

The training samples are the same prefixes as for the other models; the next item of a sample is not used.

Scoring (``full_sort_scores``, RecBole's ``full_sort_predict``): MASK is written after the last item, the first
column is dropped so that the row keeps ``L`` positions (RecBole drops it for every row, full or not), and the
output at the MASK (position ``lengths - 1``) is scored against the real items' embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.core.registry import register_model

from . import gather_last
from .sasrec import TransformerRecommender


class BERT4Rec(TransformerRecommender):
    """BERT4Rec with RecBole's defaults.

    Args:
        n_items: item vocabulary size including PAD (the MASK token gets id ``n_items``).
        hidden_size, n_layers, n_heads, inner_size: 64, 2, 2, 256 in RecBole.
        hidden_dropout, attn_dropout: 0.2 and 0.2 in RecBole.
        max_len: longest history (size of the position embedding).
        mask_ratio: probability that an item is masked in training (0.2).
        ft_ratio: probability that a training batch masks only each row's last item (0.5).
        layer_norm_eps: 1e-12.
    """

    def __init__(self, n_items: int, hidden_size: int = 64, n_layers: int = 2, n_heads: int = 2,
                 inner_size: int = 256, hidden_dropout: float = 0.2, attn_dropout: float = 0.2, max_len: int = 50,
                 mask_ratio: float = 0.2, ft_ratio: float = 0.5, layer_norm_eps: float = 1e-12) -> None:
        for name, value in (("mask_ratio", mask_ratio), ("ft_ratio", ft_ratio)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"BERT4Rec: {name} must lie in [0, 1], found {value!r}")
        if int(mask_ratio * max_len) < 1:
            raise ValueError(f"BERT4Rec: mask_ratio * max_len must be >= 1 (positions predicted per row), found "
                             f"{mask_ratio} * {max_len}")
        super().__init__(n_items, hidden_size, n_layers, n_heads, inner_size, hidden_dropout, attn_dropout, max_len,
                         layer_norm_eps, extra_tokens=1)  # + the MASK row
        self.mask_token, self.mask_ratio, self.ft_ratio = n_items, mask_ratio, ft_ratio
        self.mask_item_length = int(mask_ratio * max_len)

    def _embed(self, item_seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """item_seq [B, L] (ids, MASK allowed) -> embedded input [B, L, H] and the additive key mask [B, 1, 1, L]."""
        x = self.embed(item_seq)  # [B, L, H]
        mask = torch.zeros(item_seq.shape, dtype=x.dtype, device=x.device).masked_fill(item_seq == 0, -10000.0)
        return x, mask[:, None, None, :]  # [B, L, H], [B, 1, 1, L]

    def sequence_output(self, item_seq: torch.Tensor) -> torch.Tensor:
        """Encoder output at every position: item_seq [B, L] -> [B, L, H] (RecBole's ``forward``)."""
        x, mask = self._embed(item_seq)
        for layer in self.trm_encoder.layer:
            x = layer(x, mask)  # [B, L, H]
        return x

    def with_mask_appended(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """RecBole's ``reconstruct_test_data``: MASK after the last item, first column dropped -> [B, L]."""
        padded = torch.cat([item_seq, item_seq.new_zeros(item_seq.shape[0], 1)], dim=1)  # [B, L + 1]
        padded = padded.scatter(1, lengths[:, None], self.mask_token)
        return padded[:, 1:]  # [B, L]; the MASK now sits at lengths - 1

    def encode(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """item_seq [B, L], lengths [B] -> the output at the appended MASK [B, hidden]."""
        x, mask = self._embed(self.with_mask_appended(item_seq, lengths))
        *layers, last = self.trm_encoder.layer
        for layer in layers:
            x = layer(x, mask)  # [B, L, H]
        # the last layer is evaluated for the MASK query only (its rows are independent)
        return last(x, mask, gather_last(x, lengths)[:, None])[:, 0]  # [B, H]

    def full_sort_scores(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores of every real item [B, n_items] (PAD included, not masked; the MASK row is not scored)."""
        return self(item_seq, lengths) @ self.item_embedding.weight[:self.n_items].T  # [B, n_items]

    def training_masks(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw RecBole's training masks from torch's generator.

        Returns:
            hidden [B, L] (positions replaced by MASK) and predicted [B, L] (positions in the loss), both bool.
        """
        positions = torch.arange(item_seq.shape[1], device=item_seq.device)  # [L]
        valid = item_seq > 0  # [B, L]
        if float(torch.rand(())) < self.ft_ratio:
            hidden = positions == (lengths - 1)[:, None]  # [B, L]: each row's last item
            return hidden, hidden & (positions > 0)
        hidden = (torch.rand(item_seq.shape, device=item_seq.device) < self.mask_ratio) & valid  # [B, L]
        from_end = hidden.flip(1).cumsum(1).flip(1)  # [B, L]: masked positions at or after each position
        return hidden, hidden & (from_end <= self.mask_item_length) & (positions > 0)

    def training_loss(self, item_seq: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Masked-item CE of one training batch (``target``, the next item, is not used, as in RecBole).

        Args:
            item_seq: right-padded prefixes [B, L]; lengths: [B]; target: [B] (ignored).

        Returns:
            Scalar loss (0 with a gradient path when no position is predicted).
        """
        self.check_input(item_seq, lengths)
        hidden, predicted = self.training_masks(item_seq, lengths)
        out = self.sequence_output(item_seq.masked_fill(hidden, self.mask_token))  # [B, L, H]
        logits = out[predicted] @ self.item_embedding.weight[:self.n_items].T  # [M, n_items]
        if logits.shape[0] == 0:
            return out.sum() * 0.0
        return F.cross_entropy(logits, item_seq[predicted])


def _example(model: BERT4Rec, batch_size: int):
    lengths = torch.randint(1, 8, (batch_size,))  # [B]
    item_seq = torch.randint(1, model.n_items, (batch_size, 7)).masked_fill(torch.arange(7) >= lengths[:, None], 0)
    return {"item_seq": item_seq, "lengths": lengths}, (batch_size, model.hidden_size)


@register_model(domain="recsys", example_input=_example, test_overrides={"n_items": 50, "hidden_size": 16,
                                                                          "inner_size": 32, "max_len": 10})
def bert4rec(n_items: int, **kwargs) -> BERT4Rec:
    """BERT4Rec, RecBole defaults (2 layers, 2 heads, hidden 64, inner 256, dropout 0.2 / 0.2, mask 0.2, ft 0.5)."""
    return BERT4Rec(n_items, **kwargs)
