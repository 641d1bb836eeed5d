"""Backbone benchmark on the CPU: a 24-layer, width-192 Mamba stack against a timm ViT block stack of the same size.

Models (batch 1, float32, input [1, L, 192]):
    mamba: ``ssmkit.core.block.Backbone`` of 24 ``ssmkit.core.mixers.Mamba`` blocks (d_state 16, expand 2; the
           Vim-Ti layout), scan backend ``--backend`` (default ``auto``: the fused CPU kernel).
    vit:   24 ``timm.models.vision_transformer.Block`` (3 heads, MLP ratio 4; the DeiT-Ti layout) and a LayerNorm.
At L = 197 (a 224 px image in 16 px patches + class token), 1024, 4096 and 16384, forward (no grad) and
forward+backward, each case in its own subprocess.

Time: median of ``--repeats`` calls after one warm-up call (which also compiles the numba kernel), as wall-clock time
and as the process's CPU time (user + system, all threads): on a shared machine the wall-clock time grows with the
load while the CPU time does not, so the two together show whether a number was taken on a quiet machine.
Peak memory: the peak resident set size (RSS, sampled every 0.5 ms in a thread) during one call, above the RSS just
before that call (model, input and warm-up already in place, gradients freed), i.e. the activations, gradients and
workspace of one call. The child runs with ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB so that freed tensors go
back to the OS and RSS follows live memory. A case that runs past ``--case-timeout-s`` or whose RSS passes
``--max-rss-gib`` is stopped and reported as skipped, and the longer lengths of that model and mode with it.

timm's attention calls ``F.scaled_dot_product_attention``, which on the CPU runs a fused (flash-style) kernel that
never stores the [L, L] score matrix: the ViT's time grows as L^2 but its memory stays close to linear. Set
``TIMM_FUSED_ATTN=0`` to benchmark the explicit softmax(QK^T)V path, whose memory grows as L^2.

Usage:
    python benchmarks/backbone.py                      # the full grid (see the results file for its duration)
    python benchmarks/backbone.py --quick              # L = 197 and 1024, 2 repeats: a check that it works
    python benchmarks/backbone.py --threads 4          # more threads (torch, OpenMP and numba)
Writes benchmarks/results/backbone-cpu.json and .md (``--quick``: backbone-cpu-quick.*).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ssmkit.core.io import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("mamba", "vit")
MODES = ("fwd", "fwd+bwd")
PAGE = os.sysconf("SC_PAGE_SIZE")


def build(model: str, dim: int, depth: int, backend: str):
    """The benchmarked stack as an ``nn.Module`` mapping [1, L, dim] to [1, L, dim]."""
    import torch
    from torch import nn

    if model == "mamba":
        from ssmkit.core.block import Backbone
        from ssmkit.core.mixers import Mamba

        return Backbone(dim, depth, lambda i: Mamba(dim, d_state=16, expand=2, layer_idx=i, backend=backend))
    from timm.models.vision_transformer import Block

    torch.manual_seed(0)
    return nn.Sequential(*[Block(dim, num_heads=3, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)],
                         nn.LayerNorm(dim))


def child(model: str, length: int, mode: str, args: argparse.Namespace) -> dict:
    """Run one case in this process and return its measurements."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _measure import PeakRSS

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = build(model, args.dim, args.depth, args.backend)
    x = torch.randn(1, length, args.dim)  # [1, L, D]

    def call() -> None:
        if mode == "fwd":
            with torch.no_grad():
                net(x)
        else:
            net(x).square().mean().backward()

    # Gradients are freed before each call (outside the measurement), so a call's peak counts its new gradients.
    start = time.perf_counter()
    call()
    warmup_s = time.perf_counter() - start
    net.zero_grad(set_to_none=True)
    with PeakRSS() as rss:
        call()
    times, cpu_times = [], []
    for _ in range(args.repeats):
        net.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), time.process_time()
        call()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return dict(ms=round(statistics.median(times) * 1e3, 2), cpu_ms=round(statistics.median(cpu_times) * 1e3, 2),
                repeats=len(times), warmup_s=round(warmup_s, 2),
                peak_mib=round(rss.delta_mb, 1), params_m=round(sum(p.numel() for p in net.parameters()) / 1e6, 3))


def _rss_gib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**30
    except OSError:
        return 0.0


