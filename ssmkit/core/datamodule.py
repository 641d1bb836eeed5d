"""A LightningDataModule whose four dataloader hooks come from one ``_loader(split, train)`` method."""

from __future__ import annotations

import abc

import lightning as L
from torch.utils.data import DataLoader

__all__ = ["SplitDataModule"]


class SplitDataModule(L.LightningDataModule, abc.ABC):
    """Train, val, test and predict loaders from ``_loader(split, train)``, which subclasses implement.

    ``train`` is True for the training loader only (shuffle, drop_last and the training batch size are the
    subclass's to choose from it). Test and predict read ``test_split``: "test", or "val" for data with no test split.
    """

    test_split = "test"

    @abc.abstractmethod
    def _loader(self, split: str, train: bool) -> DataLoader:
        """The DataLoader of ``split`` ("train", "val" or "test"); ``train`` is True for the training loader."""

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, train=False)
