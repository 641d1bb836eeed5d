"""Graph scaling benchmark on the CPU: GMN (state-space scan over nodes) against GPS (full attention).

One node-classification graph per point (``ssmkit.graphs.data.synthetic_graph``: N nodes, average degree 8, 16
features, 4 classes), one training forward + backward of the whole graph, float32, one thread. Models from the
registry, the same width (64), depth (2) and task head: ``gmn`` with its default tokenization (walk length m = 2,
2 walks, 2 repeats, local GatedGCN); ``gmn_m0``, GMN with node tokens only (m = 0); ``gps`` with 4 heads
(``torch_geometric.nn.GPSConv``, whose ``nn.MultiheadAttention`` runs torch's fused attention on the CPU: no
N x N matrix is stored).

Each point runs in a fresh process (``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB so freed tensors leave RSS):
model and graph are built, one warm-up forward + backward runs, then ``--repeats`` measured calls; the first
resets the kernel's high-water mark (``/proc/self/clear_refs``) and gives the peak RSS (``VmHWM``) above the RSS
before the call, and the whole process's peak. Time: median wall-clock and CPU (user + system) seconds per call;
the machine is shared, so the CPU time is the stable number. The parent watches every child's RSS and stops it
above ``--run-limit-gib``: the machine is shared, nothing larger is ever allocated.

Once a model has two measured points, each next point is predicted first (power law in N through the two largest
measured points): a point predicted above ``--cap-gib`` is recorded as "OOM predicted", one predicted above the run
limit or above ``--call-limit-s`` CPU seconds per call as "not run"; both rows carry the extrapolated numbers,
labelled as such. GPS rows also give the memory explicit attention would need for the probabilities kept for
backward (2 layers x 4 heads x N^2 float32), the quadratic term the fused kernel avoids. Plot: log-log, measured
points solid, extrapolated ones hollow and dashed.

Usage:
    python benchmarks/graph_scaling.py                  # 1k ... 200k nodes
    python benchmarks/graph_scaling.py --quick          # 1k and 2k: a check that it works
    python benchmarks/graph_scaling.py --models gmn_m0 --append   # add a model to the existing results
Writes graph_scaling-cpu.{json,md,png} (``--quick``: graph_scaling-cpu-quick.*) into ``--out-dir``
(default benchmarks/results).
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
NODES = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000)
# benchmark name -> (registered model, extra builder arguments)
MODELS = {"gmn": ("gmn", {}), "gmn_m0": ("gmn", {"walk_length": 0}), "gps": ("gps", {"heads": 4})}
COLORS = {"gmn": "tab:blue", "gmn_m0": "tab:green", "gps": "tab:red"}
GIB = 2**30


def child(model_name: str, num_nodes: int, repeats: int) -> dict:
    """Build, warm up and measure one point in this process; returns its measurements."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _measure import PeakRSS, _status_kib

    from ssmkit.core.registry import create_model
    from ssmkit.graphs.data import synthetic_graph

    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = synthetic_graph(num_nodes, 8.0, 16, 4, seed=0)
    registered, extra = MODELS[model_name]
    model = create_model(registered, in_channels=16, out_channels=4, hidden_channels=64, num_layers=2, task="node",
                         **extra).train()

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(data), data.y)
        loss.backward()
        model.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()
    warmup_s = time.perf_counter() - start
    wall, cpu = [], []
    for i in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        if i == 0:
            with PeakRSS() as rss:
                step()
        else:
            step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return dict(peak_delta_gib=rss.delta_mb / 1024, process_peak_gib=_status_kib("VmHWM") / 2**20,
                seconds=statistics.median(wall), cpu_seconds=statistics.median(cpu), warmup_seconds=warmup_s,
                edges=int(data.num_edges), params=sum(p.numel() for p in model.parameters()))


