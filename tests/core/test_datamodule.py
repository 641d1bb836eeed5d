"""``SplitDataModule``: each Lightning hook asks ``_loader`` for its split."""

import pytest
from torch.utils.data import DataLoader

from ssmkit.core.datamodule import SplitDataModule


class _Recording(SplitDataModule):
    def _loader(self, split: str, train: bool) -> DataLoader:
        return DataLoader([(split, train)], batch_size=None)


def _asked(module: SplitDataModule) -> list:
    hooks = (module.train_dataloader, module.val_dataloader, module.test_dataloader, module.predict_dataloader)
    return [tuple(next(iter(hook()))) for hook in hooks]


def test_each_hook_reads_its_split():
    assert _asked(_Recording()) == [("train", True), ("val", False), ("test", False), ("test", False)]


def test_test_split_can_be_val():
    module = _Recording()
    module.test_split = "val"
    assert _asked(module)[2:] == [("val", False), ("val", False)]


def test_a_subclass_without_loader_says_so():
    class _NoLoader(SplitDataModule):
        pass

    with pytest.raises(TypeError, match="_loader"):  # refused when built, before any loader is asked for
        _NoLoader()
