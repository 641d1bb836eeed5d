"""Benchmark of the scan kernels: forward and forward+backward time per backend (and GPU peak memory).

CPU peak memory is measured by ``kernel_memory.py`` (a fresh process per backend); here the CPU runs with the
default allocator, as users run it.

CPU: backends naive (the plain per-step PyTorch loop with autograd: the baseline), torch, cpu; one thread unless
``--threads`` says otherwise. GPU: torch and triton, plus achieved bytes/s against the byte floor and the exp floor of
reference/kernels.md section 4. Writes ``benchmarks/results/kernels-<device>.json`` and ``.md``.

Usage:
    python benchmarks/kernels.py --device cpu            # the full grid (about 20-40 min on one core)
    python benchmarks/kernels.py --device cpu --quick    # the target shapes only (make demo)
    python benchmarks/kernels.py --device cuda           # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import device_name, gpu_ceilings, measure  # noqa: E402

from ssmkit.core.io import write_text_atomic  # noqa: E402
from ssmkit.kernels import linear_scan, selective_scan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SMALL = dict(B=32, L=16, D=64, N=16)  # time-series / recsys sized
LARGE = dict(B=2, L=1024, D=256, N=16)  # the CPU target shape


def selective_inputs(B, L, D, N, dtype, device, grad):
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device=device, dtype=dtype).requires_grad_(grad)

    return dict(u=rnd(B, L, D), delta=rnd(B, L, D, scale=0.5, shift=-1.0),
                A=(-torch.exp(torch.randn(D, N, generator=g) * 0.5)).to(device).requires_grad_(grad),
                B=rnd(B, L, N), C=rnd(B, L, N), D=torch.ones(D, device=device).requires_grad_(grad),
                z=rnd(B, L, D), delta_bias=torch.zeros(D, device=device).requires_grad_(grad))


def selective_case(backend, shape, dtype, device, mode):
    x = selective_inputs(**shape, dtype=dtype, device=device, grad=(mode == "fwd+bwd"))
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return selective_scan(**x, delta_softplus=True, backend=backend)
    else:
        gy = torch.randn(shape["B"], shape["L"], shape["D"], device=device, dtype=dtype)

        def run():
            for t in x.values():
                t.grad = None  # no gradient accumulation inside the timed call
            selective_scan(**x, delta_softplus=True, backend=backend).backward(gy)
    return run


def linear_case(backend, shape, dtype, device, mode):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(shape["B"], shape["L"], shape["D"], generator=g).to(device=device, dtype=dtype)
    b = torch.randn(shape["B"], shape["L"], shape["D"], generator=g).to(device=device, dtype=dtype)
    if mode == "fwd":
        def run():
            with torch.no_grad():
                linear_scan(a, b, backend=backend)
    else:
        a.requires_grad_(True)
        b.requires_grad_(True)
        gh = torch.randn_like(b)

        def run():
            linear_scan(a, b, backend=backend).backward(gh)
    return run


def floors(op, shape, dtype, mode, ceilings):
    """Minimal bytes and the byte / exp time floors (seconds) of reference/kernels.md section 4.

    ``ceilings`` holds the device's measured copy bandwidth and its exp rate (``_measure.gpu_ceilings``). fwd+bwd
    counts the forward's bytes plus the backward's (which re-reads the inputs and recomputes the states) and two
    exps per (b, l, d, n): one forward, one for the recomputed states.
    """
    s = torch.finfo(dtype).bits // 8
    B, L, D = shape["B"], shape["L"], shape["D"]
    bw, exp_rate = ceilings["copy_tbps"] * 1e12, ceilings["exp_per_s"]
    if op == "selective_scan":
        N = shape["N"]
        fwd = B * L * ((3 * s + s) * D + 2 * N * s)
        bwd = B * L * (7 * s * D + 2 * N * (s + 4))
        nbytes = fwd if mode == "fwd" else fwd + bwd
        n_exp = B * L * D * N * (1 if mode == "fwd" else 2)
        return nbytes, nbytes / bw, n_exp / exp_rate
    nbytes = (3 if mode == "fwd" else 8) * s * B * L * D
    return nbytes, nbytes / bw, 0.0


def grid(args):
    if args.shape:
        for text in args.shape:
            B, L, D, N = (int(v) for v in text.split(","))
            yield "selective_scan", dict(B=B, L=L, D=D, N=N)
        return
    if args.quick:
        yield "selective_scan", LARGE
        yield "selective_scan", SMALL
        yield "linear_scan", dict(B=2, L=4096, D=256)
        return
    for B in (2, 8):
        for D in (256, 1536):
            for L in (256, 1024, 4096, 16384):
                yield "selective_scan", dict(B=B, L=L, D=D, N=16)
    yield "selective_scan", SMALL
    for L in (4096, 16384, 65536):
        yield "linear_scan", dict(B=8, L=L, D=1536 if args.device == "cuda" else 256)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="default: float32 on the CPU, bfloat16 on a GPU")
    p.add_argument("--backends", default=None, help="comma list; default: naive,torch,cpu (CPU) or torch,triton")
    p.add_argument("--quick", action="store_true", help="only the target shapes (used by make demo)")
    p.add_argument("--budget-s", type=float, default=60.0,
                   help="skip a case whose time, predicted from the previous length, exceeds this")
    p.add_argument("--shape", action="append", default=None, metavar="B,L,D,N",
                   help="benchmark only these selective-scan shapes (repeatable), e.g. --shape 2,16384,256,16")
    p.add_argument("--repeats", type=int, default=15, help="timed calls per case (median), within the budget")
    p.add_argument("--out", default=None, help="results file stem (default benchmarks/results/kernels-<device>)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    dtype = getattr(torch, args.dtype or ("float32" if args.device == "cpu" else "bfloat16"))
    backends = (args.backends or ("naive,torch,cpu" if args.device == "cpu" else "torch,triton")).split(",")
    dev = device_name(args.device)
    print(f"# kernels benchmark on {dev}, {args.threads} thread(s), {dtype}", flush=True)
    ceilings = gpu_ceilings() if args.device == "cuda" else None
    if ceilings:
        print(f"# measured copy {ceilings['copy_tbps']} TB/s; exp rate {ceilings['exp_per_s']:.3g}/s "
              f"({ceilings['clock_source']})", flush=True)

    stem = Path(args.out) if args.out else RESULTS / f"kernels-{'quick-' if args.quick else ''}{args.device}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    result = dict(device=dev, threads=args.threads, torch=torch.__version__, dtype=str(dtype), ceilings=ceilings,
                  date=time.strftime("%Y-%m-%d"),
                  command="python benchmarks/kernels.py " + " ".join(argv or sys.argv[1:]),
                  complete=False, rows=[], targets={})
    rows, last_time = result["rows"], {}
    for op, shape in grid(args):
        for backend in backends:
            for mode in ("fwd", "fwd+bwd"):
                key = (op, backend, mode, shape.get("B"), shape.get("D"))
                row = dict(op=op, backend=backend, mode=mode, dtype=str(dtype).replace("torch.", ""), **shape)
                prev = last_time.get(key)
                if prev is not None and prev[0] * shape["L"] / prev[1] / 1e3 > args.budget_s:
                    row["skipped"] = f"predicted {prev[0] * shape['L'] / prev[1] / 1e3:.0f} s > budget"
                    rows.append(row)
                    print(f"{op:15s} {backend:7s} {mode:8s} {shape} skipped ({row['skipped']})", flush=True)
                    continue
                make = selective_case if op == "selective_scan" else linear_case
                compile_start = time.perf_counter()
                fn = make(backend, shape, dtype, args.device, mode)
                fn()  # first call: compiles numba / triton kernels
                row["first_call_s"] = round(time.perf_counter() - compile_start, 3)
                ms, mb = measure(fn, args.device, repeats=args.repeats, budget_s=max(2.0, args.budget_s / 10))
                row.update(ms=round(ms, 3))
                if args.device == "cuda":  # CPU peak memory: benchmarks/kernel_memory.py (a fresh process per case)
                    row.update(peak_mb=round(mb, 1))
                if args.device == "cuda":
                    nbytes, t_mem, t_exp = floors(op, shape, dtype, mode, ceilings)
                    row.update(bytes=nbytes, achieved_tbps=round(nbytes / (ms / 1e3) / 1e12, 3),
                               floor_ms=round(max(t_mem, t_exp) * 1e3, 4),
                               fraction_of_floor=round(max(t_mem, t_exp) / (ms / 1e3), 3))
                last_time[key] = (ms, shape["L"])
                rows.append(row)
                print(f"{op:15s} {backend:7s} {mode:8s} {shape} {ms:10.2f} ms {mb:9.1f} MiB", flush=True)
                write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=1))  # kept if the run is cut

    result.update(complete=True, targets=targets(rows))
    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=1))
    md = markdown(result)
    write_text_atomic(stem.with_suffix(".md"), md)
    print()
    print(md)


def targets(rows):
    """Speed-ups of each backend over the per-step loop (naive) in the same run, at the target shapes."""
    def find(backend, mode, **shape):
        for r in rows:
            if r["op"] == "selective_scan" and r["backend"] == backend and r["mode"] == mode and "ms" in r and all(
                    r.get(k) == v for k, v in shape.items()):
                return r
        return None

    out = {}
    for name, shape in (("large", LARGE), ("small", SMALL)):
        loop = find("naive", "fwd+bwd", **shape)
        for backend in ("torch", "cpu"):
            r = find(backend, "fwd+bwd", **shape)
            if loop and r:
                out[f"{backend}_vs_loop_fwd+bwd_{name}"] = round(loop["ms"] / r["ms"], 1)
    long_shape = dict(B=2, L=16384, D=256, N=16)
    loop, cpu = find("naive", "fwd+bwd", **long_shape), find("cpu", "fwd+bwd", **long_shape)
    if loop and cpu and cpu.get("peak_mb", 0) > 0 and loop.get("peak_mb"):
        out["cpu_peak_memory_fraction_of_loop_L16384"] = round(cpu["peak_mb"] / loop["peak_mb"], 4)
    return out


def markdown(result):
    lines = [f"## Kernels on {result['device']} ({result['threads']} thread(s), {result['dtype']}, "
             f"torch {result['torch']}, {result['date']})", "", f"Command: `{result['command']}`", "",
             "Times: median of up to the given repeats after a warm-up call, default allocator (as users run it). "
             "GPU peak memory is the allocator's; CPU peak memory is measured by `benchmarks/kernel_memory.py` "
             "(a fresh process per backend, exact RSS high-water mark).", "",
             "| op | backend | mode | B | L | D | N | time (ms) | peak mem (MiB) | x loop | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    loop = {(r["op"], r["mode"], r["B"], r["L"], r["D"]): r.get("ms")
            for r in result["rows"] if r["backend"] == "naive"}
    for r in result["rows"]:
        base = loop.get((r["op"], r["mode"], r["B"], r["L"], r["D"]))
        speed = f"{base / r['ms']:.1f}" if base and r.get("ms") else ""
        note = r.get("skipped", "")
        if "fraction_of_floor" in r:
            note = f"{r['achieved_tbps']} TB/s, {100 * r['fraction_of_floor']:.0f}% of floor {r['floor_ms']} ms"
        lines.append(f"| {r['op']} | {r['backend']} | {r['mode']} | {r['B']} | {r['L']} | {r['D']} | "
                     f"{r.get('N', '')} | {r.get('ms', '')} | {r.get('peak_mb', '')} | {speed} | {note} |")
    if result["targets"]:
        lines += ["", "Targets (ratios measured in this run):", ""]
        lines += [f"- {k}: {v}" for k, v in result["targets"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
