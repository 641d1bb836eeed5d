"""``CTRPredictor``: the LightningModule that trains and evaluates DARE / TWIN (any registered CTR model).

Loss as thuml/DARE's ``din_pytorch.py`` / ``train_pytorch.py``: cross-entropy of the main head, plus the auxiliary
head's when the model has one, plus ``weight_decay`` times the model's ``l2_penalty()`` (the official explicit L2 on
non-bias, non-embedding weights); Adam. Validation / test: AUC, GAUC (grouped by target category) and logloss over
all samples of the split (``ctr_metrics``); the official run keeps the checkpoint with the best validation AUC, which
the configs do with ``checkpoint.monitor: val/auc`` and early stopping on it. One official quirk is not copied: its
``evaluate`` never calls ``model.eval()``, so its BatchNorm normalizes evaluation batches with their own statistics;
Lightning evaluates in eval mode (running statistics), which makes a prediction independent of its batch.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from ssmkit.core.registry import create_model
from ssmkit.core.step_log import log_training_step

from .ctr_metrics import ctr_metrics

INPUTS = ("item", "category", "history_item", "history_category")


class CTRPredictor(L.LightningModule):
    """Train / validate / test a click-through-rate model built from the registry.

    Args:
        model_name: registered name, "dare" or "twin".
        num_items: item table rows (must cover the data module's ``num_items``).
        num_categories: category table rows (must cover the data module's ``num_categories``).
        model_kwargs: the model's own hyper-parameters (embedding dims, top_k, ...).
        lr: Adam learning rate (official 0.01).
        weight_decay: coefficient of the explicit L2 penalty (official 1e-6).
        pretrained: local checkpoint loaded into the model (official thuml/DARE state_dicts through the converter).
    """

    def __init__(self, model_name: str = "dare", num_items: int = 2, num_categories: int = 1,
                 model_kwargs: dict[str, Any] | None = None, lr: float = 0.01, weight_decay: float = 1e-6,
                 pretrained: str | None = None):
        super().__init__()
        if not lr > 0 or weight_decay < 0:
            raise ValueError(f"lr must be > 0 and weight_decay >= 0, found lr={lr!r}, weight_decay={weight_decay!r}")
        self.save_hyperparameters()
        self.model = create_model(model_name, pretrained=pretrained, num_items=num_items,
                                  num_categories=num_categories, **(model_kwargs or {}))
        self.val_metrics = ctr_metrics("val/")
        self.test_metrics = ctr_metrics("test/")

    def setup(self, stage: str) -> None:
        """Refuse a data module whose ids do not fit the model's tables, before any training step."""
        data = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for name in ("num_items", "num_categories"):
            needed, have = getattr(data, name, None), getattr(self.model, name)
            if needed is not None and needed > have:
                raise ValueError(f"CTRPredictor: model.init_args.{name}={have} but the data needs {needed} table "
                                 f"rows; set model.init_args.{name}: {needed}")

    def forward(self, batch: dict[str, torch.Tensor], return_aux: bool = False) -> torch.Tensor:
        """Click logits [B] (or [B, 2] main / auxiliary with ``return_aux``) for a batch dict."""
        return self.model(*(batch[name] for name in INPUTS), return_aux=return_aux)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        label = batch["label"].float()  # [B]
        with_aux = bool(getattr(self.model, "use_aux_loss", False))
        logits = self(batch, return_aux=with_aux)  # [B] or [B, 2]
        heads = logits.unbind(dim=1) if with_aux else (logits,)
        ctr_loss = F.binary_cross_entropy_with_logits(heads[0], label)
        loss = ctr_loss + sum(F.binary_cross_entropy_with_logits(h, label) for h in heads[1:])
        if self.hparams.weight_decay:
            loss = loss + self.hparams.weight_decay * self.model.l2_penalty()
        log_training_step(self, {"train/loss": loss, "train/ctr_loss": ctr_loss}, batch_size=label.shape[0])
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], metrics) -> None:
        logits = self(batch)  # [B]
        metrics.update(logits, batch["label"], groups=batch["category"])
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=logits.shape[0])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metrics)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return torch.sigmoid(self(batch))  # [B] click probabilities

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
