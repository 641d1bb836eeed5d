"""A tiny synthetic domain: the Mamba paper's selective copying task, end to end through the shared CLI.

``ssmkit synthetic fit -c configs/synthetic/smoke.yaml`` trains a token-level Mamba (``TokenMamba``, wrapped by the
LightningModule ``SequenceModel``) on data generated from a seed (``SelectiveCopyingDataModule``).
"""

from .data import SelectiveCopyingDataModule, selective_copying_sample
from .model import TokenMamba
from .module import SequenceModel

__all__ = ["SelectiveCopyingDataModule", "SequenceModel", "TokenMamba", "selective_copying_sample"]
