"""``ssmkit graphs evaluate -c CONFIG [--seeds 0 1 2] [--folds 0 1 2] [--splits 0 1]``: mean and std of a metric.

For every seed and every TU fold (``--folds``, sets ``data.fold``) or heterophilous split (``--splits``, sets
``data.split``): train with the config, keep the checkpoint with the best validation metric, test it. The test
metric (accuracy, ROC-AUC for the binary heterophilous tasks, AP for Peptides-func; see ``ssmkit.graphs.module``)
is reported as mean and population std over all runs, beside the published number where one is known
(``PUBLISHED``). Writes ``evaluation.json`` and ``evaluation.md`` into ``--out`` (default: the config's
``trainer.default_root_dir``), atomically. Extra arguments (``--trainer.max_epochs 5``) go to every run.

``ssmkit graphs evaluate --collect DIR [DIR ...] --out FILE.md`` gathers the ``evaluation.json`` of several runs into
one table (dataset rows, model columns), written as FILE.md and FILE.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ssmkit.core.evaluation import cpu_name
from ssmkit.core.io import write_text_atomic

from .data import DATASETS

# (model, dataset) -> (mean, std, source). Only numbers read in the sources of reference/recsys_graphs.md section
# 3.2 (the Graph-Mamba README table, bowang-lab/Graph-Mamba images/main_results.png); GMN published none we could read.
PUBLISHED = {
    ("gcn", "peptides-func"): (0.5930, 0.0023, "Graph-Mamba (arXiv 2402.00789) table"),
    ("gated_gcn", "peptides-func"): (0.5864, 0.0077, "Graph-Mamba (arXiv 2402.00789) table"),
    ("gps", "peptides-func"): (0.6575, 0.0049, "Graph-Mamba (arXiv 2402.00789) table, GPS+Transformer"),
    ("graph_mamba", "peptides-func"): (0.6739, 0.0087, "Graph-Mamba (arXiv 2402.00789) table"),
}
METRIC_NAMES = {"accuracy": "accuracy", "auroc": "ROC-AUC", "ap": "AP"}


def _override(overrides: Sequence[str], key: str) -> str | None:
    """The value of ``--key value`` / ``--key=value`` in ``overrides`` (the last one wins), else None."""
    value = None
    for i, arg in enumerate(overrides):
        if arg == f"--{key}" and i + 1 < len(overrides):
            value = overrides[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    return value


def run_one(config: str, seed: int, data_args: list[str], root: Path, metric: str, overrides: Sequence[str]) -> dict:
    """Fit one seed / fold, test its best-validation checkpoint; returns the test metric and wall times."""
    from .cli import main as cli_main

    tag = "_".join([f"seed{seed}", *(f"{a.lstrip('-').split('.')[-1]}{v}" for a, v in zip(data_args[::2],
                                                                                          data_args[1::2]))])
    args = ["-c", config, "--seed_everything", str(seed), "--trainer.default_root_dir", str(root / tag),
            *data_args, *overrides]
    start = time.perf_counter()
    cli = cli_main(["fit", *args, "--checkpoint.monitor", f"val/{metric}", "--checkpoint.mode", "max"])
    best = cli.trainer.checkpoint_callback.best_model_path
    fit_s = time.perf_counter() - start
    test_start = time.perf_counter()
    cli = cli_main(["test", *args, "--ckpt_path", best])
    value = float(cli.trainer.callback_metrics[f"test/{metric}"])
    return dict(run=tag, seed=seed, data_args=data_args, test=value, checkpoint=best, fit_seconds=round(fit_s, 1),
                test_seconds=round(time.perf_counter() - test_start, 1), model=cli.model.hparams.model_name,
                epochs=cli.trainer.max_epochs)



def evaluate(opts: argparse.Namespace, overrides: list[str], argv: Sequence[str]) -> dict:
    """Run every seed x fold (or split) of ``opts`` and write the JSON and Markdown reports."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(opts.config)
    dataset = _override(overrides, "data.dataset") or OmegaConf.select(cfg, "data.dataset", default="synthetic_graph")
    if dataset not in DATASETS:
        raise ValueError(f"data.dataset must be one of {sorted(DATASETS)}, found {dataset!r}")
    family, _, _, metric = DATASETS[dataset]
    if opts.folds and family != "tu":
        raise ValueError(f"--folds: only the TU datasets have folds, found dataset {dataset!r} (use --splits)")
    if opts.splits and family != "heterophilous" and dataset != "synthetic_node":
        raise ValueError(f"--splits: only the heterophilous datasets have several splits, found {dataset!r}")
    data_runs = ([["--data.fold", str(f)] for f in opts.folds] if opts.folds else
                 [["--data.split", str(s)] for s in opts.splits] if opts.splits else [[]])
    root = Path(opts.out or OmegaConf.select(cfg, "trainer.default_root_dir", default="runs/graphs/evaluate"))
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs = [run_one(opts.config, seed, data_args, root, metric, overrides)
            for seed in opts.seeds for data_args in data_runs]
    values = [r["test"] for r in runs]
    model = runs[0]["model"]
    published = PUBLISHED.get((model, dataset))
    result = dict(
        model=model, dataset=dataset, metric=metric, config=opts.config, seeds=opts.seeds, folds=opts.folds,
        splits=opts.splits, overrides=overrides, runs=runs, mean=statistics.fmean(values),
        std=statistics.pstdev(values), published_mean=published[0] if published else None,
        published_std=published[1] if published else None, published_source=published[2] if published else None,
        wall_seconds=round(time.perf_counter() - start, 1),
        device=f"CPU {cpu_name()}, torch threads {torch.get_num_threads()}",
        command="ssmkit graphs evaluate " + " ".join(argv),
    )
    write_text_atomic(root / "evaluation.json", json.dumps(result, indent=1))
    write_text_atomic(root / "evaluation.md", markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    """One evaluation as a Markdown section: command, runs, ours against the published number."""
    name = METRIC_NAMES[r["metric"]]
    published = (f"{r['published_mean']:.4f} ± {r['published_std']:.4f} ({r['published_source']})"
                 if r["published_mean"] is not None else "n/a")
    runs = ", ".join(f"{x['run']}: {x['test']:.4f} (fit {x['fit_seconds']} s)" for x in r["runs"])
    lines = [
        f"### {r['model']} on {r['dataset']} ({name})", "",
        f"Command: `{r['command']}`  ", f"Runs: {runs}  ", f"Wall time {r['wall_seconds']} s; device: {r['device']}",
        "", f"| {name} | ours (mean ± std over {len(r['runs'])} runs) | published |", "|---|---|---|",
        f"| test | {r['mean']:.4f} ± {r['std']:.4f} | {published} |",
    ]
    return "\n".join(lines) + "\n"


def collect(dirs: Sequence[str], out: str) -> dict:
    """One table (dataset rows, model columns) from the ``evaluation.json`` in ``dirs``; writes ``out`` (.md, .json)."""
    results = []
    for folder in dirs:
        path = Path(folder) / "evaluation.json"
        if not path.is_file():
            raise FileNotFoundError(f"--collect: expected {path} (written by a finished evaluate run), not found")
        results.append(json.loads(path.read_text()))
    models = list(dict.fromkeys(r["model"] for r in results))
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    cell = {(r["model"], r["dataset"]): r for r in results}
    lines = ["| dataset (metric) | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for dataset in datasets:
        metric = next(r["metric"] for r in results if r["dataset"] == dataset)
        row = [f"{cell[m, dataset]['mean']:.4f} ± {cell[m, dataset]['std']:.4f} ({len(cell[m, dataset]['runs'])})"
               if (m, dataset) in cell else "–" for m in models]
        lines.append(f"| {dataset} ({METRIC_NAMES[metric]}) | " + " | ".join(row) + " |")
    table = "\n".join(lines) + "\n"
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_path.with_suffix(".md"), table)
    write_text_atomic(out_path.with_suffix(".json"), json.dumps({"results": results}, indent=1))
    print(table)
    return {"table": table, "results": results}


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` and run the evaluation (or ``--collect``); returns the dict also written as JSON."""
    argv = list(argv or [])
    parser = argparse.ArgumentParser(prog="ssmkit graphs evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", help="a configs/graphs/... YAML")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--folds", type=int, nargs="+", default=[], help="TU test folds (data.fold)")
    parser.add_argument("--splits", type=int, nargs="+", default=[], help="heterophilous splits (data.split)")
    parser.add_argument("--out", default=None, help="output folder (default: the config's default_root_dir)")
    parser.add_argument("--collect", nargs="+", default=None, help="evaluation folders to gather into one table")
    opts, overrides = parser.parse_known_args(argv)
    if opts.collect is not None:
        if not opts.out:
            parser.error("--collect needs --out FILE.md")
        return collect(opts.collect, opts.out)
    if opts.config is None or not Path(opts.config).is_file():
        parser.error(f"--config: expected an existing YAML file, found {opts.config!r}")
    return evaluate(opts, overrides, argv)
