"""Mamba4Rec vs SASRec efficiency on a GPU (the Mamba4Rec paper's table: memory, training and inference time).

Same models, vocabulary and full-length random histories as ``recsys_efficiency.py`` (ML-1M-sized vocabulary, the
official configs, CE over all items), on CUDA, one case after the other in this process:

- training step (forward + backward + Adam): median of CUDA-event times over ``--repeats`` steps after warm-up, and
  its peak allocator memory above what the model, its optimizer state and the batch already held;
- full-ranking inference batch: median time.

The batch is RecBole's training default (2048) at max_len 50 and 200, as in the paper's table, and shrinks above
(same for both models). Usage on a GPU machine::

    python benchmarks/recsys_efficiency_gpu.py --out benchmarks/results/recsys_efficiency-gpu-<device>

Writes ``<out>.json`` and ``<out>.md`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _measure import device_name  # noqa: E402
from recsys_efficiency import N_ITEMS_ML1M, build, train_step  # noqa: E402

BATCH = {50: 2048, 200: 2048, 1000: 512, 4000: 128}


def cuda_ms(fn, repeats: int) -> float:
    """Median CUDA-event time (ms) of ``fn`` over ``repeats`` calls, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 3)


def case(name: str, max_len: int, repeats: int) -> dict:
    """One (model, max_len) case on CUDA: train-step time and peak memory, inference time per batch."""
    torch.manual_seed(0)
    batch_size = BATCH[max_len]
    model = build(name, N_ITEMS_ML1M, max_len).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = {"item_seq": torch.randint(1, N_ITEMS_ML1M, (batch_size, max_len), device="cuda"),
             "lengths": torch.full((batch_size,), max_len, device="cuda"),
             "target": torch.randint(1, N_ITEMS_ML1M, (batch_size,), device="cuda")}
    train_step(model, optimizer, batch)  # Adam's state exists before the memory measurement
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, optimizer, batch)
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - held) / 2**20
    train_ms = cuda_ms(lambda: train_step(model, optimizer, batch), repeats)
    model.eval()
    with torch.no_grad():
        infer_ms = cuda_ms(lambda: model.full_sort_scores(batch["item_seq"], batch["lengths"]), repeats)
    row = dict(model=name, max_len=max_len, batch_size=batch_size, train_ms_per_batch=train_ms,
               train_peak_mb=round(peak_mb, 1), infer_ms_per_batch=infer_ms)
    return row


def markdown(result: dict) -> str:
    lines = [f"# Mamba4Rec vs SASRec efficiency on {result['device']} ({result['date']}, torch {result['torch']})",
             "", f"Command: `{result['command']}`", "",
             f"selective_scan Triton settings: {json.dumps(result.get('triton_settings', {}))} (others: defaults)", "",
             "| max_len | batch | model | train ms / batch | train peak MB | infer ms / batch |",
             "|---|---|---|---|---|---|"]
    rows = result["rows"]
    for r in rows:
        lines.append(f"| {r['max_len']} | {r['batch_size']} | {r['model']} | {r['train_ms_per_batch']} | "
                     f"{r['train_peak_mb']} | {r['infer_ms_per_batch']} |")
    lines += ["", "| max_len | model | memory / SASRec | train time / SASRec |", "|---|---|---|---|"]
    for max_len in BATCH:
        by_model = {r["model"]: r for r in rows if r["max_len"] == max_len}
        s = by_model.get("sasrec")
        for name, m in by_model.items():
            if s and name != "sasrec":
                lines.append(f"| {max_len} | {name} | {m['train_peak_mb'] / s['train_peak_mb']:.2f} | "
                             f"{m['train_ms_per_batch'] / s['train_ms_per_batch']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from ssmkit.core.io import write_text_atomic

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=None, help="output stem (<out>.json / <out>.md)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--bwd-max-tiles", type=int, default=0,
                        help="also run Mamba4Rec with the selective-scan backward capped at this many tiles per group")
    parser.add_argument("--max-lens", type=int, nargs="+", default=list(BATCH), choices=list(BATCH),
                        help="max_len values, in this order")
    parser.add_argument("--triton-settings", type=json.loads, default={},
                        help='selective_scan/triton.py settings (JSON) for the whole run, e.g. {"_ROWS_LANES": 2}')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("recsys_efficiency_gpu.py needs a CUDA GPU")
    dev = device_name("cuda")
    out = args.out or HERE / "results" / f"recsys_efficiency-gpu-{dev}"
    result = dict(device=dev, date=time.strftime("%Y-%m-%d"), torch=torch.__version__,
                  command="python benchmarks/recsys_efficiency_gpu.py " + " ".join(argv or sys.argv[1:]), rows=[])
    from ssmkit.kernels.selective_scan import triton as selective_triton

    for name, value in args.triton_settings.items():
        if not hasattr(selective_triton, name):
            raise SystemExit(f"--triton-settings: selective_scan.triton has no setting {name!r}")
        setattr(selective_triton, name, value)
    result["triton_settings"] = args.triton_settings
    for max_len in args.max_lens:
        for name in ("mamba4rec", "sasrec") + (("mamba4rec-bwd-tiles",) if args.bwd_max_tiles else ()):
            try:
                if name == "mamba4rec-bwd-tiles":
                    default_cap, selective_triton._BWD_MAX_TILES = selective_triton._BWD_MAX_TILES, args.bwd_max_tiles
                    try:
                        result["rows"].append(dict(case("mamba4rec", max_len, args.repeats), model=name,
                                                   bwd_max_tiles=args.bwd_max_tiles))
                    finally:
                        selective_triton._BWD_MAX_TILES = default_cap
                else:
                    result["rows"].append(case(name, max_len, args.repeats))
            except torch.cuda.OutOfMemoryError as err:
                result["rows"].append(dict(model=name, max_len=max_len, batch_size=BATCH[max_len],
                                           error=f"out of memory: {str(err)[:200]}"))
                torch.cuda.empty_cache()
            torch.cuda.empty_cache()  # the case's tensors are gone with its frame
            print(result["rows"][-1], flush=True)
            write_text_atomic(Path(f"{out}.json"), json.dumps(result, indent=1) + "\n")
    write_text_atomic(Path(f"{out}.md"), markdown(dict(result, rows=[r for r in result["rows"] if "error" not in r])))
    print(markdown(dict(result, rows=[r for r in result["rows"] if "error" not in r])))


if __name__ == "__main__":
    main()
