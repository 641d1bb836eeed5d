"""``ssmkit graphs fit|validate|test|predict -c CONFIG`` and ``ssmkit graphs evaluate``: graph benchmarks.

The config names the LightningModule (``model.class_path``: ``ssmkit.graphs.module.GraphClassifier`` or
``NodeClassifier``); the data module's metadata (feature and class counts, edge feature size, task level, metric)
is linked into it, so no value is written twice.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ssmkit.core.lightning_cli import SsmkitCLI, run_cli

from .data import GraphDataModule
from .module import GraphTask

LINKS = tuple((f"data.{name}", f"model.init_args.{name}", "instantiate")
              for name in ("in_channels", "out_channels", "edge_dim", "task", "metric", "pe_type", "pe_dim"))


def main(argv: Sequence[str] | None = None) -> SsmkitCLI | dict:
    """Run the graph CLI on ``argv`` (``sys.argv[1:]`` when None) and return it after the run.

    ``evaluate ...`` runs ``ssmkit.graphs.evaluate`` (seeds or folds, mean and std beside published numbers).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate"]:
        from .evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    return run_cli(GraphTask, GraphDataModule, argv, link=LINKS, subclass_mode_model=True)


if __name__ == "__main__":
    main()
