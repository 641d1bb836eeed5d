"""``ImageClassifier``: the LightningModule that trains and evaluates any ssmkit or timm image classifier.

The DeiT / Vim recipe pieces, each optional and set from the config: AdamW with timm-style parameter groups (no
weight decay on 1-D parameters, biases, ``pos_embed``, ``cls_token`` and the model's ``no_weight_decay()``), linear
warm-up then cosine decay updated every optimizer step, label smoothing, timm ``Mixup`` (mixup / cutmix, off by
default) with ``SoftTargetCrossEntropy``, an EMA of the weights (timm ``ModelEmaV3``, validated beside the model as
``val_ema/*``), ``channels_last``. Metrics: top-1 / top-5 accuracy (torchmetrics) over every image of a split.
Mixed precision is the Trainer's (``trainer.precision: bf16-mixed`` on GPUs).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import timm
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim._param_groups import param_groups_weight_decay
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ssmkit.core.registry import create_model, list_models
from ssmkit.core.step_log import log_training_step

NO_WEIGHT_DECAY = ("pos_embed", "cls_token", "*.pos_embed", "*.cls_token")


def build_model(model_name: str, num_classes: int | None = None, in_chans: int | None = None,
                img_size: int | None = None, pretrained: str | None = None, **model_kwargs: Any) -> nn.Module:
    """An ssmkit-registered model, else a timm model, with the data-linked sizes; None values keep the defaults.

    Args:
        model_name: ssmkit name (``vim_tiny_patch16_224``) or timm name (``deit_tiny_patch16_224``).
        num_classes, in_chans, img_size: linked from the data module (set ``img_size: null`` in ``model_kwargs``
            for timm models that take no ``img_size``, e.g. ResNets).
        pretrained: local checkpoint path (ssmkit converters, or timm's loader through ``pretrained_cfg_overlay``).
        **model_kwargs: the model's own arguments (depth, embed_dim, patch_size, drop_path_rate, ...).

    Raises:
        ValueError: the name is in neither registry.
    """
    kwargs = {k: v for k, v in {"num_classes": num_classes, "in_chans": in_chans, "img_size": img_size,
                                **model_kwargs}.items() if v is not None}
    if model_name in list_models():
        return create_model(model_name, pretrained=pretrained, **kwargs)
    if timm.is_model(model_name):
        if pretrained:
            return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(pretrained)},
                                     **kwargs)
        return timm.create_model(model_name, **kwargs)
    raise ValueError(f"model_name: {model_name!r} is neither an ssmkit model (ssmkit.list_models()) nor a timm "
                     f"model (timm.list_models())")


def warmup_cosine(step: int, total: int, warmup: int, lr: float, warmup_lr: float, min_lr: float) -> float:
    """Learning rate at optimizer step ``step``: linear ``warmup_lr -> lr`` over ``warmup`` steps, then cosine to
    ``min_lr`` at step ``total``."""
    if step < warmup:
        return warmup_lr + (lr - warmup_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class ImageClassifier(L.LightningModule):
    """Train / validate / test an image classifier built by ``build_model``.

    Args:
        model_name: ssmkit or timm model name.
        model_kwargs: the model's own hyper-parameters (depth, embed_dim, patch_size, drop_path_rate, ...).
        num_classes, in_chans, img_size: linked from the data module by the CLI.
        pretrained: local checkpoint loaded into the model before training.
        lr, warmup_lr, min_lr: peak, warm-up start and final learning rates (DeiT: 5e-4 x batch / 512, 1e-6, 1e-5).
        warmup_epochs: linear warm-up length (fractions allowed), then cosine over the remaining steps.
        weight_decay, betas: AdamW settings (no decay on the groups named in the module docstring).
        label_smoothing: label smoothing (also applied to the mixed targets of mixup / cutmix).
        mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob: timm ``Mixup``; both alphas 0 turns it off.
        ema_decay: decay of the weight EMA (DeiT: 0.99996); None: no EMA.
        channels_last: run the model and inputs in ``torch.channels_last`` memory format.
        grad_checkpointing: recompute blocks in backward (models with ``set_grad_checkpointing``).
        no_weight_decay: more parameter-name patterns without weight decay (fnmatch, e.g. ``"*.A_log"``).
    """

    def __init__(self, model_name: str = "vim_tiny_patch16_224", model_kwargs: dict[str, Any] | None = None,
                 num_classes: int = 1000, in_chans: int = 3, img_size: int = 224, pretrained: str | None = None,
                 lr: float = 5e-4, warmup_lr: float = 1e-6, min_lr: float = 1e-5, warmup_epochs: float = 5.0,
                 weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.999), label_smoothing: float = 0.1,
                 mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, mixup_prob: float = 1.0,
                 mixup_switch_prob: float = 0.5, ema_decay: float | None = None, channels_last: bool = False,
                 grad_checkpointing: bool = False, no_weight_decay: tuple[str, ...] = ()):
        super().__init__()
        for name, value in (("label_smoothing", label_smoothing), ("mixup_prob", mixup_prob),
                            ("mixup_switch_prob", mixup_switch_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], found {value}")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1) or be None, found {ema_decay}")
        if warmup_epochs < 0 or lr <= 0:
            raise ValueError(f"lr must be > 0 and warmup_epochs >= 0, found lr={lr}, warmup_epochs={warmup_epochs}")
        self.save_hyperparameters()
        self.model = build_model(model_name, num_classes, in_chans, img_size, pretrained, **(model_kwargs or {}))
        if grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mixup = None
        if mixup_alpha > 0 or cutmix_alpha > 0:
            self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=mixup_prob,
                               switch_prob=mixup_switch_prob, label_smoothing=label_smoothing, num_classes=num_classes)
        self.soft_loss = SoftTargetCrossEntropy()
        self.ema = None
        if ema_decay is not None:
            self.ema = ModelEmaV3(self.model, decay=ema_decay)
            self.ema.requires_grad_(False)
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict({
            f"{split}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
            for split in ("val", "val_ema", "test", "test_ema") for name, k in (("top1", 1), ("top5", top5))
        })
        self._ema_step = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> logits [B, num_classes]."""
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # [B, C, H, W], [B]
        if self.mixup is not None:
            if x.shape[0] % 2:
                raise ValueError(f"mixup / cutmix need an even batch size (data.batch_size), found {x.shape[0]}")
            x, soft = self.mixup(x, y)  # soft: [B, num_classes]
            loss = self.soft_loss(self(x), soft)
        else:
            loss = F.cross_entropy(self(x), y, label_smoothing=self.hparams.label_smoothing)
        log_training_step(self, {"train/loss": loss}, batch_size=x.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # one EMA update per optimizer step (gradient accumulation takes several batches per step)
        if self.ema is not None and self.global_step != self._ema_step:
            self.ema.update(self.model, step=self.global_step)
            self._ema_step = self.global_step

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        x, y = batch  # [B, C, H, W], [B]
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        models = [(split, self.model)] + ([(f"{split}_ema", self.ema.module)] if self.ema is not None else [])
        for name, model in models:
            logits = model(x)  # [B, num_classes]
            self.log(f"{name}/loss", F.cross_entropy(logits, y), batch_size=x.shape[0], prog_bar=name == "val")
            for k in ("top1", "top5"):
                metric = self.metrics[f"{name}_{k}"]
                metric.update(logits, y)
                self.log(f"{name}/{k}", metric, on_step=False, on_epoch=True, batch_size=x.shape[0],
                         prog_bar=name == "val" and k == "top1")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).softmax(-1)  # [B, num_classes]

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        skip = set(NO_WEIGHT_DECAY) | set(hp.no_weight_decay) | set(getattr(self.model, "no_weight_decay", set)())
        groups = param_groups_weight_decay(self.model, hp.weight_decay, no_weight_decay_list=skip)
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))  # also sets num_training_batches
        batches = self.trainer.num_training_batches
        if math.isfinite(batches) and batches > 0:
            per_epoch = max(1, int(batches) // self.trainer.accumulate_grad_batches)
        else:
            per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = min(total - 1, round(hp.warmup_epochs * per_epoch))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup, hp.lr, hp.warmup_lr, hp.min_lr) / hp.lr)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
