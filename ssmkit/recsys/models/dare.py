"""DARE and TWIN: two-stage long-sequence CTR models (search the history, then aggregate), not state-space models.

Paper: "Long-Sequence Recommendation Models Need Decoupled Embeddings" (Feng et al., ICLR 2025, arXiv 2410.02604).
Faithful to thuml/DARE at 3dce479; facts taken from (no code copied):

- ``model/base_model_pytorch.py``: per token ``[item 16 | category 16 | position 16]`` = 48 dims; the position table
  has 2000 rows. TWIN (``model_name=twin``) uses ONE set of tables for attention and representation; DARE uses two
  sets (attention / representation), shared by target and behaviours, and the attention set may have its own dims
  (``attention_{item,category,time}_embedding_dim``: halving them is the paper's "50% faster search").
  Main MLP ``BatchNorm1d(3*48) -> 200 -> PReLU -> 80 -> PReLU -> 2``; auxiliary MLP ``BatchNorm1d(3*48) -> 200 ->
  PReLU -> 2`` (PReLU: one parameter, init 0.1).
- ``model/attention_pytorch.py``: score = <q_sem, k_sem> / sqrt(d_sem) + <q_pos, k_pos> / sqrt(d_pos) (semantic =
  item + category, position = the last ``attention_time_dim`` dims); padding scored ``-2**32 + 1``.
- ``model/din_pytorch.py``: soft search keeps the top-k = 20 scores and takes a softmax over those k, weighting the
  behaviours' REPRESENTATION embeddings; features ``[target, interest, target * interest]`` (the ``*`` term is the
  target-aware representation, ``-use_cross_feature True``); auxiliary loss = CE of the auxiliary MLP on the same
  features built from the softmax over ALL behaviours (before top-k); loss = CE(main) + CE(aux).
- ``dataset.py``: behaviours left-padded with item id 0 (mask = id > 0); position id of behaviour j of L is ``L - j``
  (the most recent is 1), the target's is 0.
- ``train_pytorch.py``: every non-bias parameter initialised N(0, 0.01) (embeddings, Linear, and also the BatchNorm
  and PReLU weights); weight decay 1e-6 as an explicit L2 penalty on non-bias, non-embedding parameters
  (``l2_penalty``); the two softmax classes are (click, no click).

Our layout: the forward returns the click logit ``l_click - l_no_click`` [B]: sigmoid of it equals the official
softmax probability of class 0, and BCE on it equals the official 2-class CE. Difference, documented: when a row has
fewer valid behaviours than k, the official recomputation of scores on the top-k mask lets padding positions back in
with raw scores; here padding always keeps weight 0 (the official data never has such rows: users have >= 210
behaviours and histories of 200).

Official checkpoints (``torch.save(model.state_dict())`` of ``DIN(model_name="DARE"|"twin", ...)``) load through the
converter registered below (keys ``item_id_embedding_layer_for_attention_of_target.weight``, ``main_mlp.1.weight``,
``auxiliary_mlp.3.bias``, ...); tests/recsys/test_dare.py checks it against an independent re-implementation of the
official forward.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ssmkit.core.checkpoint import register_converter
from ssmkit.core.registry import register_model

MASK_SCORE = -(2.0**32) + 1  # the official score of a padding behaviour


class CTREmbedding(nn.Module):
    """Item, category and position tables; a token is ``[item | category | position]``.

    Args:
        num_items: item table rows (id 0 = padding).
        num_categories: category table rows.
        item_dim, category_dim, position_dim: widths of the three parts.
        num_positions: position table rows (official: 2000).
    """

    def __init__(self, num_items: int, num_categories: int, item_dim: int, category_dim: int, position_dim: int,
                 num_positions: int):
        super().__init__()
        self.item = nn.Embedding(num_items, item_dim)
        self.category = nn.Embedding(num_categories, category_dim)
        self.position = nn.Embedding(num_positions, position_dim)

    @property
    def dim(self) -> int:
        return self.item.embedding_dim + self.category.embedding_dim + self.position.embedding_dim

    def forward(self, item: Tensor, category: Tensor, position: Tensor) -> Tensor:
        """item, category, position: [*] int -> [*, dim]."""
        return torch.cat([self.item(item), self.category(category), self.position(position)], dim=-1)


def _mlp(in_dim: int, hidden: tuple[int, ...], batch_norm: bool) -> nn.Sequential:
    """``[BatchNorm1d] -> (Linear -> PReLU(0.1)) * len(hidden) -> Linear(., 2)``, the official layer order."""
    layers: list[nn.Module] = [nn.BatchNorm1d(in_dim)] if batch_norm else []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.PReLU(num_parameters=1, init=0.1)]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, 2))


class DARE(nn.Module):
    """DARE (``decoupled=True``) or TWIN (``decoupled=False``): top-k soft search, then target-aware aggregation.

    Args:
        num_items: item table rows; ids in [1, num_items), 0 is padding.
        num_categories: category table rows; ids in [0, num_categories).
        item_dim, category_dim, time_dim: representation embedding widths (official 16 / 16 / 16).
        attention_item_dim, attention_category_dim, attention_time_dim: attention embedding widths (DARE only;
            None = the representation width).
        decoupled: two embedding sets (DARE) or one (TWIN).
        num_positions: position table rows (official 2000); the history length must be smaller.
        top_k: behaviours kept by the soft search (official 20).
        use_cross_feature: add ``target * interest`` to the MLP input (target-aware representation).
        use_aux_loss: build the auxiliary MLP (``forward(..., return_aux=True)``).
        main_hidden: main MLP widths (official (200, 80)).
        aux_hidden: auxiliary MLP width (official 200).
        batch_norm: BatchNorm1d in front of both MLPs (official, unless batch size 1).
    """

    def __init__(self, num_items: int, num_categories: int, item_dim: int = 16, category_dim: int = 16,
                 time_dim: int = 16, attention_item_dim: int | None = None, attention_category_dim: int | None = None,
                 attention_time_dim: int | None = None, decoupled: bool = True, num_positions: int = 2000,
                 top_k: int = 20, use_cross_feature: bool = True, use_aux_loss: bool = True,
                 main_hidden: tuple[int, ...] = (200, 80), aux_hidden: int = 200, batch_norm: bool = True):
        super().__init__()
        for name, value in (("num_items", num_items), ("num_categories", num_categories), ("item_dim", item_dim),
                            ("category_dim", category_dim), ("time_dim", time_dim), ("top_k", top_k),
                            ("num_positions", num_positions)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DARE: {name} must be a positive int, found {value!r}")
        if num_items < 2:
            raise ValueError(f"DARE: num_items must be >= 2 (id 0 is padding), found {num_items}")
        attention_dims = (attention_item_dim or item_dim, attention_category_dim or category_dim,
                          attention_time_dim or time_dim)
        if not decoupled and attention_dims != (item_dim, category_dim, time_dim):
            raise ValueError(f"TWIN (decoupled=False) shares one embedding for attention and representation: the "
                             f"attention dims must equal (item_dim, category_dim, time_dim) = "
                             f"{(item_dim, category_dim, time_dim)}, found {attention_dims}")
        self.num_items, self.num_categories, self.num_positions = num_items, num_categories, num_positions
        self.decoupled, self.top_k = decoupled, top_k
        self.use_cross_feature, self.use_aux_loss = use_cross_feature, use_aux_loss
        self.embedding = CTREmbedding(num_items, num_categories, item_dim, category_dim, time_dim, num_positions)
        if decoupled:
            self.attention_embedding = CTREmbedding(num_items, num_categories, *attention_dims, num_positions)
        self.attention_time_dim = attention_dims[2]
        features = self.embedding.dim * (3 if use_cross_feature else 2)
        self.main_mlp = _mlp(features, tuple(main_hidden), batch_norm)
        self.auxiliary_mlp = _mlp(features, (aux_hidden,), batch_norm) if use_aux_loss else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init (train_pytorch.py): every parameter whose name has no 'bias' ~ N(0, 0.01)."""
        for name, param in self.named_parameters():
            if "bias" not in name:
                nn.init.normal_(param, mean=0.0, std=0.01)

    def l2_penalty(self) -> Tensor:
        """Sum of squares of the non-bias, non-embedding parameters (the official weight decay term)."""
        return sum(p.pow(2).sum() for n, p in self.named_parameters()
                   if "bias" not in n and not n.startswith(("embedding.", "attention_embedding.")))

    def attention_scores(self, item: Tensor, category: Tensor, history_item: Tensor,
                         history_category: Tensor) -> Tensor:
        """Search stage scores: item, category [B]; history_* [B, L] (left-padded with 0) -> [B, L], padding masked."""
        tables = self.attention_embedding if self.decoupled else self.embedding
        length = history_item.shape[1]
        positions = torch.arange(length, 0, -1, device=history_item.device).expand_as(history_item)  # [B, L]
        query = tables(item, category, torch.zeros_like(item))  # [B, Da]
        keys = tables(history_item, history_category, positions)  # [B, L, Da]
        # scale the semantic and the position parts of the query separately, then one product gives their sum
        t = self.attention_time_dim
        semantic, time = query[:, :-t], query[:, -t:]
        query = torch.cat([semantic / math.sqrt(semantic.shape[1]), time / math.sqrt(t)], dim=1)  # [B, Da]
        scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)  # [B, L]
        return scores.masked_fill(history_item == 0, MASK_SCORE)

    def search(self, item: Tensor, category: Tensor, history_item: Tensor,
               history_category: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k soft search: -> (scores [B, L], top-k scores [B, K], top-k indices [B, K]), K = min(top_k, L)."""
        scores = self.attention_scores(item, category, history_item, history_category)  # [B, L]
        top_scores, top_index = scores.topk(min(self.top_k, scores.shape[1]), dim=1)  # [B, K]
        return scores, top_scores, top_index

    def _features(self, target: Tensor, interest: Tensor) -> Tensor:
        parts = [target, interest, target * interest] if self.use_cross_feature else [target, interest]
        return torch.cat(parts, dim=1)  # [B, 2D or 3D]

    def forward(self, item: Tensor, category: Tensor, history_item: Tensor, history_category: Tensor,
                return_aux: bool = False) -> Tensor:
        """Click logits.

        Args:
            item, category: target item and category ids [B].
            history_item, history_category: behaviours [B, L], oldest first, left-padded with item id 0.
            return_aux: also return the auxiliary head's logit (needs ``use_aux_loss``).

        Returns:
            [B] click logit, or [B, 2] = (main, auxiliary) logits with ``return_aux``.
        """
        self._check_inputs(item, category, history_item, history_category, return_aux)
        length = history_item.shape[1]
        scores, top_scores, top_index = self.search(item, category, history_item, history_category)  # [B, L], [B, K]
        target = self.embedding(item, category, torch.zeros_like(item))  # [B, D]
        # only the k retrieved behaviours need their representation
        top_position = length - top_index  # [B, K]
        top_values = self.embedding(history_item.gather(1, top_index), history_category.gather(1, top_index),
                                    top_position)  # [B, K, D]
        interest = torch.einsum("bk,bkd->bd", top_scores.softmax(dim=1), top_values)  # [B, D]
        logits = self.main_mlp(self._features(target, interest))  # [B, 2]
        main = logits[:, 0] - logits[:, 1]  # [B]
        if not return_aux:
            return main
        positions = torch.arange(length, 0, -1, device=history_item.device).expand_as(history_item)  # [B, L]
        values = self.embedding(history_item, history_category, positions)  # [B, L, D]
        interest_all = torch.einsum("bl,bld->bd", scores.softmax(dim=1), values)  # [B, D]
        aux = self.auxiliary_mlp(self._features(target, interest_all))  # [B, 2]
        return torch.stack([main, aux[:, 0] - aux[:, 1]], dim=1)  # [B, 2]

    def _check_inputs(self, item: Tensor, category: Tensor, history_item: Tensor, history_category: Tensor,
                      return_aux: bool) -> None:
        named = {"item": item, "category": category, "history_item": history_item,
                 "history_category": history_category}
        for name, value in named.items():
            if not isinstance(value, Tensor) or value.dtype.is_floating_point or value.dtype.is_complex \
                    or value.dtype == torch.bool:
                found = value.dtype if isinstance(value, Tensor) else type(value).__name__
                raise TypeError(f"DARE: {name} must be an integer id tensor, found {found}")
        if item.dim() != 1 or category.shape != item.shape:
            raise ValueError(f"DARE: item and category must both be [B], found {tuple(item.shape)} and "
                             f"{tuple(category.shape)}")
        if history_item.dim() != 2 or history_item.shape[0] != item.shape[0] or history_item.shape[1] < 1 \
                or history_category.shape != history_item.shape:
            raise ValueError(f"DARE: history_item and history_category must both be [B={item.shape[0]}, L>=1], found "
                             f"{tuple(history_item.shape)} and {tuple(history_category.shape)}")
        if history_item.shape[1] >= self.num_positions:
            raise ValueError(f"DARE: history length must be < num_positions={self.num_positions}, found "
                             f"{history_item.shape[1]}")
        for name, value, low, high in (("item", item, 1, self.num_items), ("history_item", history_item, 0,
                                       self.num_items), ("category", category, 0, self.num_categories),
                                       ("history_category", history_category, 0, self.num_categories)):
            if value.numel() and (int(value.min()) < low or int(value.max()) >= high):
                raise ValueError(f"DARE: {name} ids must lie in [{low}, {high}), found min {int(value.min())}, "
                                 f"max {int(value.max())} (unknown ids: map them to an OOV id in the data module)")
        empty = (history_item == 0).all(dim=1).nonzero().flatten()
        if empty.numel():
            raise ValueError(f"DARE: history_item rows {empty[:5].tolist()} have an empty history (all padding id 0); "
                             f"every target needs at least one behaviour")
        if return_aux and self.auxiliary_mlp is None:
            raise ValueError("DARE: return_aux=True needs a model built with use_aux_loss=True")


_OFFICIAL_TABLES = {"item_id_embedding_layer": "item", "category_id_embedding_layer": "category",
                    "time_id_embedding_layer": "position"}


@register_converter("dare")
def convert_official(checkpoint: Mapping[str, Any], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Map an official thuml/DARE ``DIN`` state_dict (model_name "DARE" or "twin") to ``DARE`` keys.

    Official DARE: ``*_for_attention_of_target`` -> ``attention_embedding.*``, ``*_for_representation_of_target`` ->
    ``embedding.*``. Official TWIN (all four roles alias one table): ``*_for_attention_of_target`` -> ``embedding.*``.
    The ``*_of_behavior`` keys are aliases of the ``*_of_target`` ones and are dropped; ``main_mlp.*`` and
    ``auxiliary_mlp.*`` keep their names. A state_dict already in our keys passes through unchanged.
    """
    if "item_id_embedding_layer_for_attention_of_target.weight" not in checkpoint:
        return dict(checkpoint)
    decoupled = getattr(model, "decoupled", True)
    out = {}
    for key, value in checkpoint.items():
        if key.startswith(("main_mlp.", "auxiliary_mlp.")):
            out[key] = value
            continue
        for official, ours in _OFFICIAL_TABLES.items():
            if key == f"{official}_for_attention_of_target.weight":
                out[f"{'attention_embedding' if decoupled else 'embedding'}.{ours}.weight"] = value
            elif key == f"{official}_for_representation_of_target.weight" and decoupled:
                out[f"embedding.{ours}.weight"] = value
    return out


def _example(model: DARE, batch_size: int):
    g = torch.Generator().manual_seed(0)
    length = 12
    history_item = torch.randint(1, model.num_items, (batch_size, length), generator=g)  # [B, L]
    history_item[0, :5] = 0  # left padding
    history_category = torch.randint(0, model.num_categories, (batch_size, length), generator=g)  # [B, L]
    inputs = dict(item=torch.randint(1, model.num_items, (batch_size,), generator=g),
                  category=torch.randint(0, model.num_categories, (batch_size,), generator=g),
                  history_item=history_item, history_category=history_category, return_aux=True)
    return inputs, (batch_size, 2)


_TEST = {"num_items": 40, "num_categories": 6, "top_k": 4}


@register_model(domain="recsys", example_input=_example, test_overrides=_TEST)
def dare(num_items: int, num_categories: int, **kwargs: Any) -> DARE:
    """DARE (ICLR 2025): decoupled attention / representation embeddings (16/16/16 each), top-20 soft search."""
    return DARE(num_items, num_categories, decoupled=True, **kwargs)


@register_model(domain="recsys", example_input=_example, test_overrides=_TEST)
def twin(num_items: int, num_categories: int, **kwargs: Any) -> DARE:
    """TWIN (DARE paper's baseline): one embedding (16/16/16) for attention and representation, top-20 soft search."""
    return DARE(num_items, num_categories, decoupled=False, **kwargs)
