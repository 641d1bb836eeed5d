"""Mamba4Rec vs SASRec efficiency (the Mamba4Rec paper's table: memory, training time, inference time per batch).

Two measurements, each case in a fresh subprocess (``MALLOC_MMAP_THRESHOLD_`` fixed so freed tensors leave RSS):

- ``lengths``: for max_len in 50, 200, 1000, 4000, full-length random histories over an ML-1M-sized vocabulary
  (3,417 rows incl. PAD), the official model configs (Mamba4Rec: hidden 64, 1 layer, d_state 32; SASRec: RecBole
  defaults), CE over all items: median time of one training step (forward + backward + Adam), peak memory growth of
  one training step, median time of one full-ranking inference batch. The batch shrinks with the length (stated in
  the table) and is the same for both models.
- ``epoch``: one real training epoch (every batch, plain loop, Adam, CE over all items) on ML-100k 5-core, max_len 50,
  batch 256, for Mamba4Rec, SASRec and GRU4Rec.

Usage (CPU, one thread)::

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/recsys_efficiency.py [--only lengths|epoch]

Results: ``benchmarks/results/recsys_efficiency-<device>.json`` and ``.md`` (written atomically).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _measure import PeakRSS, device_name  # noqa: E402

N_ITEMS_ML1M = 3417
BATCH = {50: 256, 200: 64, 1000: 16, 4000: 2}
MODELS = {"mamba4rec": dict(hidden_size=64, n_layers=1, d_state=32, d_conv=4, expand=2, dropout=0.2),
          "sasrec": dict(hidden_size=64, n_layers=2, n_heads=2, inner_size=256, hidden_dropout=0.5, attn_dropout=0.5),
          "gru4rec": dict(embedding_size=64, hidden_size=128, n_layers=1, dropout=0.3)}
ML100K = os.environ.get("SSMKIT_RECSYS_DATA", str(HERE.parent.parent / "shared" / "data" / "recsys")) + \
    "/ml-100k/ml-100k.inter"


def build(name: str, n_items: int, max_len: int):
    from ssmkit.recsys.models.gru4rec import GRU4Rec
    from ssmkit.recsys.models.mamba4rec import Mamba4Rec
    from ssmkit.recsys.models.sasrec import SASRec

    return {"mamba4rec": Mamba4Rec, "sasrec": SASRec, "gru4rec": GRU4Rec}[name](n_items, max_len=max_len,
                                                                               **MODELS[name])


def train_step(model, optimizer, batch) -> None:
    loss = torch.nn.functional.cross_entropy(model.full_sort_scores(batch["item_seq"], batch["lengths"]),
                                             batch["target"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def case_lengths(name: str, max_len: int) -> dict:
    """One (model, max_len) case: train-step time, its peak memory, inference time per batch."""
    torch.manual_seed(0)
    batch_size = BATCH[max_len]
    model = build(name, N_ITEMS_ML1M, max_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = {"item_seq": torch.randint(1, N_ITEMS_ML1M, (batch_size, max_len)),
             "lengths": torch.full((batch_size,), max_len), "target": torch.randint(1, N_ITEMS_ML1M, (batch_size,))}
    train_step(model, optimizer, batch)  # allocates Adam's state before the memory measurement
    with PeakRSS() as rss:
        train_step(model, optimizer, batch)
    train_ms, train_cpu_ms = cpu_and_wall_ms(lambda: train_step(model, optimizer, batch))
    model.eval()
    with torch.no_grad():
        infer_ms, infer_cpu_ms = cpu_and_wall_ms(lambda: model.full_sort_scores(batch["item_seq"], batch["lengths"]))
    return dict(model=name, max_len=max_len, batch_size=batch_size, train_ms_per_batch=train_ms,
                train_cpu_ms_per_batch=train_cpu_ms, train_peak_mb=round(rss.delta_mb, 1),
                infer_ms_per_batch=infer_ms, infer_cpu_ms_per_batch=infer_cpu_ms)


def cpu_and_wall_ms(fn, repeats: int = 3) -> tuple[float, float]:
    """Median wall time and median process CPU time (ms) of ``fn`` over ``repeats`` calls after one warm-up.

    With one thread the CPU time is what the call costs on an idle core; the wall time also counts the time the
    process waited for a core on a shared machine.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return round(statistics.median(wall) * 1e3, 1), round(statistics.median(cpu) * 1e3, 1)


def case_epoch(name: str, max_batches: int = 0) -> dict:
    """One training epoch on ML-100k 5-core (max_len 50, batch 256); with ``max_batches`` > 0 only the first
    ``max_batches`` batches are timed and the epoch time is that rate times the number of batches."""
    from ssmkit.recsys.data import SequentialDataModule

    torch.manual_seed(0)
    dm = SequentialDataModule(ML100K, max_len=50, batch_size=256)
    model = build(name, dm.n_items, 50).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = dm.train_dataloader()
    done, start, cpu_start = 0, time.perf_counter(), time.process_time()
    for batch in loader:
        train_step(model, optimizer, batch)
        done += 1
        if done == max_batches:
            break
    scale = len(loader) / done  # 1 for a whole epoch
    return dict(model=name, epoch_s=round((time.perf_counter() - start) * scale, 1),
                epoch_cpu_s=round((time.process_time() - cpu_start) * scale, 1), batches=len(loader),
                timed_batches=done, samples=len(dm.datasets["train"]), n_items=dm.n_items)


