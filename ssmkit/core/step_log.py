"""Training-step metrics logged on the steps Lightning's loggers write, and skipped on the others.

In Lightning 2.6, every ``LightningModule.log`` call in ``training_step`` costs about 2 ms on the CPU, whatever
the logger: it moves the stored ``_ResultMetric`` with ``apply_to_collection`` over its whole ``__dict__``. That
was 6% of an S-Mamba bfloat16 training step (a cProfile of ``Trainer.fit``, one thread). A logger only writes
step metrics every ``trainer.log_every_n_steps`` steps (and when training stops), so ``log_training_step`` calls
``log`` only on those steps. The logged files are the same. The progress bar shows the value of the last written
step.
"""

from __future__ import annotations

import lightning as L
import torch

__all__ = ["log_training_step"]


def log_training_step(module: L.LightningModule, values: dict[str, torch.Tensor], batch_size: int,
                      prog_bar: str | None = "train/loss") -> None:
    """``module.log(name, value, batch_size=batch_size)`` for every entry, on the steps a logger writes.

    Args:
        module: the LightningModule, inside ``training_step``.
        values: metric name -> scalar tensor.
        batch_size: samples in the batch (for Lightning's averaging).
        prog_bar: the name shown in the progress bar, or None.
    """
    try:
        trainer = module.trainer
    except RuntimeError:  # not attached to a Trainer: log as asked
        trainer = None
    if trainer is not None:
        every = trainer.log_every_n_steps
        # the condition of Lightning's logger connector: the step about to be taken is a multiple of every
        if every and (module.global_step + 1) % every != 0 and not (trainer.should_stop or trainer.fast_dev_run):
            return
    for name, value in values.items():
        module.log(name, value, prog_bar=name == prog_bar, batch_size=batch_size)
