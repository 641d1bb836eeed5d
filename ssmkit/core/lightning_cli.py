"""Shared LightningCLI construction for every domain's ``cli.py``: one place for the run conventions.

Every domain runs ``run_cli(ModelClass, DataModuleClass, argv, link=[...])``, which gives it:

- subcommands ``fit | validate | test | predict`` with ``-c CONFIG`` and dotted overrides (``--trainer.max_epochs 3``);
- the omegaconf parser mode, so configs can interpolate (``num_val: ${data.batch_size}``); an interpolation is
  resolved when its file is loaded, so it sees that file's values, not later command line overrides;
- data-to-model links (``link=[("data.vocab_size", "model.vocab_size")]``): a value is written once, in ``data``;
- a configurable ``checkpoint`` group (a ``ModelCheckpoint`` with ``save_last=True``) whose directory defaults to
  ``<trainer.default_root_dir>/checkpoints``, the same for every run of that root, so ``--ckpt_path last`` resumes
  the previous run;
- the resolved config saved as ``config.yaml`` in each run's log directory (overwritten when a run reuses it);
- a ``RichProgressBar``, unless the config disables the progress bar or names a progress bar of its own.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

__all__ = ["SsmkitCLI", "run_cli"]

APPLY_ON = ("parse", "instantiate")
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _check_links(link: Sequence[tuple[str, ...]]) -> list[tuple[str, str, str]]:
    """Normalize ``(source, target)`` / ``(source, target, apply_on)`` tuples; raise on anything else."""
    links = []
    for item in link:
        if not isinstance(item, tuple | list) or len(item) not in (2, 3) or not all(isinstance(s, str) for s in item):
            raise TypeError(f"link: expected (source, target) or (source, target, apply_on) strings, found {item!r}")
        source, target, apply_on = (*item, "parse") if len(item) == 2 else item
        if apply_on not in APPLY_ON:
            raise ValueError(f"link {source!r} -> {target!r}: apply_on must be one of {APPLY_ON}, found {apply_on!r}")
        links.append((source, target, apply_on))
    return links


class SsmkitCLI(LightningCLI):
    """LightningCLI with ssmkit's conventions (see the module docstring).

    Args:
        *args: positional arguments of ``LightningCLI``.
        links: normalized ``(source, target, apply_on)`` links, declared in ``add_arguments_to_parser``.
        **kwargs: keyword arguments of ``LightningCLI``.
    """

    def __init__(self, *args: Any, links: Sequence[tuple[str, str, str]] = (), **kwargs: Any) -> None:
        # LightningCLI builds the parser inside __init__, so the links must be known before it runs.
        self.links = list(links)
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add the ``checkpoint`` group (``save_last=True``) and the data-to-model links."""
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True})
        for source, target, apply_on in self.links:
            parser.link_arguments(source, target, apply_on=apply_on)

    def before_instantiate_classes(self) -> None:
        """Resolve the checkpoint directory and decide on the default progress bar before anything is built."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        root = config.trainer.default_root_dir or os.getcwd()
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(Path(root) / "checkpoints")
        callbacks = config.trainer.callbacks or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        own_bar = any("ProgressBar" in str(getattr(cb, "class_path", cb)) for cb in callbacks)
        if config.trainer.enable_progress_bar is not False and not own_bar:
            defaults = list(self.trainer_defaults.get("callbacks", []))
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": [*defaults, RichProgressBar()]}


def run_cli(
    model_class: type[LightningModule],
    datamodule_class: type[LightningDataModule],
    args: Sequence[str] | None = None,
    link: Sequence[tuple[str, ...]] = (),
    *,
    subclass_mode_model: bool = False,
    subclass_mode_data: bool = False,
    trainer_defaults: dict[str, Any] | None = None,
) -> SsmkitCLI:
    """Parse ``args`` (``sys.argv[1:]`` when None) and run the chosen subcommand.

    Args:
        model_class: the domain's LightningModule (a base class when ``subclass_mode_model``).
        datamodule_class: the domain's LightningDataModule (a base class when ``subclass_mode_data``).
        args: command line, e.g. ``["fit", "-c", "configs/synthetic/smoke.yaml", "--trainer.max_epochs", "2"]``.
        link: data-to-model links as ``(source, target)`` (applied at parse time) or
            ``(source, target, "instantiate")`` (read from the instantiated data module).
        subclass_mode_model: accept any subclass of ``model_class`` as ``model.class_path`` in the config.
        subclass_mode_data: accept any subclass of ``datamodule_class`` as ``data.class_path`` in the config.
        trainer_defaults: Trainer defaults of this domain (a config file or the command line overrides them).

    Returns:
        The ``SsmkitCLI`` after the run (``.trainer``, ``.model``, ``.datamodule``, ``.config``).
    """
    links = _check_links(link)
    parser_kwargs: dict[str, Any] = {"parser_mode": "omegaconf"}
    parser_kwargs.update({name: {"parser_mode": "omegaconf"} for name in SUBCOMMANDS})
    args = list(sys.argv[1:] if args is None else args)
    with warnings.catch_warnings():
        # `ssmkit <domain> ...` always hands its own argument list over; the process argv holds the domain too
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return SsmkitCLI(
            model_class,
            datamodule_class,
            links=links,
            args=args,
            parser_kwargs=parser_kwargs,
            save_config_kwargs={"overwrite": True},
            subclass_mode_model=subclass_mode_model,
            subclass_mode_data=subclass_mode_data,
            trainer_defaults=trainer_defaults,
        )
