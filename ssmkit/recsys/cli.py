"""``ssmkit recsys fit|validate|test|predict -c CONFIG`` and ``ssmkit recsys evaluate -c CONFIG [--seeds ...]``.

Subclass mode: a config names ``model.class_path`` (``ssmkit.recsys.module.SequentialRecommender``, or the CTR
module) and ``data.class_path``, so sequential and CTR pipelines share this entry point. The sequential module reads
``n_items`` / ``max_len`` from the data module in ``setup`` (no link, which a CTR model would not accept).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from ssmkit.core.lightning_cli import SsmkitCLI, run_cli

SEQUENTIAL = "ssmkit.recsys.module.SequentialRecommender"


def config_model_class(config: str) -> str:
    """The ``model.class_path`` of a config file (raises naming the file when it has none)."""
    from omegaconf import OmegaConf

    if not Path(config).is_file():
        raise ValueError(f"--config: expected an existing YAML file, found {config!r}")
    class_path = OmegaConf.select(OmegaConf.load(config), "model.class_path")
    if not class_path:
        raise ValueError(f"{config}: expected model.class_path (e.g. {SEQUENTIAL}), found none")
    return class_path


def evaluate(argv: list[str]) -> dict:
    """Dispatch ``evaluate`` on the config's model class: sequential here, CTR in ``ssmkit.recsys.ctr_evaluate``."""
    config = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")), None)
    if config is None:
        raise ValueError("ssmkit recsys evaluate: -c CONFIG is required")
    class_path = config_model_class(config)
    if class_path.rsplit(".", 1)[-1] == SEQUENTIAL.rsplit(".", 1)[-1]:
        from .evaluate import main as sequential_main

        return sequential_main(argv)
    return ctr_evaluate(config, class_path, argv)


def ctr_evaluate(config: str, class_path: str, argv: list[str]) -> dict:
    """Hand a non-sequential (CTR) config to ``ssmkit.recsys.ctr_evaluate.main``; raise when that module is absent."""
    if importlib.util.find_spec("ssmkit.recsys.ctr_evaluate") is None:
        raise ValueError(f"{config}: model.class_path {class_path!r} is not {SEQUENTIAL} and "
                         f"ssmkit.recsys.ctr_evaluate is not installed to evaluate it")
    module = importlib.import_module("ssmkit.recsys.ctr_evaluate")
    return module.main(argv)


def main(argv: Sequence[str] | None = None) -> SsmkitCLI | dict:
    """Run the recsys CLI on ``argv`` (``sys.argv[1:]`` when None); returns the CLI (or the evaluation dict)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["evaluate"]:
        return evaluate(argv[1:])
    return run_cli(L.LightningModule, L.LightningDataModule, argv, subclass_mode_model=True,
                   subclass_mode_data=True)


if __name__ == "__main__":
    main()
