"""``ssmkit synthetic fit|validate|test|predict -c CONFIG``: the selective copying task on the shared CLI."""

from __future__ import annotations

from collections.abc import Sequence

from ssmkit.core.lightning_cli import SsmkitCLI, run_cli

from .data import SelectiveCopyingDataModule
from .module import SequenceModel

# The task's sizes are written once, under ``data``, and copied into the model when the config is parsed.
LINKS = (("data.vocab_size", "model.vocab_size"), ("data.seq_len", "model.seq_len"),
         ("data.num_tokens", "model.num_tokens"))


def main(argv: Sequence[str] | None = None) -> SsmkitCLI:
    """Run the synthetic-domain CLI on ``argv`` (``sys.argv[1:]`` when None) and return it after the run."""
    return run_cli(SequenceModel, SelectiveCopyingDataModule, argv, link=LINKS)


if __name__ == "__main__":
    main()
