"""``SequentialRecommender``: the LightningModule that trains and evaluates any registered next-item model.

RecBole's sequential protocol: CE over all items on the tied scores (``full_sort_scores``), or the model's own
``training_loss`` where it has one (BERT4Rec's masked-item CE), Adam, full-ranking evaluation with only PAD masked
(HR / NDCG / MRR at 5, 10, 20 over all users of the split); early stopping and checkpoint selection on
``val/ndcg@10`` are set in the configs. ``n_items`` and ``max_len`` come from the data module: given explicitly (or
restored from a checkpoint's hyper-parameters) the model is built in ``__init__``; otherwise in ``setup``
from ``trainer.datamodule`` (which works with the CLI's subclass mode), and a mismatch raises.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ssmkit.core.registry import create_model
from ssmkit.core.step_log import log_training_step

from .metrics import RankingMetrics


class SequentialRecommender(L.LightningModule):
    """Train / validate / test a sequential recommender from the registry.

    Args:
        model_name: registered name ("mamba4rec", "sasrec", "gru4rec", "bert4rec", ...).
        model_kwargs: the model's own hyper-parameters (hidden_size, n_layers, dropout, ...).
        n_items, max_len: vocabulary size (incl. PAD) and history length; None = read from the data module.
        lr, weight_decay: Adam settings (RecBole: 1e-3, 0).
        topk: metric cut-offs.
        pretrained: local checkpoint loaded into the model (RecBole formats through the registry's converters).
    """

    def __init__(self, model_name: str = "mamba4rec", model_kwargs: dict[str, Any] | None = None,
                 n_items: int | None = None, max_len: int | None = None, lr: float = 1e-3, weight_decay: float = 0.0,
                 topk: tuple[int, ...] = (5, 10, 20), pretrained: str | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: torch.nn.Module | None = None
        self.metrics = torch.nn.ModuleDict({split: RankingMetrics(list(topk)) for split in ("val", "test")})
        if n_items is not None and max_len is not None:
            self._build(n_items, max_len)

    def _build(self, n_items: int, max_len: int) -> None:
        hp = self.hparams
        self.model = create_model(hp.model_name, pretrained=hp.pretrained, n_items=n_items, max_len=max_len,
                                  **(hp.model_kwargs or {}))
        # recorded as hyper-parameters (logged, and saved in checkpoints so load_from_checkpoint rebuilds the model)
        self.save_hyperparameters({**hp, "n_items": n_items, "max_len": max_len})

    def setup(self, stage: str) -> None:
        """Build the model from the data module's ``n_items`` / ``max_len``, or check that they agree with it."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            if self.model is None:
                raise ValueError("SequentialRecommender: n_items and max_len are not set and no data module is "
                                 "attached to read them from")
            return
        n_items, max_len = datamodule.n_items, datamodule.max_len
        if self.model is None:
            self._build(n_items, max_len)
        elif (self.hparams.n_items, self.hparams.max_len) != (n_items, max_len):
            raise ValueError(f"SequentialRecommender: the model has n_items={self.hparams.n_items}, "
                             f"max_len={self.hparams.max_len} but the data has n_items={n_items}, max_len={max_len}: "
                             f"the checkpoint or config belongs to other data")

    def forward(self, item_seq: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Scores of every item [B, n_items] for right-padded histories item_seq [B, L] with lengths [B]."""
        return self.model.full_sort_scores(item_seq, lengths)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        own_loss = getattr(self.model, "training_loss", None)  # a model with its own objective (BERT4Rec's masking)
        if own_loss is not None:
            loss = own_loss(batch["item_seq"], batch["lengths"], batch["target"])
        else:
            loss = F.cross_entropy(self(batch["item_seq"], batch["lengths"]), batch["target"])
        log_training_step(self, {"train/loss": loss}, batch_size=batch["target"].shape[0])
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], split: str) -> None:
        metric = self.metrics[split]
        metric.update(self(batch["item_seq"], batch["lengths"]), batch["target"])

    def _log_epoch(self, split: str) -> None:
        metric = self.metrics[split]
        values = metric.compute()
        self.log_dict({f"{split}/{name}": value.float() for name, value in values.items()})
        metric.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Top-20 item ids per row [B, 20] (PAD excluded)."""
        scores = self(batch["item_seq"], batch["lengths"])  # [B, n_items]
        scores[:, 0] = -torch.inf
        return scores.topk(min(20, scores.shape[1] - 1), dim=1).indices

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
