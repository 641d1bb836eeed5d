"""``ssmkit recsys evaluate -c CONFIG [--ckpt PATH] [--seeds 1 2 3] [--out DIR] [overrides]`` for CTR configs.

For each seed: train with the config (unless ``--ckpt`` gives a trained checkpoint), keep the checkpoint with the best
validation AUC (as thuml/DARE), test it on every test sample, record AUC / GAUC / logloss and wall times. Writes
``evaluation.json`` and ``evaluation.md`` (mean and std over seeds, one row per seed) atomically into ``--out``
(default: the config's ``trainer.default_root_dir``). The DARE paper's Taobao / Tmall table values could not be
retrieved (reference/recsys_graphs.md section 2.4), so no paper column is printed.
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
from ssmkit.core.lightning_cli import SsmkitCLI, run_cli

from .ctr_data import CTRDataModule
from .ctr_module import CTRPredictor

METRICS = ("auc", "gauc", "logloss")


def run_ctr_cli(args: Sequence[str]) -> SsmkitCLI:
    """The shared LightningCLI on a CTR config (``model.class_path`` / ``data.class_path`` as in configs/recsys)."""
    return run_cli(CTRPredictor, CTRDataModule, list(args), subclass_mode_model=True, subclass_mode_data=True)


def run_seed(config: str, seed: int, root: Path, ckpt: str | None, overrides: Sequence[str]) -> dict:
    """Fit (unless ``ckpt``) then test one seed; returns its metrics, wall times and the CLI object (``cli``)."""
    args = ["-c", config, "--seed_everything", str(seed), "--trainer.default_root_dir", str(root / f"seed{seed}"),
            *overrides]
    start = time.perf_counter()
    if ckpt is None:
        cli = run_ctr_cli(["fit", *args, "--checkpoint.monitor", "val/auc", "--checkpoint.mode", "max"])
        ckpt = cli.trainer.checkpoint_callback.best_model_path
        epochs = cli.trainer.current_epoch
    else:
        epochs = None
    fit_s = time.perf_counter() - start
    test_start = time.perf_counter()
    cli = run_ctr_cli(["test", *args, "--ckpt_path", ckpt])
    metrics = {k.removeprefix("test/"): float(v) for k, v in cli.trainer.callback_metrics.items()
               if k.startswith("test/")}
    return dict(seed=seed, **{m: metrics[m] for m in METRICS}, checkpoint=ckpt, epochs=epochs,
                fit_seconds=round(fit_s, 1), test_seconds=round(time.perf_counter() - test_start, 1), cli=cli)



def summarize(runs: list[dict]) -> dict:
    """Mean and population std of each metric over the runs."""
    out = {}
    for m in METRICS:
        values = [r[m] for r in runs]
        out[f"{m}_mean"], out[f"{m}_std"] = statistics.fmean(values), statistics.pstdev(values)
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` and run the evaluation; returns the result dict that is also written as JSON."""
    parser = evaluation_parser("ssmkit recsys evaluate", __doc__, "a configs/recsys/{dare,twin}/... YAML",
                               default_seeds=[1])
    opts, overrides = parser.parse_known_args(argv)
    root = output_folder(parser, opts, default="runs/recsys/evaluate")
    runs = [run_seed(opts.config, seed, root, opts.ckpt, overrides) for seed in opts.seeds]
    model, data = runs[-1]["cli"].model, runs[-1]["cli"].datamodule
    result = dict(
        model=model.hparams.model_name, dataset=data.hparams.dataset, config=opts.config, seeds=opts.seeds,
        samples={split: len(s) for split, s in data.splits.items()},
        runs=[{k: v for k, v in r.items() if k != "cli"} for r in runs], **summarize(runs),
        device=f"{cpu_name()}, torch threads {torch.get_num_threads()}",
        command="ssmkit recsys evaluate " + " ".join(argv or []),
    )
    write_text_atomic(root / "evaluation.json", json.dumps(result, indent=1))
    write_text_atomic(root / "evaluation.md", markdown(result))
    print(markdown(result))
    result["clis"] = [r["cli"] for r in runs]
    return result


def markdown(r: dict) -> str:
    """The evaluation as a Markdown section: summary row and one row per seed."""
    lines = [
        f"### {r['model']} on {r['dataset']} ({r['config']})", "",
        f"Command: `{r['command']}`  ", f"Samples: {r['samples']}; device: {r['device']}", "",
        "| seed | AUC | GAUC | logloss | epochs | fit s | test s |", "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {x['seed']} | {x['auc']:.4f} | {x['gauc']:.4f} | {x['logloss']:.4f} | {x['epochs']} | "
              f"{x['fit_seconds']} | {x['test_seconds']} |" for x in r["runs"]]
    lines.append(f"| mean ± std | {r['auc_mean']:.4f} ± {r['auc_std']:.4f} | {r['gauc_mean']:.4f} ± "
                 f"{r['gauc_std']:.4f} | {r['logloss_mean']:.4f} ± {r['logloss_std']:.4f} | | | |")
    return "\n".join(lines) + "\n"
