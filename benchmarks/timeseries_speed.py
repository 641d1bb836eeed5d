"""Speed of one S-Mamba ETTh1-96 training epoch on the CPU, per scan backend, measured in one run (issue #4).

The model, optimizer, data and batch size are those of ``configs/timeseries/s_mamba/ETTh1_96.yaml`` (bundled ETTh1,
8449 training windows, batch 32, drop_last: 264 steps). For each backend the script builds the model from the same
seed and times ``--epochs`` epochs of the plain training loop (data loading, forward, MSE, backward, Adam step; no
Lightning), one by one; a row's epoch time is the median of them (the machine is shared: single epochs vary by
10%). It reports the first epoch's mean training loss and the validation MSE after the last epoch, so that the
backends are seen to train the same model. It then times ``--epochs`` Lightning epochs (``Trainer.fit``, training
only, no validation, no checkpoint or logger) of the cpu backend with the module and data module of the CLI.

Usage:
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/timeseries_speed.py                # cpu, naive, torch
    python benchmarks/timeseries_speed.py --backends cpu,naive --out /tmp/ts_speed                 # elsewhere
    python benchmarks/timeseries_speed.py --backends cpu,naive --bf16      # + bfloat16 mixed-precision rows

Writes ``benchmarks/results/timeseries_speed-cpu.json`` and ``.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numba
import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import device_name  # noqa: E402

from ssmkit.core.io import write_text_atomic  # noqa: E402
from ssmkit.core.registry import create_model  # noqa: E402
from ssmkit.timeseries.data import TimeSeriesDataModule  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "timeseries" / "s_mamba" / "ETTh1_96.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "timeseries_speed-cpu"
OFFICIAL_EPOCH_S = 41.0  # the official S-D-Mamba code on this machine (issue #4), for the ratio column


def load_config() -> dict:
    with open(CONFIG) as f:
        return yaml.safe_load(f)


def make_data(cfg: dict) -> TimeSeriesDataModule:
    data = TimeSeriesDataModule(**cfg["data"])
    data.setup("fit")
    return data


def build(cfg: dict, data: TimeSeriesDataModule, backend: str, fused_adam: bool):
    """The configured S-Mamba and its Adam, from the config's seed (identical initial weights for every backend)."""
    torch.manual_seed(cfg["seed_everything"])
    hp = cfg["data"]
    model = create_model(cfg["model"]["model_name"], seq_len=hp["seq_len"], pred_len=hp["pred_len"],
                         n_vars=data.n_vars, backend=backend, **cfg["model"]["model_kwargs"])
    optimizer = torch.optim.Adam(model.parameters(), lr=float(cfg["model"]["lr"]),
                                 **({"fused": True} if fused_adam else {}))
    return model, optimizer


def train_epochs(cfg: dict, data: TimeSeriesDataModule, backend: str, epochs: int, fused_adam: bool = False,
                 bf16: bool = False) -> dict:
    """``epochs`` epochs of the plain training loop, each timed; returns the median epoch's wall / process seconds,
    every epoch's process seconds, steps per epoch, the first epoch's mean loss and the val MSE after the last.

    ``bf16`` runs the training forward under ``torch.autocast("cpu", torch.bfloat16)`` (mixed precision: bfloat16
    matrix products, float32 weights, optimizer and validation)."""
    model, optimizer = build(cfg, data, backend, fused_adam)
    pred_len = cfg["data"]["pred_len"]
    torch.manual_seed(cfg["seed_everything"])  # the same shuffling and dropout masks for every backend
    loader = data.train_dataloader()
    model.train()
    walls, cpus, first_losses = [], [], None
    for _ in range(epochs):
        losses = []
        wall, cpu = time.perf_counter(), time.process_time()
        for batch in loader:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                pred = model(batch["x"], batch["x_mark"])  # [B, S, N]
            loss = F.mse_loss(pred.float(), batch["y"][:, -pred_len:])
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if first_losses is None:
            first_losses = losses
    model.eval()
    se, count = 0.0, 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            err = model(batch["x"], batch["x_mark"]) - batch["y"][:, -pred_len:]  # [B, S, N]
            se += float(err.double().square().sum())
            count += err.numel()
    return dict(backend=backend + (" + fused Adam" if fused_adam else "") + (" + bf16 autocast" if bf16 else ""),
                wall_s=statistics.median(walls), process_s=statistics.median(cpus), epoch_process_s=cpus,
                steps=len(first_losses), process_ms_per_step=1e3 * statistics.median(cpus) / len(first_losses),
                train_loss=float(torch.stack(first_losses).double().mean()), val_mse=se / count)


