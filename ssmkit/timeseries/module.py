"""``Forecaster``: the LightningModule that trains and evaluates any registered forecasting model.

Loss MSE on the last ``pred_len`` steps (the target column only for ``features="MS"``); metrics MSE / MAE
accumulated over ALL windows of a split (global means, independent of the batch size), on the scaled data, or on
the original scale with ``inverse=True``. Optimizers: the S-Mamba schedule (Adam, lr halved after every epoch:
Time-Series-Library ``lradj=type1``) or SpaceTime's (AdamW + linear warm-up + cosine).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from ssmkit.core.registry import create_model


class Forecaster(L.LightningModule):
    """Train / validate / test a forecaster built from the registry.

    Args:
        model_name: registered name, e.g. "s_mamba".
        model_kwargs: the model's own hyper-parameters (d_model, n_layers, ...).
        seq_len, pred_len, n_vars: linked from the data module by the CLI.
        features: "M", "S" or "MS" (MS: loss and metrics on the last column, the target).
        lr: initial learning rate.
        optimizer: "adam" (S-Mamba) or "adamw" (SpaceTime).
        weight_decay: optimizer weight decay.
        lr_schedule: "type1" (x0.5 per epoch), "cosine" (warm-up + cosine over ``max_epochs``) or "constant".
        warmup_epochs: linear warm-up length for "cosine".
        inverse: compute metrics on the original scale (the data module's scaler).
        pretrained: local checkpoint loaded into the model (official formats through the registry's converters).
    """

    def __init__(self, model_name: str = "s_mamba", model_kwargs: dict[str, Any] | None = None, seq_len: int = 96,
                 pred_len: int = 96, n_vars: int = 7, features: str = "M", lr: float = 1e-4, optimizer: str = "adam",
                 weight_decay: float = 0.0, lr_schedule: str = "type1", warmup_epochs: int = 0, inverse: bool = False,
                 pretrained: str | None = None):
        super().__init__()
        if optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', found {optimizer!r}")
        if lr_schedule not in ("type1", "cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'type1', 'cosine' or 'constant', found {lr_schedule!r}")
        self.save_hyperparameters()
        self.model = create_model(model_name, pretrained=pretrained, seq_len=seq_len, pred_len=pred_len,
                                  n_vars=n_vars, **(model_kwargs or {}))
        self.metrics = torch.nn.ModuleDict({
            f"{split}_{name}": metric()
            for split in ("val", "test") for name, metric in (("mse", MeanSquaredError), ("mae", MeanAbsoluteError))
        })

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, L, N], x_mark: [B, L, F] -> [B, pred_len, N]."""
        return self.model(x, x_mark)

    def _predict_and_target(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        pred = self(batch["x"], batch["x_mark"])  # [B, S, N]
        target = batch["y"][:, -self.hparams.pred_len:]  # [B, S, N]
        if self.hparams.features == "MS":
            pred, target = pred[..., -1:], target[..., -1:]
        return pred, target

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pred, target = self._predict_and_target(batch)
        loss = F.mse_loss(pred, target)
        self.log("train/loss", loss, prog_bar=True, batch_size=pred.shape[0])
        return loss

    def _evaluate(self, batch: dict[str, torch.Tensor], split: str) -> None:
        pred, target = self._predict_and_target(batch)
        self.log(f"{split}/loss", F.mse_loss(pred, target), batch_size=pred.shape[0], prog_bar=split == "val")
        if self.hparams.inverse:
            scaler = self.trainer.datamodule.scaler
            pred, target = scaler.inverse_transform(pred), scaler.inverse_transform(target)
        for name in ("mse", "mae"):
            metric = self.metrics[f"{split}_{name}"]
            metric.update(pred.reshape(-1), target.reshape(-1))
            self.log(f"{split}/{name}", metric, on_step=False, on_epoch=True, batch_size=pred.shape[0])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch["x"], batch["x_mark"])

    def configure_optimizers(self):
        hp = self.hparams
        opt_class = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        optimizer = opt_class(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return optimizer
        if hp.lr_schedule == "type1":
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 0.5**epoch)
        else:
            total = max(1, self.trainer.max_epochs or 1)
            warm = min(hp.warmup_epochs, total - 1)
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
            if warm > 0:
                linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warm)
                schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warm])
            else:
                schedule = cosine
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
