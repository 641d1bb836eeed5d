"""``GraphClassifier`` and ``NodeClassifier``: LightningModules around any registered graph model.

The model is ``create_model(model_name, in_channels=, out_channels=, task=, edge_dim=, **model_kwargs)`` with
``forward(batch) -> logits`` ([num_graphs, C] for graph tasks, [num_nodes, C] for node tasks). Loss and metric
follow the dataset's metric (linked from the data module):

| metric | loss | torchmetrics metric | datasets |
|---|---|---|---|
| accuracy | cross-entropy | ``MulticlassAccuracy`` (micro) | Planetoid, TU |
| auroc | cross-entropy (2 classes) | ``BinaryAUROC`` of the class-1 probability | Minesweeper, Tolokers |
| ap | binary cross-entropy per label | ``MultilabelAveragePrecision`` (macro) | Peptides-func |

Metrics are computed over the whole split (all graphs, or all nodes of the split mask), independent of the batch
size, and logged as ``<split>/<metric>`` with ``<split>/loss``. Optimizers: Adam or AdamW; schedules: cosine with a
linear warm-up (GraphGPS / Graph-Mamba recipes), ReduceLROnPlateau on ``val/loss`` (GCN / GatedGCN benchmark
recipes) or constant.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MultilabelAveragePrecision

from ssmkit.core.registry import create_model
from ssmkit.core.step_log import log_training_step

METRICS = ("accuracy", "auroc", "ap")
SPLITS = ("val", "test")


def build_metric(metric: str, num_outputs: int) -> Metric:
    """The torchmetrics object for ``metric`` with ``num_outputs`` model outputs."""
    if metric == "accuracy":
        return MulticlassAccuracy(num_classes=num_outputs, average="micro")
    if metric == "auroc":
        return BinaryAUROC()
    return MultilabelAveragePrecision(num_labels=num_outputs, average="macro")


def use_batch_statistics(model: torch.nn.Module) -> int:
    """Make every BatchNorm of ``model`` normalise with its batch's statistics in training and evaluation alike.

    Returns:
        The number of BatchNorm layers changed (their running-statistics buffers are removed).
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = module.running_var = module.num_batches_tracked = None
            changed += 1
    return changed


