"""``ssmkit vision fit|validate|test|predict -c CONFIG`` and ``ssmkit vision evaluate ...``.

The config's ``data.class_path`` picks the DataModule (``ssmkit.vision.data.MNISTDataModule``,
``CIFARDataModule`` or ``ImageFolderDataModule``); its ``num_classes``, ``in_chans`` and ``img_size`` are linked to
the model, so they are written once, under ``data``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ssmkit.core.lightning_cli import SsmkitCLI, run_cli

from .data import ImageDataModule
from .module import ImageClassifier

LINKS = (("data.num_classes", "model.num_classes", "instantiate"), ("data.in_chans", "model.in_chans", "instantiate"),
         ("data.img_size", "model.img_size", "instantiate"))


def main(argv: Sequence[str] | None = None) -> SsmkitCLI | dict:
    """Run the vision CLI on ``argv`` (``sys.argv[1:]`` when None) and return it after the run.

    ``evaluate ...`` runs ``ssmkit.vision.evaluate`` (top-1 / top-5 of a checkpoint) instead of a LightningCLI
    subcommand.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate"]:
        from .evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    return run_cli(ImageClassifier, ImageDataModule, argv, link=LINKS, subclass_mode_data=True)


if __name__ == "__main__":
    main()
