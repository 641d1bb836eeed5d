"""The selective copying task of the Mamba paper (Gu & Dao, 2023, section 3.1 and appendix E.1), generated from a seed.

Each sample is a sequence of ``seq_len`` tokens: a context of ``seq_len - num_tokens`` positions holding
``num_tokens`` data tokens at random positions (in order) among noise tokens, followed by ``num_tokens`` marker
tokens. At the marker positions the model must output the data tokens in the order they appeared. Unlike the
plain copying task, the spacing is random, so a time-invariant (convolutional) model cannot solve it.

Token ids: ``NOISE = 0``, ``MARKER = 1``, data tokens ``2 .. vocab_size - 1``. Sample ``i`` of a split is drawn
from its own generator, numpy's PCG64 seeded by the sequence ``(seed, split, i)`` (torch's CPU generator keeps only
32 bits of a seed, too few to keep millions of samples and the splits apart), so the data are identical on every
process and every run, and nothing is stored or downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssmkit.core.datamodule import SplitDataModule

__all__ = ["MARKER", "NOISE", "SelectiveCopyingDataModule", "SelectiveCopyingDataset", "selective_copying_sample"]

NOISE = 0
MARKER = 1
FIRST_DATA = 2
SPLITS = ("train", "val", "test")


def _check_task(seq_len: int, num_tokens: int, vocab_size: int) -> None:
    for name, value, low in (("seq_len", seq_len, 2), ("num_tokens", num_tokens, 1), ("vocab_size", vocab_size, 3)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, found {value!r}")
    if 2 * num_tokens > seq_len:
        raise ValueError(
            f"num_tokens: the context (seq_len - num_tokens) must hold num_tokens data tokens, so num_tokens <= "
            f"seq_len // 2 = {seq_len // 2}; found num_tokens={num_tokens} with seq_len={seq_len}"
        )


def selective_copying_sample(
    seq_len: int, num_tokens: int, vocab_size: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one selective-copying sample.

    Args:
        seq_len: total input length L (context plus the ``num_tokens`` markers).
        num_tokens: K, the number of data tokens to memorize and reproduce.
        vocab_size: V, including the noise and marker tokens (data tokens are ``2 .. V - 1``).
        rng: the random source.

    Returns:
        tokens [L] (int64) and targets [K] (int64, the data tokens in order of appearance).
    """
    context = seq_len - num_tokens
    targets = torch.from_numpy(rng.integers(FIRST_DATA, vocab_size, size=num_tokens))  # [K]
    positions = torch.from_numpy(np.sort(rng.choice(context, size=num_tokens, replace=False)))  # [K]
    tokens = torch.full((seq_len,), NOISE, dtype=torch.long)  # [L]
    tokens[positions] = targets
    tokens[context:] = MARKER
    return tokens, targets


class SelectiveCopyingDataset(Dataset):
    """``num_samples`` deterministic samples of one split.

    Args:
        num_samples: number of samples.
        seq_len: total input length L.
        num_tokens: K, data tokens per sample.
        vocab_size: V, including noise and marker.
        seed: base seed (a non-negative integer).
        split: ``"train"``, ``"val"`` or ``"test"``; each split draws from different seeds.
    """

    def __init__(self, num_samples: int, seq_len: int, num_tokens: int, vocab_size: int, seed: int, split: str):
        _check_task(seq_len, num_tokens, vocab_size)
        if not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples: expected a positive integer, found {num_samples!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer, found {seed!r}")
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, found {split!r}")
        self.num_samples, self.seq_len, self.num_tokens, self.vocab_size = num_samples, seq_len, num_tokens, vocab_size
        self.seed, self.split_id = seed, SPLITS.index(split)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index: expected 0 <= index < {self.num_samples}, found {index}")
        rng = np.random.default_rng([self.seed, self.split_id, index])
        return selective_copying_sample(self.seq_len, self.num_tokens, self.vocab_size, rng)


class SelectiveCopyingDataModule(SplitDataModule):
    """Train / val / test splits of the selective copying task; predict uses the test split.

    Batches are ``(tokens [B, L], targets [B, K])``. ``vocab_size``, ``seq_len`` and ``num_tokens`` are the values
    the CLI links into the model.

    Args:
        seq_len: total input length L (the Mamba paper uses 4096).
        num_tokens: K, data tokens to memorize (the paper uses 16).
        vocab_size: V, including the noise and marker tokens.
        num_train: training samples per epoch.
        num_val: validation samples.
        num_test: test (and predict) samples.
        batch_size: samples per batch.
        seed: base seed of the generated data (independent of the training seed).
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        seq_len: int,
        num_tokens: int,
        vocab_size: int,
        num_train: int = 1024,
        num_val: int = 128,
        num_test: int = 128,
        batch_size: int = 32,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        _check_task(seq_len, num_tokens, vocab_size)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive integer, found {batch_size!r}")
        self.save_hyperparameters()
        self.seq_len, self.num_tokens, self.vocab_size = seq_len, num_tokens, vocab_size
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.datasets: dict[str, SelectiveCopyingDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Build the split datasets (cheap: samples are generated on access)."""
        for split, size in self.sizes.items():
            self.datasets[split] = SelectiveCopyingDataset(
                size, self.seq_len, self.num_tokens, self.vocab_size, self.seed, split
            )

    def _loader(self, split: str, train: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=train,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

