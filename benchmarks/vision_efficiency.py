"""Vim-Ti against DeiT-Ti for backbone feature extraction at high resolution (the Vim paper's Figure 1).

For each image size (224, 512, 738, 1024, 1248 by default) and each model / backend, one FRESH process builds the
model (``dynamic_img_size=True``, fp32, ``torch.inference_mode``), runs ``forward_features`` once at 224 (loads /
compiles the kernels), then at the target size: the first call measures the peak memory and (on the CPU) the time,
further calls (up to ``--repeats``, within ``--budget`` seconds) add timings; images/s = batch / median time. CPU
times are the process's CPU seconds (``time.process_time``, one thread): the shared machine's other processes do not
inflate them as they inflate wall time.

Peak memory is what one forward adds on top of the model and the input: on the CPU the process's exact high-water mark
(``/proc/self/clear_refs`` + ``VmHWM``, malloc returning large blocks to the OS), on the GPU
``torch.cuda.max_memory_allocated`` above the allocation before the call (``torch.cuda.synchronize`` around every
timed call; TF32 and bf16 off).

Rows: Vim-Ti per scan backend (CPU: ``cpu`` = fused numba kernel, ``torch``; GPU: ``triton``), DeiT-Ti with PyTorch's
fused attention (``sdpa``) and with the explicit ``softmax(q k^T) v`` (``explicit``, the attention of the timm version
the paper compared with, which materializes the [heads, N, N] matrix). A point predicted to take longer than
``--max-call-seconds`` (from the previous size: linear in tokens for Vim, quadratic for DeiT) is skipped and recorded
with its reason. Targets (paper, GPU, 1248 px): Vim-Ti >= 2.8x DeiT-Ti throughput, <= 13.2% of its memory.

Usage:
    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/vision_efficiency.py --device cpu
    python benchmarks/vision_efficiency.py --device cuda --batch-size 32
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import PeakRSS, device_name  # noqa: E402

from ssmkit.core.io import write_text_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (224, 512, 738, 1024, 1248)
PAPER_SPEEDUP, PAPER_MEMORY_FRACTION = 2.8, 0.132


def rows_for(device: str) -> list[tuple[str, str]]:
    """(model, variant) rows: Vim-Ti per scan backend, DeiT-Ti with fused and explicit attention."""
    vim = [("vim_tiny", "cpu"), ("vim_tiny", "torch")] if device == "cpu" else [("vim_tiny", "triton")]
    return [*vim, ("deit_tiny", "sdpa"), ("deit_tiny", "explicit")]


def build(model: str, variant: str) -> torch.nn.Module:
    """The backbone of one row (ImageNet-1k sized, random weights: speed and memory do not depend on them)."""
    import timm

    if model == "vim_tiny":
        import ssmkit.vision  # noqa: F401  (registers the Vim models in timm)

        return timm.create_model("vim_tiny_patch16_224", dynamic_img_size=True, backend=variant)
    net = timm.create_model("deit_tiny_patch16_224", dynamic_img_size=True)
    for module in net.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = variant == "sdpa"
    return net


def tokens(model: str, size: int) -> int:
    """Sequence length of a size: (size // 16)^2 patches + 1 class token."""
    return (size // 16) ** 2 + 1


def child(opts: argparse.Namespace) -> None:
    """Measure one point in this (fresh) process and print it as one JSON line.

    Times are CPU seconds of the process on the CPU (``time.process_time``: one thread, so robust to the other
    processes of a shared machine) and wall seconds between ``torch.cuda.synchronize`` calls on the GPU.
    """
    device = torch.device(opts.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    net = build(opts.model, opts.variant).to(device).eval()
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        net.forward_features(torch.randn(1, 3, 224, 224, device=device))  # load / compile the kernels
        # timm's ViT patch embedding needs multiples of 16; Vim's stride-16 conv drops the remainder (738 -> 46
        # patches per side): DeiT gets the size floored to a multiple of 16, the same token grid
        size = opts.size if opts.model == "vim_tiny" else opts.size // 16 * 16
        x = torch.randn(opts.batch_size, 3, size, size, device=device)  # [B, 3, S, S]
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start = clock()
            out = net.forward_features(x)  # [B, N, D]
            sync()
            times = [clock() - start]
            peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            with PeakRSS() as rss:
                start = clock()
                out = net.forward_features(x)  # [B, N, D]
                times = [clock() - start]
            peak_mib = rss.delta_mb
        shape = list(out.shape)
        del out
        # more timed calls while they fit in the budget; on a GPU the first (allocating) call is not timed
        timed = [] if cuda else times
        while len(timed) < opts.repeats and sum(timed) + times[-1] <= opts.budget:
            start = clock()
            net.forward_features(x)
            sync()
            times.append(clock() - start)
            timed = times[1:] if cuda else times
    seconds = statistics.median(timed or times)
    print(json.dumps(dict(seconds=seconds, timed_calls=len(timed or times), clock="wall" if cuda else "cpu",
                          images_per_s=opts.batch_size / seconds, peak_mib=peak_mib, output_shape=shape)))


def run_point(opts: argparse.Namespace, model: str, variant: str, size: int) -> dict:
    """Run ``child`` for one point in a fresh process (one thread on the CPU) and return its JSON."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    if opts.device == "cpu":
        env.update(OMP_NUM_THREADS=str(opts.threads), NUMBA_NUM_THREADS=str(opts.threads))
    cmd = [sys.executable, __file__, "--child", "--device", opts.device, "--model", model, "--variant", variant,
           "--size", str(size), "--batch-size", str(opts.batch_size), "--repeats", str(opts.repeats), "--budget",
           str(opts.budget)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        if any("out of memory" in line.lower() for line in tail):
            return dict(skipped="out of memory")
        return dict(skipped="failed: " + " | ".join(tail))
    return json.loads(done.stdout.strip().splitlines()[-1])


def predicted_seconds(previous: dict | None, model: str, variant: str, size: int, previous_size: int) -> float:
    """Time of a call at ``size`` from the last measured size: linear in tokens (Vim), quadratic (DeiT)."""
    if previous is None or "seconds" not in previous:
        return 0.0
    ratio = tokens(model, size) / tokens(model, previous_size)
    return previous["seconds"] * (ratio if model == "vim_tiny" else ratio**2)


def summarize(points: list[dict], device: str) -> dict:
    """Per size and DeiT variant: Vim's best speed-up and memory fraction, the crossover sizes, and the targets."""
    by = {(p["model"], p["variant"], p["size"]): p for p in points if "seconds" in p}
    vims = [v for m, v in rows_for(device) if m == "vim_tiny"]
    out = {}
    for deit in ("sdpa", "explicit"):
        ratios = {}
        for size in sorted({p["size"] for p in points}):
            ref = by.get(("deit_tiny", deit, size))
            ours = [by[("vim_tiny", v, size)] for v in vims if ("vim_tiny", v, size) in by]
            if ref is None or not ours:
                continue
            fast = max(ours, key=lambda p: p["images_per_s"])
            small = min(ours, key=lambda p: p["peak_mib"])
            ratios[size] = dict(speedup=round(fast["images_per_s"] / ref["images_per_s"], 3), speed_backend=fast[
                "variant"], memory_fraction=round(small["peak_mib"] / ref["peak_mib"], 4),
                memory_backend=small["variant"])
        faster = [s for s, r in ratios.items() if r["speedup"] > 1]
        lighter = [s for s, r in ratios.items() if r["memory_fraction"] < 1]
        out[f"vs_deit_{deit}"] = dict(per_size=ratios, faster_from=min(faster) if faster else None,
                                      less_memory_from=min(lighter) if lighter else None)
    return out


def markdown(result: dict) -> str:
    """Results table, ratios and crossover sizes as Markdown."""
    lines = [f"### Vim-Ti vs DeiT-Ti feature extraction, {result['device']}", "",
             f"Command: `{result['command']}`  ", f"Batch {result['batch_size']}, fp32, inference mode, "
             f"{result['threads_note']}; wall time {result['wall_seconds']} s, machine load average "
             f"{result['load_average'][0]} at the start and {result['load_average'][1]} at the end. "
             f"{result['memory_note']}", "",
             "| size | tokens | model | backend | images/s | ms / batch | peak memory (MiB) | timed calls |",
             "|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        name = "Vim-Ti" if p["model"] == "vim_tiny" else "DeiT-Ti"
        if "seconds" in p:
            mark = " (r)" if p.get("reused") else ""
            lines.append(f"| {p['size']} | {tokens(p['model'], p['size'])} | {name} | {p['variant']} | "
                         f"{p['images_per_s']:.3f} | {1000 * p['seconds']:.0f} | {p['peak_mib']:.0f} | "
                         f"{p['timed_calls']}{mark} |")
        else:
            lines.append(f"| {p['size']} | {tokens(p['model'], p['size'])} | {name} | {p['variant']} | skipped: "
                         f"{p['skipped']} | | | |")
    if any(p.get("reused") for p in result["points"]):
        lines += ["", "(r): measured by earlier invocation(s) of this script with the same settings (its printed "
                  "points, passed back with --reuse); the other rows were measured by this one."]
    for key, summary in result["summary"].items():
        lines += ["", f"Vim-Ti (best backend) against DeiT-Ti with {key.split('_')[-1]} attention:", "",
                  "| size | speed-up | memory fraction |", "|---|---|---|"]
        for size, r in summary["per_size"].items():
            lines.append(f"| {size} | {r['speedup']:.2f}x ({r['speed_backend']}) | {r['memory_fraction']:.3f} "
                         f"({r['memory_backend']}) |")
        lines.append(f"\nVim-Ti is faster from {summary['faster_from'] or 'no measured size'} px and uses less memory "
                     f"from {summary['less_memory_from'] or 'no measured size'} px.")
    if "targets" in result:
        lines += ["", f"Targets at 1248 px (paper): {result['targets']}"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Figure-1-style PNG: throughput (log) and peak memory against the image size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for model, variant in rows_for(result["device_kind"]):
        pts = [p for p in result["points"] if p["model"] == model and p["variant"] == variant and "seconds" in p]
        if not pts:
            continue
        label = f"{'Vim-Ti' if model == 'vim_tiny' else 'DeiT-Ti'} ({variant})"
        style = "-o" if model == "vim_tiny" else "--s"
        left.plot([p["size"] for p in pts], [p["images_per_s"] for p in pts], style, label=label)
        right.plot([p["size"] for p in pts], [p["peak_mib"] / 1024 for p in pts], style, label=label)
    left.set(yscale="log", xlabel="image size (px)", ylabel="images / s (log)", title="Throughput")
    right.set(xlabel="image size (px)", ylabel="peak memory of one forward (GiB)", title="Memory")
    for ax in (left, right):
        ax.set_xticks(result["sizes"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Backbone feature extraction, batch {result['batch_size']}, {result['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--batch-size", type=int, default=None, help="default: 1 on the CPU, 32 on the GPU")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per point at most")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed calls per point at most")
    p.add_argument("--max-call-seconds", type=float, default=60.0, help="skip points predicted to be slower")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (OMP / numba)")
    p.add_argument("--out", default=None, help="output prefix (default results/vision_efficiency-<device>)")
    p.add_argument("--reuse", default=None, help="JSON lines of points this script printed before (same settings): "
                   "those points are taken from there instead of measured again")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    opts.batch_size = opts.batch_size or (1 if opts.device == "cpu" else 32)
    if opts.child:
        return child(opts)
    if opts.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible")
    sizes = [int(s) for s in opts.sizes.split(",")]
    start, points, load_before = time.perf_counter(), [], os.getloadavg()[0]
    reused = {}
    if opts.reuse:
        lines = [json.loads(line) for line in Path(opts.reuse).read_text().splitlines() if line.startswith("{")]
        reused = {(q.pop("model"), q.pop("variant"), q.pop("size")): q for q in lines}
    for model, variant in rows_for(opts.device):
        previous, previous_size = None, None
        for size in sizes:
            guess = predicted_seconds(previous, model, variant, size, previous_size)
            if guess > opts.max_call_seconds:
                point = dict(skipped=f"predicted {guess:.0f} s per call > --max-call-seconds {opts.max_call_seconds}")
            elif previous is not None and "skipped" in previous:
                point = dict(skipped=f"the smaller size {previous_size} px was skipped")
            elif (model, variant, size) in reused:
                point = dict(reused[(model, variant, size)], reused=True)
            else:
                point = run_point(opts, model, variant, size)
            points.append(dict(model=model, variant=variant, size=size, **point))
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in points[-1].items()}
            print(json.dumps(shown), flush=True)
            previous, previous_size = point, size
    result = dict(device=device_name(opts.device), device_kind=opts.device, batch_size=opts.batch_size, sizes=sizes,
                  threads_note=(f"{opts.threads} CPU thread(s), times in CPU seconds of the process"
                                if opts.device == "cpu" else "one GPU, wall times"),
                  memory_note=("Memory: VmHWM above the RSS before the call (fresh process per point)."
                               if opts.device == "cpu" else "Memory: max_memory_allocated above the allocation "
                               "before the call (fresh process per point)."),
                  points=points, summary=summarize(points, opts.device),
                  wall_seconds=round(time.perf_counter() - start, 1),
                  load_average=[round(load_before, 1), round(os.getloadavg()[0], 1)],
                  command="python benchmarks/vision_efficiency.py " + " ".join(argv if argv is not None
                                                                                  else sys.argv[1:]))
    if opts.device == "cuda":
        at = result["summary"]["vs_deit_explicit"]["per_size"].get(1248)
        if at is not None:
            met = at["speedup"] >= PAPER_SPEEDUP and at["memory_fraction"] <= PAPER_MEMORY_FRACTION
            result["targets"] = dict(speedup=at["speedup"], speedup_target=PAPER_SPEEDUP, met=met,
                                     memory_fraction=at["memory_fraction"], memory_target=PAPER_MEMORY_FRACTION)
    prefix = Path(opts.out) if opts.out else RESULTS / f"vision_efficiency-{opts.device}"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(prefix.with_suffix(".json"), json.dumps(result, indent=1))
    write_text_atomic(prefix.with_suffix(".md"), markdown(result))
    tmp_png = prefix.parent / f".{prefix.name}.tmp.png"
    plot(result, tmp_png)
    os.replace(tmp_png, prefix.with_suffix(".png"))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