def run_child(args: list[str], timeout_s: float) -> dict:
    """Run one case in a fresh process; memory cases fix ``MALLOC_MMAP_THRESHOLD_`` (exact RSS peaks), epoch cases
    keep the default allocator (the fixed threshold costs many page faults over a whole epoch)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"} if args[0] == "lengths" else dict(os.environ)
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return dict(error=f"no result within {timeout_s} s wall time")
    if proc.returncode != 0:
        return dict(error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(result: dict) -> str:
    lines = [f"# Mamba4Rec vs SASRec efficiency ({result['device']}, torch threads {result['threads']})", "",
             f"Command: `{result['command']}`; total wall time {result['wall_s']} s.", ""]
    if result.get("lengths"):
        lines += ["## Per batch, full-length histories, 3,417 items (ML-1M size), CE over all items", "",
                  "Times: median process CPU time (wall time in brackets; the machine is shared, so wall time includes "
                  "waiting for a core).", "",
                  "| max_len | batch | model | train ms/batch | train peak MB | infer ms/batch | memory vs SASRec | "
                  "train time vs SASRec |", "|---|---|---|---|---|---|---|---|"]
        rows = {(r.get("model"), r.get("max_len")): r for r in result["lengths"]}
        for r in result["lengths"]:
            if "error" in r:
                lines.append(f"| {r['max_len']} | | {r['model']} | error: {r['error']} | | | | |")
                continue
            base = rows.get(("sasrec", r["max_len"]), {})
            mem = f"{r['train_peak_mb'] / base['train_peak_mb']:.2f}" if base.get("train_peak_mb") else "n/a"
            speed = f"{r['train_cpu_ms_per_batch'] / base['train_cpu_ms_per_batch']:.2f}" \
                if base.get("train_cpu_ms_per_batch") else "n/a"
            lines.append(f"| {r['max_len']} | {r['batch_size']} | {r['model']} | {r['train_cpu_ms_per_batch']} "
                         f"({r['train_ms_per_batch']}) | {r['train_peak_mb']} | {r['infer_cpu_ms_per_batch']} "
                         f"({r['infer_ms_per_batch']}) | {mem} | {speed} |")
        lines.append("")
    if result.get("epoch"):
        lines += ["## One training epoch, ML-100k 5-core, max_len 50, batch 256, CE over all items", "",
                  "| model | epoch CPU s | epoch wall s | batches (timed) | samples |", "|---|---|---|---|---|"]
        for r in result["epoch"]:
            lines.append(f"| {r['model']} | {r.get('epoch_cpu_s', r.get('error'))} | {r.get('epoch_s')} | "
                         f"{r.get('batches')} ({r.get('timed_batches')}) | {r.get('samples')} |")
        lines += ["", "When fewer batches are timed than the epoch has, the epoch time is the measured per-batch rate "
                  "times the number of batches."]
        lines += ["", "Reference given in the task (not measured here): RecBole 1.2 SASRec about 264 s per epoch and "
                  "GRU4Rec about 159 s in this setting on this kind of machine."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["lengths", "epoch"], default=None)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(BATCH))
    parser.add_argument("--epoch-batches", type=int, default=0,
                        help="time only this many batches of the epoch and scale to the whole epoch (0: all)")
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        kind, name, *rest = opts.child
        print(json.dumps(case_lengths(name, int(rest[0])) if kind == "lengths" else case_epoch(name, int(rest[0]))))
        return
    from ssmkit.core.io import write_text_atomic

    start = time.perf_counter()
    result = dict(device=device_name("cpu"), threads=torch.get_num_threads(),
                  command="python benchmarks/recsys_efficiency.py " + " ".join(sys.argv[1:]), lengths=[], epoch=[])
    if opts.only in (None, "lengths"):
        for max_len in opts.lengths:
            for name in ("mamba4rec", "sasrec"):
                row = run_child(["lengths", name, str(max_len)], timeout_s=600)
                result["lengths"].append({"model": name, "max_len": max_len, **row})
                print(result["lengths"][-1], flush=True)
    if opts.only in (None, "epoch"):
        for name in ("mamba4rec", "sasrec", "gru4rec"):
            result["epoch"].append({"model": name, **run_child(["epoch", name, str(opts.epoch_batches)], 900)})
            print(result["epoch"][-1], flush=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    out = HERE / "results" / f"recsys_efficiency-{'cpu' if result['device'].startswith('cpu') else 'cuda'}"
    suffix = f"-{opts.only}" if opts.only else ""
    write_text_atomic(f"{out}{suffix}.json", json.dumps(result, indent=1))
    write_text_atomic(f"{out}{suffix}.md", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
