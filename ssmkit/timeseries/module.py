"""``Forecaster``: the LightningModule that trains and evaluates any registered forecasting model.

Loss MSE on the last ``pred_len`` steps (the target column only for ``features="MS"``), or the model's own training
loss when it has ``training_loss(x, y) -> (loss, parts)`` (SpaceTime's three-term loss); metrics MSE / MAE
accumulated over ALL windows of a split (global means, independent of the batch size), on the scaled data, or on
the original scale with ``inverse=True``. Optimizers: the S-Mamba schedule (Adam, lr halved after every epoch:
Time-Series-Library ``lradj=type1``), a linear warm-up + cosine over ``max_epochs``, or SpaceTime's recipe (AdamW +
timm's ``CosineLRScheduler``: ``cosine_epochs`` = t_initial, ``warmup_epochs`` from ``warmup_lr_init``, ``lr_min``).

Prediction on new data: the training data's columns, scaler and frequency are saved in every checkpoint, so
``Forecaster.load_from_checkpoint(path).predict_dataframe(df)`` returns the future timestamps and the forecasts.
A checkpoint whose ``n_vars``, ``seq_len``, ``pred_len`` or model differs from the configured ones is refused
before its weights are loaded.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torchmetrics import MeanAbsoluteError, MeanSquaredError

from ssmkit.core.registry import create_model
from ssmkit.core.step_log import log_training_step

from .data import StandardScaler, inference_window

# Hyper-parameters a checkpoint must share with the configured model (the weights fit only these).
CHECKED_HPARAMS = ("model_name", "n_vars", "seq_len", "pred_len", "features")


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
        lr_schedule: "type1" (x0.5 per epoch), "cosine" (warm-up + cosine over ``max_epochs``), "timm_cosine"
            (SpaceTime: timm's CosineLRScheduler, per epoch) or "constant".
        warmup_epochs: linear warm-up length for "cosine" and "timm_cosine".
        warmup_lr_init: learning rate at the start of the "timm_cosine" warm-up.
        lr_min: final learning rate of "timm_cosine".
        cosine_epochs: "timm_cosine" period t_initial in epochs (None: ``max_epochs``).
        inverse: compute metrics on the original scale (the data module's scaler).
        pretrained: local checkpoint loaded into the model (official formats through the registry's converters).
    """

    def __init__(self, model_name: str = "s_mamba", model_kwargs: dict[str, Any] | None = None, seq_len: int = 96,
                 pred_len: int = 96, n_vars: int = 7, features: str = "M", lr: float = 1e-4, optimizer: str = "adam",
                 weight_decay: float = 0.0, lr_schedule: str = "type1", warmup_epochs: int = 0,
                 warmup_lr_init: float = 1e-6, lr_min: float = 0.0, cosine_epochs: int | None = None,
                 inverse: bool = False, pretrained: str | None = None):
        super().__init__()
        if optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', found {optimizer!r}")
        if lr_schedule not in ("type1", "cosine", "timm_cosine", "constant"):
            raise ValueError(f"lr_schedule must be 'type1', 'cosine', 'timm_cosine' or 'constant', found "
                             f"{lr_schedule!r}")
        self.save_hyperparameters()
        self.model = create_model(model_name, pretrained=pretrained, seq_len=seq_len, pred_len=pred_len,
                                  n_vars=n_vars, **(model_kwargs or {}))
        if features == "MS" and hasattr(self.model, "training_loss"):
            raise ValueError(f"features='MS' scores the target column only, but {model_name!r} trains with its own "
                             "loss over every variate; use features 'S' or 'M'")
        self.data_info: dict[str, Any] | None = None  # training columns, scaler and freq (saved in checkpoints)
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
        if hasattr(self.model, "training_loss"):
            loss, parts = self.model.training_loss(batch["x"], batch["y"][:, -self.hparams.pred_len:])
        else:
            pred, target = self._predict_and_target(batch)
            loss, parts = F.mse_loss(pred, target), {}
        values = {"train/loss": loss, **{f"train/{name}": value for name, value in parts.items()}}
        log_training_step(self, values, batch_size=batch["x"].shape[0])
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
        optimizer = opt_class(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, fused=True)
        if hp.lr_schedule == "constant":
            return optimizer
        if hp.lr_schedule == "timm_cosine":
            from timm.scheduler import CosineLRScheduler

            schedule = CosineLRScheduler(optimizer, t_initial=hp.cosine_epochs or max(1, self.trainer.max_epochs or 1),
                                         lr_min=hp.lr_min, warmup_t=hp.warmup_epochs, warmup_lr_init=hp.warmup_lr_init,
                                         cycle_limit=1)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}
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

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """timm schedulers take the epoch index; torch schedulers step as usual."""
        if hasattr(scheduler, "step_update"):  # a timm scheduler
            scheduler.step(epoch=self.current_epoch + 1)
        else:
            scheduler.step()

    # ---- the training data's description: saved with every checkpoint, needed to predict on new frames ----

    def setup(self, stage: str) -> None:
        data = self.trainer.datamodule if self.trainer is not None else None
        if data is not None and hasattr(data, "columns"):
            scaler = data.scaler
            self.data_info = dict(columns=list(data.columns), freq=data.hparams.freq,
                                  scaler_mean=None if scaler is None else scaler.mean.tolist(),
                                  scaler_std=None if scaler is None else scaler.std.tolist())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.data_info is not None:
            checkpoint["ssmkit_data"] = self.data_info

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained for another shape before its weights are loaded; restore the data info."""
        saved = checkpoint.get("hyper_parameters", {})
        for name in CHECKED_HPARAMS:
            if name in saved and saved[name] != self.hparams[name]:
                raise ValueError(f"checkpoint was trained with {name}={saved[name]!r}, but the configuration gives "
                                 f"{name}={self.hparams[name]!r}; use the checkpoint's configuration (or data with "
                                 f"the same columns)")
        self.data_info = checkpoint.get("ssmkit_data", self.data_info)

    @torch.no_grad()
    def predict_dataframe(self, df: pl.DataFrame) -> pl.DataFrame:
        """Forecast the ``pred_len`` steps after the end of ``df``.

        Args:
            df: a ``date`` column and the training columns (any order, extra columns ignored), at least ``seq_len``
                rows, equally spaced dates (the step is inferred; 28-31 day steps are calendar months).

        Returns:
            ``date`` (the future timestamps) and one column per forecast variate (the target only for "MS"), on the
            original scale.
        """
        if self.data_info is None:
            raise ValueError("predict_dataframe needs the training data's columns and scaler: use a model loaded "
                             "from a checkpoint saved by fit, or one trained by a Trainer with the data module")
        info, hp = self.data_info, self.hparams
        scaler = None if info["scaler_mean"] is None else StandardScaler(np.asarray(info["scaler_mean"]),
                                                                         np.asarray(info["scaler_std"]))
        x, x_mark, future = inference_window(df, info["columns"], hp.seq_len, hp.pred_len, info["freq"], scaler,
                                             source="predict_dataframe(df)")
        was_training = self.training
        self.eval()
        pred = self(torch.from_numpy(x)[None].to(self.device), torch.from_numpy(x_mark)[None].to(self.device))[0]
        self.train(was_training)
        columns = info["columns"][-1:] if hp.features == "MS" else info["columns"]
        pred = pred[:, -len(columns):].double().cpu().numpy()  # [S, C_out]
        if scaler is not None:
            pred = scaler.inverse_transform(pred)
        return pl.DataFrame({"date": future, **{name: pred[:, i] for i, name in enumerate(columns)}})
