"""``log_training_step`` writes the same logged steps and values as ``self.log`` on every step."""

import csv

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ssmkit.core.step_log import log_training_step


class _Regression(L.LightningModule):
    def __init__(self, every_step: bool):
        super().__init__()
        self.every_step = every_step
        self.layer = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        values = {"train/loss": loss, "train/double": 2 * loss}
        if self.every_step:
            for name, value in values.items():
                self.log(name, value, prog_bar=name == "train/loss", batch_size=x.shape[0])
        else:
            log_training_step(self, values, batch_size=x.shape[0])
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _logged_rows(tmp_path, every_step: bool, **trainer_kwargs) -> list[dict]:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(40, 3), torch.randn(40, 1))
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name=str(every_step))
    trainer = L.Trainer(accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, **trainer_kwargs)
    trainer.fit(_Regression(every_step), DataLoader(data, batch_size=4))
    with open(logger.log_dir + "/metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("settings", [dict(max_epochs=2, log_every_n_steps=3), dict(max_steps=7, log_every_n_steps=2),
                                      dict(max_epochs=1, log_every_n_steps=1)])
def test_same_rows_as_logging_every_step(tmp_path, settings):
    expected = _logged_rows(tmp_path, every_step=True, **settings)
    got = _logged_rows(tmp_path, every_step=False, **settings)
    assert len(expected) > 1
    assert got == expected