class GraphTask(L.LightningModule):
    """Shared training logic; use ``GraphClassifier`` or ``NodeClassifier``.

    Args:
        model_name: registered graph model, e.g. "gmn", "gps", "gcn".
        model_kwargs: the model's own hyper-parameters (hidden_channels, num_layers, dropout, ...).
        in_channels, out_channels, edge_dim, task, metric, pe_type, pe_dim: linked from the data module by the CLI
            (``pe_dim`` and ``pe_type`` reach the model only when ``pe_dim > 0``).
        lr: learning rate.
        optimizer: "adam" or "adamw".
        weight_decay: optimizer weight decay.
        lr_schedule: "cosine" (warm-up + cosine over ``max_epochs``), "plateau" or "constant".
        warmup_epochs: linear warm-up length of "cosine".
        plateau_factor, plateau_patience: ReduceLROnPlateau settings of "plateau".
        norm_stats: "running" (BatchNorm layers evaluate with running statistics, the default of every model) or
            "batch" (they always normalise with the statistics of the batch they see). "batch" suits full-batch
            node tasks, whose evaluation batch is the very graph trained on: running statistics updated once per
            epoch lag the changing weights there and can wreck evaluation early in training.
    """

    TASK = ""

    def __init__(self, model_name: str = "gcn", model_kwargs: dict[str, Any] | None = None, in_channels: int = 1,
                 out_channels: int = 2, edge_dim: int | None = None, task: str = "graph", metric: str = "accuracy",
                 lr: float = 1e-3, optimizer: str = "adam", weight_decay: float = 0.0, lr_schedule: str = "constant",
                 warmup_epochs: int = 0, plateau_factor: float = 0.5, plateau_patience: int = 10,
                 pe_type: str = "none", pe_dim: int = 0, norm_stats: str = "running"):
        super().__init__()
        if task != self.TASK:
            raise ValueError(f"task: {type(self).__name__} trains '{self.TASK}'-level tasks, found a '{task}'-level "
                             f"dataset (use {'NodeClassifier' if task == 'node' else 'GraphClassifier'})")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, found {metric!r}")
        if metric == "auroc" and out_channels != 2:
            raise ValueError(f"out_channels: metric 'auroc' needs 2 classes, found {out_channels}")
        if optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', found {optimizer!r}")
        if lr_schedule not in ("cosine", "plateau", "constant"):
            raise ValueError(f"lr_schedule must be 'cosine', 'plateau' or 'constant', found {lr_schedule!r}")
        if norm_stats not in ("running", "batch"):
            raise ValueError(f"norm_stats must be 'running' or 'batch', found {norm_stats!r}")
        self.save_hyperparameters()
        pe = {"pe_dim": pe_dim, "pe_type": pe_type} if pe_dim > 0 else {}
        self.model = create_model(model_name, in_channels=in_channels, out_channels=out_channels, task=task,
                                  edge_dim=edge_dim, **pe, **(model_kwargs or {}))
        if norm_stats == "batch":
            use_batch_statistics(self.model)
        self.metrics = torch.nn.ModuleDict({split: build_metric(metric, out_channels) for split in SPLITS})

    def forward(self, batch: Batch) -> torch.Tensor:
        """batch -> logits [num_graphs, C] (graph task) or [num_nodes, C] (node task)."""
        return self.model(batch)

    def _logits_and_target(self, batch: Batch, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets of the scored items: every graph, or the nodes of the split's mask."""
        logits = self(batch)  # [G, C] or [N, C]
        if self.TASK == "node":
            mask = batch[f"{split}_mask"]  # [N]
            return logits[mask], batch.y[mask]
        return logits, batch.y if self.hparams.metric == "ap" else batch.y.flatten()  # [G, C] or [G]

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.hparams.metric == "ap":
            return F.binary_cross_entropy_with_logits(logits, target.float())
        return F.cross_entropy(logits, target)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits, target = self._logits_and_target(batch, "train")
        loss = self._loss(logits, target)
        log_training_step(self, {"train/loss": loss}, batch_size=target.shape[0])
        return loss

    def _evaluate(self, batch: Batch, split: str) -> None:
        logits, target = self._logits_and_target(batch, split)
        self.log(f"{split}/loss", self._loss(logits, target), batch_size=target.shape[0], prog_bar=split == "val")
        metric = self.metrics[split]
        if self.hparams.metric == "auroc":
            metric.update(logits.softmax(dim=-1)[:, 1], target)
        elif self.hparams.metric == "ap":
            metric.update(logits, target.long())
        else:
            metric.update(logits, target)
        self.log(f"{split}/{self.hparams.metric}", metric, on_step=False, on_epoch=True, prog_bar=split == "val",
                 batch_size=target.shape[0])

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self(batch)

    def configure_optimizers(self):
        hp = self.hparams
        opt_class = torch.optim.Adam if hp.optimizer == "adam" else torch.optim.AdamW
        optimizer = opt_class(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return optimizer
        if hp.lr_schedule == "plateau":
            schedule = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=hp.plateau_factor,
                                                                  patience=hp.plateau_patience)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "monitor": "val/loss"}}
        total = max(1, self.trainer.max_epochs or 1)
        warm = min(hp.warmup_epochs, total - 1)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - warm))
        if warm > 0:
            linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warm)
            schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [linear, schedule], milestones=[warm])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "epoch"}}


class GraphClassifier(GraphTask):
    """Graph-level classification (TU, Peptides-func): one prediction per graph of the batch."""

    TASK = "graph"


class NodeClassifier(GraphTask):
    """Node-level classification (Planetoid, heterophilous): the split's mask selects the scored nodes."""

    TASK = "node"