def lightning_epochs(cfg: dict, epochs: int, precision: str = "32-true") -> dict:
    """``epochs`` ``Trainer.fit`` epochs (training only) of the cpu backend with the CLI's module and data module, at
    Lightning's ``precision`` (what ``--trainer.precision`` sets); the median epoch as in ``train_epochs``."""
    import lightning as L

    class EpochTimer(L.Callback):
        def __init__(self):
            self.walls, self.cpus = [], []

        def on_train_epoch_start(self, trainer, module):
            self.start = (time.perf_counter(), time.process_time())

        def on_train_epoch_end(self, trainer, module):
            self.walls.append(time.perf_counter() - self.start[0])
            self.cpus.append(time.process_time() - self.start[1])

    from ssmkit.timeseries.module import Forecaster

    L.seed_everything(cfg["seed_everything"], verbose=False)
    data = TimeSeriesDataModule(**cfg["data"])
    model_cfg = {k: v for k, v in cfg["model"].items() if k != "model_kwargs"}
    model_cfg["lr"] = float(model_cfg["lr"])  # YAML 1.1 reads "7e-05" as a string (the CLI's parser converts it)
    module = Forecaster(**model_cfg, model_kwargs={**cfg["model"]["model_kwargs"], "backend": "cpu"},
                        seq_len=cfg["data"]["seq_len"], pred_len=cfg["data"]["pred_len"], n_vars=data.n_vars,
                        features=cfg["data"]["features"])
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, precision=precision, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[timer])
    trainer.fit(module, datamodule=data)
    steps = trainer.global_step // epochs
    cpu = statistics.median(timer.cpus)
    label = "cpu (Lightning Trainer.fit)" + ("" if precision == "32-true" else f", precision {precision}")
    return dict(backend=label, wall_s=statistics.median(timer.walls), process_s=cpu,
                epoch_process_s=timer.cpus, steps=steps, process_ms_per_step=1e3 * cpu / max(steps, 1),
                train_loss=None, val_mse=None)


