"""The ``ssmkit`` console script: ``models``, ``export`` and ``<domain> fit|validate|test|predict|...``.

Usage:
    ssmkit models [--domain D] [--pattern P]       # the model registry as a table (name, domain, summary)
    ssmkit export CKPT OUT.safetensors [--key K] [--prefix P]   # a checkpoint's state_dict as safetensors
    ssmkit <domain> fit -c CONFIG [--trainer.max_epochs 3 ...]   # handed to ssmkit.<domain>.cli:main(argv)

Domains are the sub-packages of ``ssmkit`` that hold a ``cli.py``; they are imported by name (importlib), so this
module imports no domain and stays light: Lightning is loaded only by the domain that runs, and ``ssmkit models``
lets the registry import the domains (their models register on import).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["available_domains", "main"]

PACKAGE_DIR = Path(__file__).resolve().parents[1]
COMMANDS = ("models", "export")
USAGE = """usage: ssmkit {{models,export,<domain>}} ...

  ssmkit models [--domain D] [--pattern P]                    list registered models
  ssmkit export CKPT OUT.safetensors [--key K] [--prefix P]   export a checkpoint's weights as safetensors
  ssmkit <domain> fit|validate|test|predict -c CONFIG [--section.key value ...]

domains: {domains}
"""


def available_domains() -> list[str]:
    """Sub-packages of ``ssmkit`` with a ``cli.py`` (the domains ``ssmkit <domain> ...`` can run), sorted."""
    return sorted(p.parent.name for p in PACKAGE_DIR.glob("*/cli.py") if p.parent.name not in ("core", "kernels"))


def _models(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="ssmkit models", description="List the registered models.")
    parser.add_argument("--domain", help="only this domain, e.g. 'vision'")
    parser.add_argument("--pattern", help="only names matching this fnmatch pattern, e.g. 'vim_*'")
    opts = parser.parse_args(argv)
    from rich.console import Console
    from rich.table import Table

    from ssmkit.core.registry import list_models, model_info

    names = list_models(domain=opts.domain, pattern=opts.pattern)
    table = Table(title=f"ssmkit models ({len(names)})")
    for column in ("name", "domain", "summary"):
        table.add_column(column, overflow="fold")
    for name in names:
        info = model_info(name)
        table.add_row(name, str(info.get("domain", "")), str(info.get("summary", "")))
    Console().print(table)


def _export(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="ssmkit export", description="Export a checkpoint's weights as safetensors.")
    parser.add_argument("ckpt", type=Path, help="checkpoint: Lightning .ckpt, torch .pth/.pt, or .safetensors")
    parser.add_argument("out", type=Path, help="output file, e.g. model.safetensors (written atomically)")
    parser.add_argument("--key", help="top-level entry that holds the weights, e.g. 'model', 'state_dict', 'model_ema'")
    parser.add_argument("--prefix", help="keep only the keys starting with this prefix, stripped (e.g. 'net.')")
    opts = parser.parse_args(argv)
    if not opts.ckpt.is_file():
        parser.error(f"CKPT: expected an existing checkpoint file, found {str(opts.ckpt)!r}")
    if opts.out.suffix != ".safetensors":
        parser.error(f"OUT: expected a path ending in '.safetensors', found {str(opts.out)!r}")
    from ssmkit.core.checkpoint import export_safetensors

    export_safetensors(opts.ckpt, opts.out, key=opts.key, prefix=opts.prefix)
    print(f"wrote {opts.out}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the ``ssmkit`` command line.

    Args:
        argv: arguments without the program name (``sys.argv[1:]`` when None), e.g.
            ``["synthetic", "fit", "-c", "configs/synthetic/smoke.yaml"]``.

    Raises:
        SystemExit: with usage help on ``-h`` / no command, or with an error naming the known commands and domains.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    domains = available_domains()
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(domains=", ".join(domains)))
        raise SystemExit(0 if argv else 2)
    command, rest = argv[0], argv[1:]
    if command == "models":
        _models(rest)
    elif command == "export":
        _export(rest)
    elif command in domains:
        importlib.import_module(f"ssmkit.{command}.cli").main(rest)
    else:
        raise SystemExit(
            f"ssmkit: unknown command or domain {command!r}; expected one of {list(COMMANDS)} or a domain in {domains}"
        )


if __name__ == "__main__":
    main()
