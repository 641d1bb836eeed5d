"""Peak memory of one selective-scan forward+backward per backend, each in a fresh process (CPU, Linux).

In a fresh process the inputs are built, the kernel's high-water mark is reset (``/proc/self/clear_refs``) and one
forward+backward runs; the reported number is VmHWM minus the RSS just before the call: activations, saved tensors,
gradients and workspace of that call. A fresh process per backend keeps pages freed by an earlier case from hiding
new allocations (the in-process numbers of ``kernels.py`` can read 0 for that reason).

Usage: python benchmarks/kernel_memory.py --shape 2,16384,256,16 --backends naive,cpu,torch
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from ssmkit.core.io import write_text_atomic

CHILD = """
import sys, torch
sys.path.insert(0, {bench!r})
from kernels import selective_inputs
from ssmkit.kernels import selective_scan
B, L, D, N = {shape}
x = selective_inputs(B, L, D, N, torch.float32, "cpu", grad=True)
gy = torch.randn(B, L, D)
def status(field):
    return int(next(l for l in open("/proc/self/status") if l.startswith(field + ":")).split()[1]) * 1024
small = selective_inputs(1, 8, D, N, torch.float32, "cpu", grad=True)
selective_scan(**small, delta_softplus=True, backend={backend!r}).sum().backward()  # load / compile the kernel
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
selective_scan(**x, delta_softplus=True, backend={backend!r}).backward(gy)
print((max(status("VmHWM"), status("VmRSS")) - base) / 2**20)
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="2,16384,256,16", metavar="B,L,D,N")
    p.add_argument("--backends", default="naive,cpu,torch")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "kernel-memory-cpu.json"))
    args = p.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split(","))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    rows = {}
    for backend in args.backends.split(","):
        code = CHILD.format(bench=str(Path(__file__).resolve().parent), shape=shape, backend=backend)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        rows[backend] = round(float(out.stdout.strip().splitlines()[-1]), 1)
        print(f"{backend:6s} {args.shape}: peak {rows[backend]} MiB above the inputs", flush=True)
    result = dict(shape=args.shape, method="VmHWM - VmRSS around one fwd+bwd, fresh process per backend",
                  peak_mib=rows, command="python benchmarks/kernel_memory.py " + " ".join(argv or sys.argv[1:]))
    if "naive" in rows and "cpu" in rows:
        result["cpu_fraction_of_loop"] = round(rows["cpu"] / rows["naive"], 4)
        print(f"cpu / naive peak memory: {result['cpu_fraction_of_loop']}")
    write_text_atomic(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