def matmul_floor(cfg: dict, data: TimeSeriesDataModule, steps: int) -> dict:
    """The matrix-product floor of one epoch: FLOPs of one training step (``FlopCounterMode``) times the steps, over
    the sgemm rate of this thread at the model's main shape (tokens of a batch x d_model -> 2 d_model)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = build(cfg, data, "cpu", fused_adam=False)
    batch = next(iter(data.train_dataloader()))
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(batch["x"], batch["x_mark"]), batch["y"][:, -cfg["data"]["pred_len"]:]).backward()
    flops = counter.get_total_flops()
    d_model = cfg["model"]["model_kwargs"]["d_model"]
    tokens = batch["x"].shape[0] * (batch["x"].shape[2] + batch["x_mark"].shape[2])  # variate + time-feature tokens
    a, b = torch.randn(tokens, d_model), torch.randn(d_model, 2 * d_model)
    for _ in range(5):
        a @ b
    reps, start = 200, time.process_time()
    for _ in range(reps):
        a @ b
    rate = 2 * tokens * d_model * 2 * d_model * reps / (time.process_time() - start)
    return dict(matmul_gflop_per_step=flops / 1e9, matmul_gflop_per_epoch=flops * steps / 1e9,
                sgemm_shape=[tokens, d_model, 2 * d_model], sgemm_gflops=rate / 1e9, floor_s=flops * steps / rate)


def markdown(result: dict) -> str:
    epochs = result["epochs"]
    head = (f"## S-Mamba ETTh1-96, one training epoch (median of {epochs}) on {result['device']} "
            f"({result['threads']} thread(s), torch {result['torch']}, {result['date']})\n\n"
            f"Command: `{result['command']}`\n\n"
            "| loop | backend | wall (s) | process (s) | each epoch, process (s) | steps | process ms / step "
            "| x naive (process) | x official (41 s) / process | mean train loss, epoch 1 "
            f"| val MSE after {epochs} epoch(s) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    naive = next((r["process_s"] for r in result["rows"] if r["backend"] == "naive"), None)
    lines = []
    for r in result["rows"]:
        loop = "Lightning" if "Lightning" in r["backend"] else "plain"
        ratio = f"{naive / r['process_s']:.2f}" if naive and loop == "plain" else ""
        loss = "" if r["train_loss"] is None else f"{r['train_loss']:.5f}"
        val = "" if r["val_mse"] is None else f"{r['val_mse']:.5f}"
        each = " / ".join(f"{t:.2f}" for t in r["epoch_process_s"])
        lines.append(f"| {loop} | {r['backend']} | {r['wall_s']:.2f} | {r['process_s']:.2f} | {each} | {r['steps']} | "
                     f"{1e3 * r['process_s'] / r['steps']:.1f} | {ratio} | {OFFICIAL_EPOCH_S / r['process_s']:.2f} | "
                     f"{loss} | {val} |")
    note = ("\nThe machine's 2 cores are shared with other jobs, so wall time includes waiting for a core; process "
            "time (time.process_time) is the CPU time of this process and the ratios use it. The official time (41 s "
            "per epoch) is the figure of issue #4.\n")
    floor = result.get("matmul_floor")
    if floor:
        note += (f"\nMatrix-product floor: {floor['matmul_gflop_per_step']:.2f} GFLOP per training step "
                 f"(`FlopCounterMode`, forward + backward), {floor['matmul_gflop_per_epoch']:.0f} GFLOP per epoch; "
                 f"sgemm {floor['sgemm_shape']} runs at {floor['sgemm_gflops']:.1f} GFLOP/s on this thread, so the "
                 f"matrix products alone take {floor['floor_s']:.1f} s per epoch.\n")
    return head + "\n".join(lines) + "\n" + note


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", default="cpu,naive,torch", help="comma-separated scan backends")
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per row (a row reports the median)")
    parser.add_argument("--no-lightning", action="store_true", help="skip the Lightning epoch")
    parser.add_argument("--no-fused-adam", action="store_true", help="skip the cpu + fused Adam row")
    parser.add_argument("--bf16", action="store_true",
                        help="add a cpu + fused Adam + bf16 autocast row (and a Lightning bf16-mixed row)")
    parser.add_argument("--out", default=str(RESULTS), help="output path without suffix (.json and .md are written)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    cfg = load_config()
    data = make_data(cfg)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    warm_model, _ = build(cfg, data, backends[0], fused_adam=False)  # warm-up (numba cache load), not timed
    batch = next(iter(data.train_dataloader()))
    for _ in range(3):
        warm_model(batch["x"], batch["x_mark"]).sum().backward()
    rows = []
    for backend in backends:
        rows.append(train_epochs(cfg, data, backend, args.epochs))
        print(json.dumps(rows[-1]), flush=True)
    if "cpu" in backends and not args.no_fused_adam:
        rows.append(train_epochs(cfg, data, "cpu", args.epochs, fused_adam=True))
        print(json.dumps(rows[-1]), flush=True)
    if "cpu" in backends and args.bf16:
        rows.append(train_epochs(cfg, data, "cpu", args.epochs, fused_adam=True, bf16=True))
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_lightning:
        rows.append(lightning_epochs(cfg, args.epochs))
        print(json.dumps(rows[-1]), flush=True)
        if args.bf16:
            rows.append(lightning_epochs(cfg, args.epochs, precision="bf16-mixed"))
            print(json.dumps(rows[-1]), flush=True)
    floor = matmul_floor(cfg, data, rows[0]["steps"])
    print(json.dumps(floor), flush=True)
    result = dict(device=device_name("cpu"), threads=args.threads, epochs=args.epochs, torch=torch.__version__,
                  matmul_floor=floor,
                  date=time.strftime("%Y-%m-%d"), machine="CPU, shared 2-core machine (other jobs running)",
                  omp_num_threads=os.environ.get("OMP_NUM_THREADS"), numba_num_threads=numba.get_num_threads(),
                  command=("python benchmarks/timeseries_speed.py " + " ".join(argv if argv is not None
                                                                             else sys.argv[1:])).strip(),
                  rows=rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    write_text_atomic(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
