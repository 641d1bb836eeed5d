"""Shared pieces of the domains' ``ssmkit <domain> evaluate`` commands: common arguments, output folder, machine name.

Every domain's evaluate runs a config for several seeds and writes JSON + Markdown beside the paper's numbers; the
argument names (``-c/--config``, ``--ckpt``, ``--seeds``, ``--out``), their checks and the description of the machine
that ran them are the same everywhere, so they live here.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

__all__ = ["cpu_name", "device_description", "evaluation_parser", "output_folder"]


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one), e.g. 'AMD EPYC 7B13'."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device | str = "cpu") -> str:
    """'NVIDIA H100 80GB HBM3' for a CUDA device, else 'CPU <model>, <n> torch thread(s)'."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_name()}, {torch.get_num_threads()} torch thread(s)"


def evaluation_parser(prog: str, description: str | None, config_help: str,
                      default_seeds: list[int]) -> argparse.ArgumentParser:
    """An argument parser with the common evaluate arguments: ``-c/--config``, ``--ckpt``, ``--seeds``, ``--out``.

    Args:
        prog: e.g. ``"ssmkit timeseries evaluate"``.
        description: the module docstring of the domain's evaluate (shown by ``--help``).
        config_help: what ``--config`` expects, e.g. ``"a configs/timeseries/... YAML"``.
        default_seeds: the seeds run when ``--seeds`` is not given (the paper's first seed).

    Returns:
        The parser; a domain may add its own arguments before parsing.
    """
    parser = argparse.ArgumentParser(prog=prog, description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help=config_help)
    parser.add_argument("--ckpt", default=None, help="evaluate this trained checkpoint instead of training")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds))
    parser.add_argument("--out", default=None, help="output folder (default: the config's default_root_dir)")
    return parser


def output_folder(parser: argparse.ArgumentParser, opts: argparse.Namespace, default: str) -> Path:
    """Check ``--config`` / ``--ckpt`` (a parser error naming the argument) and create the output folder.

    Args:
        parser: the parser that produced ``opts`` (its ``error`` exits with the usage line).
        opts: parsed arguments of ``evaluation_parser``.
        default: folder used when neither ``--out`` nor the config's ``trainer.default_root_dir`` names one.

    Returns:
        ``--out``, else the config's ``trainer.default_root_dir``, else ``default``; created if missing.
    """
    if not Path(opts.config).is_file():
        parser.error(f"--config: expected an existing YAML file, found {opts.config!r}")
    if opts.ckpt is not None and not Path(opts.ckpt).is_file():
        parser.error(f"--ckpt: expected an existing checkpoint file, found {opts.ckpt!r}")
    from omegaconf import OmegaConf

    config = OmegaConf.load(opts.config)
    root = Path(opts.out or OmegaConf.select(config, "trainer.default_root_dir", default=default))
    root.mkdir(parents=True, exist_ok=True)
    return root
