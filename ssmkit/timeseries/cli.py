"""``ssmkit timeseries fit|validate|test|predict -c CONFIG``: forecasting on the shared LightningCLI."""

from __future__ import annotations

from collections.abc import Sequence

from ssmkit.core.lightning_cli import SsmkitCLI, run_cli

from .data import TimeSeriesDataModule
from .module import Forecaster

# Window sizes and the feature mode are written once, under ``data``; the variate count is read from the data file.
LINKS = (("data.seq_len", "model.seq_len"), ("data.pred_len", "model.pred_len"), ("data.features", "model.features"),
         ("data.n_vars", "model.n_vars", "instantiate"))


def main(argv: Sequence[str] | None = None) -> SsmkitCLI:
    """Run the time-series CLI on ``argv`` (``sys.argv[1:]`` when None) and return it after the run."""
    return run_cli(Forecaster, TimeSeriesDataModule, argv, link=LINKS)


if __name__ == "__main__":
    main()