def run_child(model_name: str, num_nodes: int, args: argparse.Namespace) -> dict:
    """Run one point in a fresh process, stopping it above the RSS limit or the time limit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    cmd = [sys.executable, __file__, "--child", model_name, str(num_nodes), "--repeats", str(args.repeats)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    start, peak_kib, stopped = time.perf_counter(), 0, None
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            peak_kib = max(peak_kib, rss)
        except (OSError, StopIteration):
            pass
        if peak_kib > args.run_limit_gib * 2**20:
            stopped = f"stopped: RSS passed the {args.run_limit_gib} GiB run limit"
        elif time.perf_counter() - start > args.timeout_s:
            stopped = f"stopped: ran past {args.timeout_s} s"
        if stopped:
            proc.kill()
            proc.wait()
            return dict(status=stopped)
        time.sleep(0.02)
    out, err = proc.communicate()
    if proc.returncode != 0:
        print(err[-3000:], file=sys.stderr)
        return dict(status=f"failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return dict(status="measured", **json.loads(out.strip().splitlines()[-1]))


def extrapolate(points: list[dict], num_nodes: int, key: str) -> float:
    """Power law through the two largest measured points, evaluated at ``num_nodes``."""
    (n1, y1), (n2, y2) = [(p["nodes"], p[key]) for p in points[-2:]]
    slope = math.log(y2 / y1) / math.log(n2 / n1)
    return y2 * (num_nodes / n2) ** slope


def dense_attention_gib(num_nodes: int) -> float:
    """Memory of explicit attention probabilities kept for backward: layers x heads x N^2 float32 (2 x 4 here)."""
    return 2 * 4 * num_nodes**2 * 4 / GIB


def predict(measured: list[dict], num_nodes: int, args: argparse.Namespace) -> dict | None:
    """Extrapolated numbers of a point and why it is not run, or None when it should run.

    The call's peak and the CPU time follow a power law through the two largest measured points; the process peak
    is the RSS before the call at the largest measured point plus the extrapolated call peak.
    """
    if len(measured) < 2:
        return None
    base = measured[-1]["process_peak_gib"] - measured[-1]["peak_delta_gib"]
    row = {key: extrapolate(measured, num_nodes, key) for key in ("peak_delta_gib", "cpu_seconds")}
    row["process_peak_gib"] = base + row["peak_delta_gib"]
    peak, cpu = row["process_peak_gib"], row["cpu_seconds"]
    why = (f"OOM predicted: {peak:.1f} GiB > {args.cap_gib} GiB cap" if peak > args.cap_gib else
           f"not run: predicted {peak:.1f} GiB > {args.run_limit_gib} GiB run limit" if peak > args.run_limit_gib else
           f"not run: predicted {cpu:.0f} CPU s per call > {args.call_limit_s} s" if cpu > args.call_limit_s else None)
    return None if why is None else dict(row, status=why + " (extrapolated)", extrapolated=True)


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    for model_name in args.models:
        measured: list[dict] = []
        for num_nodes in args.nodes:
            row = dict(model=model_name, nodes=num_nodes)
            if model_name == "gps":
                row["dense_attention_gib"] = dense_attention_gib(num_nodes)
            row.update(predict(measured, num_nodes, args) or run_child(model_name, num_nodes, args))
            row.setdefault("extrapolated", False)
            if row["status"] == "measured":
                measured.append(row)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def rederive(rows: list[dict], args: argparse.Namespace) -> list[dict]:
    """Recompute the extrapolated rows from the measured ones (no new measurement)."""
    out = []
    for model_name in dict.fromkeys(r["model"] for r in rows):
        measured = []
        for old in sorted((r for r in rows if r["model"] == model_name), key=lambda r: r["nodes"]):
            if old["status"] == "measured" or not old.get("extrapolated"):
                row = old
            else:
                row = {k: v for k, v in old.items() if k in ("model", "nodes", "dense_attention_gib")}
                row.update(predict(measured, row["nodes"], args) or dict(status="not measured", extrapolated=False))
            measured += [row] if row["status"] == "measured" else []
            out.append(row)
    return out


def markdown(rows: list[dict], args: argparse.Namespace, wall_s: float) -> str:
    lines = [
        "# Graph scaling: GMN against GPS, one forward + backward of a whole graph (CPU)", "",
        f"Command: `{' '.join(['python', 'benchmarks/graph_scaling.py', *args.argv])}`; wall time {wall_s:.0f} s.  ",
        f"Device: {args.device}, 1 thread, float32; shared machine (other jobs ran beside it).  ",
        "Graph: synthetic, average degree 8, 16 features, 4 classes; width 64, 2 layers; node task.  ",
        "Memory: peak RSS of the whole process (model, graph and one forward + backward) and the call's peak above "
        "the RSS before it. CPU s: CPU (user + system) seconds of one forward + backward on one thread, the stable "
        "number; wall s: wall-clock seconds, inflated by the other jobs on the shared machine. Explicit attention: "
        "the attention probabilities an explicit softmax(QK^T) would keep for backward (2 layers x 4 heads x N^2 "
        "float32); torch's fused CPU attention, which GPS runs here, never stores them. Extrapolated rows are not "
        "measurements: a power law through the two largest measured points of that model.", "",
        "| model | nodes | status | process peak (GiB) | call peak (GiB) | CPU s | wall s | explicit attention (GiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "–"

    for r in rows:
        lines.append(f"| {r['model']} | {r['nodes']:,} | {r['status']} | {cell(r, 'process_peak_gib', '.2f')} | "
                     f"{cell(r, 'peak_delta_gib', '.3f')} | {cell(r, 'cpu_seconds', '.2f')} | "
                     f"{cell(r, 'seconds', '.2f')} | {cell(r, 'dense_attention_gib', '.2f')} |")
    for model_name in dict.fromkeys(r["model"] for r in rows):
        measured = [r for r in rows if r["model"] == model_name and r["status"] == "measured"]
        if len(measured) >= 2:
            first, last = measured[0], measured[-1]
            ratio = math.log(last["nodes"] / first["nodes"])
            lines.append("")
            time_exp = math.log(last["cpu_seconds"] / first["cpu_seconds"]) / ratio
            memory_exp = math.log(last["peak_delta_gib"] / first["peak_delta_gib"]) / ratio
            before = measured[-2]
            last_exp = math.log(last["cpu_seconds"] / before["cpu_seconds"]) / math.log(last["nodes"] / before["nodes"])
            lines.append(f"{model_name}: measured growth exponent from {first['nodes']:,} to {last['nodes']:,} nodes: "
                         f"CPU time {time_exp:.2f} ({last_exp:.2f} between the two largest points), call peak memory "
                         f"{memory_exp:.2f} (1 = linear, 2 = quadratic).")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, cap_gib: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = ((axes[0], "process_peak_gib", "peak RSS (GiB)"), (axes[1], "cpu_seconds", "fwd+bwd CPU time (s)"))
    for ax, key, label in panels:
        for model_name, color in COLORS.items():
            measured = [r for r in rows if r["model"] == model_name and r["status"] == "measured"]
            for extrapolated, style in ((False, "o-"), (True, "o--")):
                pts = [r for r in rows if r["model"] == model_name and r.get("extrapolated") == extrapolated
                       and key in r]
                if pts and extrapolated and measured:
                    pts = [measured[-1], *pts]  # the dashed line starts at the last measurement
                if pts:
                    ax.plot([r["nodes"] for r in pts], [r[key] for r in pts], style, color=color,
                            mfc="none" if extrapolated else color,
                            label=f"{model_name}{' (extrapolated)' if extrapolated else ''}")
        attention = [r for r in rows if "dense_attention_gib" in r]
        if key == "process_peak_gib" and attention:
            ax.plot([r["nodes"] for r in attention], [r["dense_attention_gib"] for r in attention], ":",
                    color="tab:red", label="explicit attention, analytic (2 x 4 x N^2 x 4 B)")
            ax.axhline(cap_gib, color="0.5", lw=0.8)
            ax.text(attention[-1]["nodes"], cap_gib * 0.6, f"{cap_gib:g} GiB cap", color="0.4", fontsize=8, ha="right")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("GMN vs GPS, one forward + backward per graph (CPU, 1 thread)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "NODES"), help=argparse.SUPPRESS)
    parser.add_argument("--nodes", type=int, nargs="+", default=list(NODES))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["gmn", "gmn_m0", "gps"])
    parser.add_argument("--rederive", action="store_true",
                        help="recompute the extrapolated rows of the existing results file from its measured rows")
    parser.add_argument("--append", action="store_true",
                        help="keep the other models' rows of the existing results file and add these")
    parser.add_argument("--quick", action="store_true", help="1k and 2k nodes only")
    parser.add_argument("--repeats", type=int, default=1, help="measured calls per point (the first gives the peak)")
    parser.add_argument("--call-limit-s", type=float, default=40.0,
                        help="points predicted to need more CPU seconds per call are extrapolated, not run")
    parser.add_argument("--cap-gib", type=float, default=20.0, help="memory above which a point counts as OOM")
    parser.add_argument("--run-limit-gib", type=float, default=6.0, help="largest RSS a point may really reach")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="per point")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where the results files go")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.repeats)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _measure import device_name

    args.argv, args.device = argv, device_name("cpu")
    if args.quick:
        args.nodes = [1_000, 2_000]
    stem = args.out_dir / ("graph_scaling-cpu-quick" if args.quick else "graph_scaling-cpu")
    old = json.loads(stem.with_suffix(".json").read_text()) if args.append else {"rows": [], "wall_seconds": 0.0}
    start = time.perf_counter()
    if args.rederive:
        old = json.loads(stem.with_suffix(".json").read_text())
        rows, wall_s, argv = rederive(old["rows"], args), old["wall_seconds"], old["argv"]
    else:
        rows = run(args)
        wall_s = time.perf_counter() - start + old["wall_seconds"]
        rows = [r for r in old["rows"] if r["model"] not in args.models] + rows
        argv = [*old.get("argv", []), "+", *argv] if args.append else argv
    args.argv = argv
    write_text_atomic(stem.with_suffix(".json"), json.dumps({"device": args.device, "threads": 1, "argv": argv,
                                                             "wall_seconds": wall_s, "rows": rows}, indent=1))
    write_text_atomic(stem.with_suffix(".md"), markdown(rows, args, wall_s))
    tmp = stem.parent / f".{stem.name}.tmp.png"
    plot(rows, tmp, args.cap_gib)
    os.replace(tmp, stem.with_suffix(".png"))
    print(markdown(rows, args, wall_s))


if __name__ == "__main__":
    main()
