"""``ssmkit timeseries fit|validate|test|predict|evaluate|forecast``: forecasting on the shared LightningCLI.

- ``fit | validate | test | predict -c CONFIG [--ckpt_path PATH]``: LightningCLI subcommands. ``predict`` runs over
  the windows of the configured data set's test split (Lightning's predict loop needs a split of windows); a
  checkpoint trained for another ``n_vars`` / ``seq_len`` / ``pred_len`` / model is refused before loading.
- ``evaluate -c CONFIG ...``: our numbers beside the paper's (``ssmkit.timeseries.evaluate``).
- ``forecast --ckpt PATH --data NEW.csv [--out forecasts.csv] [-c CONFIG]``: prediction on new data. Reads the CSV
  (a ``date`` column and the training columns, at least ``seq_len`` rows; bad cells are reported by column and row),
  forecasts the ``pred_len`` steps after its last row with ``Forecaster.predict_dataframe`` (future timestamps
  from the inferred frequency, original scale) and writes them as a CSV, atomically (default: print to stdout).
  With ``-c``, the config's ``seq_len`` / ``pred_len`` / ``features`` / model must match the checkpoint's.
  This is a dedicated subcommand because LightningCLI's ``predict`` cannot take a frame without split borders.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from ssmkit.core.io import write_text_atomic
from ssmkit.core.lightning_cli import SsmkitCLI, run_cli

from .data import TimeSeriesDataModule, read_series
from .module import Forecaster

# Window sizes and the feature mode are written once, under ``data``; the variate count is read from the data file.
LINKS = (("data.seq_len", "model.seq_len"), ("data.pred_len", "model.pred_len"), ("data.features", "model.features"),
         ("data.n_vars", "model.n_vars", "instantiate"))

# config key -> Forecaster hyper-parameter compared by ``forecast -c``
CONFIG_CHECKS = (("data.seq_len", "seq_len"), ("data.pred_len", "pred_len"), ("data.features", "features"),
                 ("model.model_name", "model_name"))


def forecast_main(argv: Sequence[str]) -> pl.DataFrame:
    """``ssmkit timeseries forecast``: forecast after the end of a CSV with a trained checkpoint."""
    parser = argparse.ArgumentParser(prog="ssmkit timeseries forecast", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a checkpoint written by `ssmkit timeseries fit`")
    parser.add_argument("--data", required=True, help="CSV (or .csv.gz) with a date column and the training columns")
    parser.add_argument("--out", default=None, help="output CSV (default: print to stdout)")
    parser.add_argument("-c", "--config", default=None, help="the training config, checked against the checkpoint")
    opts = parser.parse_args(list(argv))
    if not Path(opts.ckpt).is_file():
        raise FileNotFoundError(f"--ckpt: expected an existing checkpoint file, found {opts.ckpt!r}")
    frame = read_series(opts.data)
    forecaster = Forecaster.load_from_checkpoint(opts.ckpt, map_location="cpu", pretrained=None)
    if opts.config is not None:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(opts.config)
        for key, name in CONFIG_CHECKS:
            value = OmegaConf.select(cfg, key, default=None)
            if value is not None and value != forecaster.hparams[name]:
                raise ValueError(f"{opts.config}: {key} = {value!r}, but the checkpoint {opts.ckpt} was trained with "
                                 f"{name} = {forecaster.hparams[name]!r}")
    forecast = forecaster.predict_dataframe(frame)
    text = forecast.write_csv(datetime_format="%Y-%m-%d %H:%M:%S")  # the Time-Series-Library date format
    if opts.out is None:
        print(text, end="")
    else:
        write_text_atomic(opts.out, text)
    return forecast


def main(argv: Sequence[str] | None = None) -> SsmkitCLI | dict | pl.DataFrame:
    """Run the time-series CLI on ``argv`` (``sys.argv[1:]`` when None) and return it after the run.

    ``evaluate ...`` runs ``ssmkit.timeseries.evaluate`` (paper-table comparison) and ``forecast ...`` the prediction
    on new data (module docstring) instead of a LightningCLI subcommand.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate"]:
        from .evaluate import main as evaluate_main

        return evaluate_main(argv[1:])
    if argv[:1] == ["forecast"]:
        return forecast_main(argv[1:])
    return run_cli(Forecaster, TimeSeriesDataModule, argv, link=LINKS)


if __name__ == "__main__":
    main()
