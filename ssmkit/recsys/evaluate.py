"""``ssmkit recsys evaluate -c CONFIG [--ckpt PATH] [--seeds 2020 2021 2022] [--out DIR] [overrides]``.

For each seed: train with the config (unless ``--ckpt`` gives a trained checkpoint), test the best checkpoint (val
NDCG@10) with full ranking over all items (only PAD masked), record HR / NDCG / MRR at 5, 10, 20 and the wall time.
Writes ``evaluation.json`` and ``evaluation.md`` atomically into ``--out`` (default: the config's
``trainer.default_root_dir``), with the paper's numbers beside ours where they are known.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ssmkit.core.evaluation import cpu_name, evaluation_parser, output_folder
from ssmkit.core.io import write_text_atomic

# Mamba4Rec paper (arXiv 2403.03900), ML-1M, max_len 200 (quoted in chengkai-liu/Mamba4Rec issues #1 and #3).
PAPER = {("mamba4rec", "ml-1m"): {"hr@10": 0.3121, "ndcg@10": 0.1822, "mrr@10": 0.1425}}
SHOWN = ("hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20", "hr@5", "ndcg@5")


def dataset_name(data_path: str) -> str:
    """A short dataset name from the file: 'ml-100k', 'ml-1m' (ratings.dat), 'amazon-beauty' (Beauty.txt), ..."""
    path = Path(data_path)
    if path.name == "ratings.dat":
        return "ml-1m"
    stem = path.stem.lower().replace("_", "-")
    return {"beauty": "amazon-beauty", "sports-and-outdoors": "amazon-sports", "toys-and-games": "amazon-toys"}.get(
        stem, stem)


def run_seed(config: str, seed: int, root: Path, ckpt: str | None, overrides: Sequence[str]) -> dict:
    """Fit (unless ``ckpt``) then test one seed; returns its metrics and wall times."""
    from .cli import main as cli_main

    args = ["-c", config, "--seed_everything", str(seed), "--trainer.default_root_dir", str(root / f"seed{seed}"),
            *overrides]
    start = time.perf_counter()
    epochs = None
    if ckpt is None:
        cli = cli_main(["fit", *args, "--checkpoint.monitor", "val/ndcg@10", "--checkpoint.mode", "max"])
        ckpt = cli.trainer.checkpoint_callback.best_model_path
        epochs = cli.trainer.current_epoch
    fit_s = time.perf_counter() - start
    test_start = time.perf_counter()
    cli = cli_main(["test", *args, "--ckpt_path", ckpt])
    metrics = {k.removeprefix("test/"): float(v) for k, v in cli.trainer.callback_metrics.items()
               if k.startswith("test/")}
    return dict(seed=seed, metrics=metrics, checkpoint=ckpt, epochs=epochs, fit_seconds=round(fit_s, 1),
                test_seconds=round(time.perf_counter() - test_start, 1), model=cli.model.hparams.model_name,
                data_path=str(cli.datamodule.hparams.data_path), max_len=cli.datamodule.max_len,
                n_items=cli.datamodule.n_items)



def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` and run the evaluation; returns the result dict that is also written as JSON."""
    argv = list(argv or [])
    parser = evaluation_parser("ssmkit recsys evaluate", __doc__, "a configs/recsys/<model>/<dataset>.yaml",
                               default_seeds=[2020])
    opts, overrides = parser.parse_known_args(argv)
    root = output_folder(parser, opts, default="runs/recsys/evaluate")
    runs = [run_seed(opts.config, seed, root, opts.ckpt, overrides) for seed in opts.seeds]
    model, dataset = runs[-1]["model"], dataset_name(runs[-1]["data_path"])
    names = list(runs[-1]["metrics"])
    result = dict(
        model=model, dataset=dataset, max_len=runs[-1]["max_len"], n_items=runs[-1]["n_items"], config=opts.config,
        seeds=opts.seeds, runs=runs,
        mean={n: statistics.fmean(r["metrics"][n] for r in runs) for n in names},
        std={n: statistics.pstdev([r["metrics"][n] for r in runs]) for n in names},
        paper=PAPER.get((model, dataset), {}),
        device=f"CPU ({cpu_name()}), torch threads {torch.get_num_threads()}",
        command="ssmkit recsys evaluate " + " ".join(argv),
    )
    write_text_atomic(root / "evaluation.json", json.dumps(result, indent=1))
    write_text_atomic(root / "evaluation.md", markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    """The result as a Markdown section: mean ± std over seeds, the paper's number and the difference."""
    runs = "; ".join(f"seed {x['seed']}: fit {x['fit_seconds']} s ({x['epochs']} epochs), test {x['test_seconds']} s"
                     for x in r["runs"])
    lines = [f"### {r['model']} on {r['dataset']} (max_len {r['max_len']}, {r['n_items']} items incl. PAD)", "",
             f"Command: `{r['command']}`  ", f"Seeds: {r['seeds']}; {runs}; device: {r['device']}", "",
             "| metric | ours (mean ± std) | paper | ours − paper |", "|---|---|---|---|"]
    for name in SHOWN:
        if name not in r["mean"]:
            continue
        paper = r["paper"].get(name)
        diff = f"{r['mean'][name] - paper:+.4f}" if paper is not None else "n/a"
        lines.append(f"| {name} | {r['mean'][name]:.4f} ± {r['std'][name]:.4f} | {paper or 'n/a'} | {diff} |")
    return "\n".join(lines) + "\n"
