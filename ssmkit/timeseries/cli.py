"""``ssmkit timeseries fit|validate|test|predict -c CONFIG``: forecasting on the shared LightningCLI."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ssmkit.core.lightning_cli import SsmkitCLI, run_cli

from .data import TimeSeriesDataModule
from .module import Forecaster

# Window sizes and the feature mode are written once, under ``data``; the variate count is read from the data file.
LINKS = (("data.seq_len", "model.seq_len"), ("data.pred_len", "model.pred_len"), ("data.features", "model.features"),
         ("data.n_vars", "model.n_vars", "instantiate"))


def main(argv: Sequence[str] | None = None) -> SsmkitCLI | dict:
    """Run the time-series CLI on ``argv`` (``sys.argv[1:]`` when None) and return it after the run.

    ``evaluate ...`` runs ``ssmkit.timeseries.evaluate`` (paper-table comparison) instead of a LightningCLI subcommand.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate"]:
        from .evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    return run_cli(Forecaster, TimeSeriesDataModule, argv, link=LINKS)


if __name__ == "__main__":
    main()