def run_case(model: str, length: int, mode: str, args: argparse.Namespace) -> dict:
    """Run one case in a subprocess, stopping it past the time or memory budget."""
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "NUMBA_NUM_THREADS": threads,
           "MALLOC_MMAP_THRESHOLD_": "131072"}
    command = [sys.executable, __file__, "--child", model, str(length), mode, "--threads", threads,
               "--repeats", str(args.repeats), "--dim", str(args.dim), "--depth", str(args.depth),
               "--backend", args.backend]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, peak_gib, reason = time.perf_counter(), 0.0, None
    while proc.poll() is None:
        peak_gib = max(peak_gib, _rss_gib(proc.pid))
        if peak_gib > args.max_rss_gib:
            reason = f"RSS passed the {args.max_rss_gib:g} GiB budget"
        elif time.perf_counter() - start > args.case_timeout_s:
            reason = f"ran past the {args.case_timeout_s:g} s budget"
        if reason:
            proc.kill()
            proc.wait()
            return dict(skipped=reason)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"case {model} L={length} {mode} failed (exit {proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def growth(rows: list[dict], model: str, mode: str, key: str) -> dict[int, float]:
    """Exponent p of ``value ~ L**p`` between each measured length and the previous one (1: linear, 2: quadratic)."""
    points = [(r["L"], r[key]) for r in rows if r["model"] == model and r["mode"] == mode and r.get(key)]
    return {l2: round(math.log(v2 / v1) / math.log(l2 / l1), 2)
            for (l1, v1), (l2, v2) in zip(points, points[1:]) if v1 > 0 and v2 > 0}


def markdown(result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"## Backbone on {result['device']}: {result['depth']} layers, width {result['dim']}, batch 1, float32", "",
        f"{result['threads']} thread(s), torch {result['torch']}, timm {result['timm']}, Mamba scan backend "
        f"`{result['backend']}`, timm fused attention {result['timm_fused_attn']}, {result['date']}. "
        f"Command: `{result['command']}` (took {result['total_s']} s).", "",
        "Time: median of the repeats after a warm-up call, as wall-clock and as process CPU time. Peak memory: peak "
        "RSS growth during one call (a subprocess per case; see benchmarks/backbone.py). p: growth exponent of the "
        "CPU time or the memory against the previous length (~ L^p: 1 linear, 2 quadratic).", "",
        "| model | mode | L | params (M) | time (ms) | CPU time (ms) | p (CPU) | peak mem (MiB) | p (mem) | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for mode in MODES:
            p_time, p_mem = growth(rows, model, mode, "cpu_ms"), growth(rows, model, mode, "peak_mib")
            for r in (r for r in rows if r["model"] == model and r["mode"] == mode):
                cells = [model, mode, r["L"], r.get("params_m", ""), r.get("ms", ""), r.get("cpu_ms", ""),
                         p_time.get(r["L"], ""), r.get("peak_mib", ""), p_mem.get(r["L"], ""), r.get("skipped", "")]
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[197, 1024, 4096, 16384])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--depth", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", default="auto", help="scan backend of the Mamba mixers")
    p.add_argument("--case-timeout-s", type=float, default=600.0, help="time budget of one case (all its calls)")
    p.add_argument("--max-rss-gib", type=float, default=16.0, help="memory budget of one case (its process RSS)")
    p.add_argument("--quick", action="store_true", help="L = 197 and 1024, 2 repeats")
    p.add_argument("--out", default=None, help="results file stem (default benchmarks/results/backbone-cpu[-quick])")
    p.add_argument("--child", nargs=3, metavar=("MODEL", "L", "MODE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("dim", "depth", "threads", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: expected a positive integer, found {getattr(args, name)}")
    if args.child:
        model, length, mode = args.child
        print(json.dumps(child(model, int(length), mode, args)), flush=True)
        return
    if args.quick:
        args.lengths, args.repeats = [197, 1024], 2

    import timm
    import torch
    from timm.layers import use_fused_attn

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _measure import device_name

    print(f"# backbone benchmark: {args.depth} x {args.dim}, {args.threads} thread(s)", flush=True)
    rows, stopped, start = [], set(), time.perf_counter()
    for model in args.models:
        for mode in args.modes:
            for length in sorted(args.lengths):
                row = dict(model=model, mode=mode, L=length)
                if (model, mode) in stopped:
                    row["skipped"] = "a shorter length already passed the budget"
                else:
                    row.update(run_case(model, length, mode, args))
                    if "skipped" in row:
                        stopped.add((model, mode))
                rows.append(row)
                print(f"{model:6s} {mode:8s} L={length:6d} " + (f"{row['ms']:10.1f} ms {row['cpu_ms']:10.1f} CPU ms "
                                                                 f"{row['peak_mib']:9.1f} MiB"
                      if "ms" in row else f"skipped: {row['skipped']}"), flush=True)
    result = dict(device=device_name("cpu"), threads=args.threads, dim=args.dim, depth=args.depth,
                  backend=args.backend, torch=torch.__version__, timm=timm.__version__, date=time.strftime("%Y-%m-%d"),
                  timm_fused_attn=bool(use_fused_attn()),
                  command="python benchmarks/backbone.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  total_s=round(time.perf_counter() - start, 1),
                  memory_method="peak RSS growth during one call, in a subprocess per case", rows=rows)
    stem = Path(args.out) if args.out else RESULTS / ("backbone-cpu-quick" if args.quick else "backbone-cpu")
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=1))
    md = markdown(result)
    write_text_atomic(stem.with_suffix(".md"), md)
    print()
    print(md)


if __name__ == "__main__":
    main()
