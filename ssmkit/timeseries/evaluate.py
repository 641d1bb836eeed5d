"""``ssmkit timeseries evaluate -c CONFIG [--ckpt PATH] [--seeds 2023 2024 2025]``: our numbers beside the paper's.

For each seed: train with the config (unless ``--ckpt`` gives a trained checkpoint), test the best checkpoint on
all test windows, record MSE / MAE and the wall time. Writes ``evaluation.json`` and ``evaluation.md`` (mean and
std over seeds, the paper's figure and the difference) and ``forecasts.png`` (a few test windows against the truth)
into ``--out`` (default: the config's ``trainer.default_root_dir``).
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

# S-Mamba, lookback 96 (arXiv 2403.11144v3, Tables of ETT / other datasets): (MSE, MAE) per horizon.
PAPER = {
    ("s_mamba", "ETTh1"): {96: (0.386, 0.405), 192: (0.443, 0.437), 336: (0.489, 0.468), 720: (0.502, 0.489)},
    ("s_mamba", "ETTh2"): {96: (0.296, 0.348), 192: (0.376, 0.396), 336: (0.424, 0.431), 720: (0.426, 0.444)},
    ("s_mamba", "ETTm1"): {96: (0.333, 0.368), 192: (0.376, 0.390), 336: (0.408, 0.413), 720: (0.475, 0.448)},
    ("s_mamba", "ETTm2"): {96: (0.179, 0.263), 192: (0.250, 0.309), 336: (0.312, 0.349), 720: (0.411, 0.406)},
    ("s_mamba", "weather"): {96: (0.165, 0.210), 192: (0.214, 0.252), 336: (0.274, 0.297), 720: (0.350, 0.345)},
    ("s_mamba", "exchange_rate"): {96: (0.086, 0.207), 192: (0.182, 0.304), 336: (0.332, 0.418),
                                   720: (0.867, 0.703)},
}


def dataset_name(data_path: str | None) -> str:
    """'ETTh1' for the bundled default, else the file name without .csv / .csv.gz."""
    if not data_path:
        return "ETTh1"
    return Path(data_path).name.removesuffix(".gz").removesuffix(".csv")


def run_seed(config: str, seed: int, root: Path, ckpt: str | None, overrides: Sequence[str]) -> dict:
    """Fit (unless ``ckpt``) then test one seed; returns its metrics, wall times and the CLI object."""
    from .cli import main as cli_main

    args = ["-c", config, "--seed_everything", str(seed), "--trainer.default_root_dir", str(root / f"seed{seed}"),
            *overrides]
    start = time.perf_counter()
    if ckpt is None:
        cli = cli_main(["fit", *args, "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "min"])
        ckpt = cli.trainer.checkpoint_callback.best_model_path
        fit_s = time.perf_counter() - start
    else:
        fit_s = 0.0
    test_start = time.perf_counter()
    cli = cli_main(["test", *args, "--ckpt_path", ckpt])
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    return dict(seed=seed, mse=metrics["test/mse"], mae=metrics["test/mae"], checkpoint=ckpt,
                fit_seconds=round(fit_s, 1), test_seconds=round(time.perf_counter() - test_start, 1), cli=cli)


def plot_forecasts(cli, path: Path, n_windows: int = 3) -> None:
    """Forecast vs truth of the last variate for a few test windows, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dataset = cli.datamodule.datasets["test"]
    model = cli.model.eval()
    picks = [int(i * (len(dataset) - 1) / max(1, n_windows - 1)) for i in range(n_windows)]
    fig, axes = plt.subplots(1, n_windows, figsize=(5 * n_windows, 3), squeeze=False)
    for ax, i in zip(axes[0], picks):
        item = dataset[i]
        with torch.no_grad():
            pred = model(item["x"][None], item["x_mark"][None])[0, :, -1]  # [S]
        seq_len, pred_len = item["x"].shape[0], pred.shape[0]
        ax.plot(range(seq_len), item["x"][:, -1], color="0.5", label="lookback")
        ax.plot(range(seq_len, seq_len + pred_len), item["y"][-pred_len:, -1], color="k", label="truth")
        ax.plot(range(seq_len, seq_len + pred_len), pred, color="tab:red", label="forecast")
        ax.set_title(f"test window {i} ({cli.datamodule.columns[-1]}, scaled)")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)



def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv`` and run the evaluation; returns the result dict that is also written as JSON."""
    parser = evaluation_parser("ssmkit timeseries evaluate", __doc__, "a configs/timeseries/... YAML",
                               default_seeds=[2023])
    opts, overrides = parser.parse_known_args(argv)
    root = output_folder(parser, opts, default="runs/timeseries/evaluate")
    runs = [run_seed(opts.config, seed, root, opts.ckpt, overrides) for seed in opts.seeds]
    plot_forecasts(runs[-1]["cli"], root / "forecasts.png")
    model_name = runs[-1]["cli"].model.hparams.model_name
    data = runs[-1]["cli"].datamodule
    dataset, horizon = dataset_name(data.hparams.data_path), data.hparams.pred_len
    paper = PAPER.get((model_name, dataset), {}).get(horizon)
    mse = [r["mse"] for r in runs]
    mae = [r["mae"] for r in runs]
    result = dict(
        model=model_name, dataset=dataset, horizon=horizon, seq_len=data.hparams.seq_len, config=opts.config,
        seeds=opts.seeds, runs=[{k: v for k, v in r.items() if k != "cli"} for r in runs],
        mse_mean=statistics.fmean(mse), mse_std=statistics.pstdev(mse), mae_mean=statistics.fmean(mae),
        mae_std=statistics.pstdev(mae), paper_mse=paper[0] if paper else None, paper_mae=paper[1] if paper else None,
        device=f"{cpu_name()}, torch threads {torch.get_num_threads()}",
        command="ssmkit timeseries evaluate " + " ".join(argv or []),
    )
    write_text_atomic(root / "evaluation.json", json.dumps(result, indent=1))
    write_text_atomic(root / "evaluation.md", markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    def diff(ours, paper):
        return f"{ours - paper:+.3f}" if paper is not None else "n/a"

    fit = ", ".join(f"seed {x['seed']}: fit {x['fit_seconds']} s, test {x['test_seconds']} s" for x in r["runs"])
    lines = [
        f"### {r['model']} on {r['dataset']}, lookback {r['seq_len']}, horizon {r['horizon']}", "",
        f"Command: `{r['command']}`  ", f"Seeds: {r['seeds']}; {fit}; device: {r['device']}", "",
        "| metric | ours (mean ± std) | paper | ours − paper |", "|---|---|---|---|",
        f"| MSE | {r['mse_mean']:.4f} ± {r['mse_std']:.4f} | {r['paper_mse'] or 'n/a'} | "
        f"{diff(r['mse_mean'], r['paper_mse'])} |",
        f"| MAE | {r['mae_mean']:.4f} ± {r['mae_std']:.4f} | {r['paper_mae'] or 'n/a'} | "
        f"{diff(r['mae_mean'], r['paper_mae'])} |",
    ]
    return "\n".join(lines) + "\n"
