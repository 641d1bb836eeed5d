"""``SequenceModel``: the LightningModule of the synthetic domain (loss, accuracy, AdamW + cosine schedule).

The model reads ``tokens [B, L]`` and is scored on its predictions at the last ``num_tokens`` positions (the
markers of the selective copying task) against ``targets [B, K]``. ``vocab_size``, ``seq_len`` and ``num_tokens``
come from the data module through the CLI links, so they are never written twice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import Tensor
from torchmetrics.classification import MulticlassAccuracy

from .model import TokenMamba

__all__ = ["SequenceModel"]

STAGES = ("train", "val", "test")


class SequenceModel(LightningModule):
    """Token-level Mamba trained with cross entropy on the last ``num_tokens`` positions.

    Args:
        vocab_size: V (linked from ``data.vocab_size``).
        seq_len: L, the input length every batch must have (linked from ``data.seq_len``).
        num_tokens: K, the number of scored positions at the end of the sequence (linked from ``data.num_tokens``).
        d_model: model width D.
        depth: number of Mamba blocks.
        d_state: SSM state size N.
        d_conv: causal convolution width.
        expand: inner width factor.
        backend: scan backend of every mixer (``"auto"`` picks the fused CPU kernel or Triton by device).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay, not applied to 1-D parameters (biases, norm weights) nor to parameters
            marked ``_no_weight_decay`` (Mamba's ``A_log`` and ``D``).
        min_lr_ratio: the cosine schedule decays from ``lr`` to ``lr * min_lr_ratio`` over all training steps.
    """

    def __init__(
        self, vocab_size: int, seq_len: int, num_tokens: int, d_model: int, depth: int, d_state: int = 16,
        d_conv: int = 4, expand: int = 2, backend: str = "auto", lr: float = 1e-3, weight_decay: float = 0.0,
        min_lr_ratio: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < num_tokens <= seq_len:
            raise ValueError(f"SequenceModel: num_tokens must be in [1, seq_len={seq_len}], found {num_tokens!r}")
        if lr <= 0 or weight_decay < 0 or not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(
                f"SequenceModel: expected lr > 0, weight_decay >= 0 and 0 <= min_lr_ratio <= 1, found lr={lr!r}, "
                f"weight_decay={weight_decay!r}, min_lr_ratio={min_lr_ratio!r}"
            )
        self.save_hyperparameters()
        self.seq_len, self.num_tokens = seq_len, num_tokens
        self.net = TokenMamba(vocab_size, d_model, depth, d_state=d_state, d_conv=d_conv, expand=expand,
                              backend=backend)
        # Keys are prefixed: "train" would shadow ModuleDict.train().
        self.accuracy = torch.nn.ModuleDict(
            {f"{stage}_acc": MulticlassAccuracy(num_classes=vocab_size, average="micro") for stage in STAGES}
        )

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits at the scored positions.

        Args:
            tokens: [B, L] token ids, L == ``seq_len``.

        Returns:
            logits [B, K, V] for the last K = ``num_tokens`` positions.
        """
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            found = tuple(tokens.shape)
            raise ValueError(f"SequenceModel: tokens must be [B, {self.seq_len}] (seq_len), found {found}")
        return self.net(tokens)[:, -self.num_tokens :]  # [B, K, V]

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        tokens, targets = batch  # [B, L], [B, K]
        logits = self(tokens)  # [B, K, V]
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        metric = self.accuracy[f"{stage}_acc"]
        metric(logits.argmax(-1), targets)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, sync_dist=not on_step)
        self.log(f"{stage}/acc", metric, prog_bar=True, on_step=on_step, on_epoch=True)
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Predicted data tokens [B, K]."""
        return self(batch[0]).argmax(-1)  # [B, K]

    def configure_optimizers(self) -> dict:
        """AdamW (no decay on 1-D parameters and on parameters marked ``_no_weight_decay``) + per-step cosine decay."""
        decay, no_decay = [], []
        for param in self.parameters():
            if param.requires_grad:
                skip = param.dim() < 2 or getattr(param, "_no_weight_decay", False)
                (no_decay if skip else decay).append(param)
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=self.hparams.lr)
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total_steps, eta_min=self.hparams.lr * self.hparams.min_lr_ratio
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
