"""Instructions per loop of the selective-scan Triton kernels in sm_90 SASS, compiled on a machine without a GPU.

For each kernel (tile / rows forward, tile / rows backward) at the benchmark's configuration (bf16, D=1536, N as
given, every Mamba gate on) this compiles the kernel as ``benchmarks/triton_compile_sm90.py`` does, disassembles it
with the ``cuobjdump`` bundled with triton and prints, for each loop (a backward branch), its instruction count and
the most frequent opcodes. Divide a per-step loop's count by the state values a thread holds to compare kernels.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/triton_sass_loops.py --dstate 16 [--set _BWD_ROWS_TILE_SUMS=True]
"""

from __future__ import annotations

import argparse
import ast
import collections
import re
import subprocess
import tempfile
from pathlib import Path

import triton_compile_sm90 as aot
from triton import knobs

from ssmkit.kernels.selective_scan import triton as selective

FLAGS = {"HAS_D": True, "HAS_Z": True, "HAS_BIAS": True, "SOFTPLUS": True, "HAS_INIT": False, "HAS_DFINAL": False,
         "HAS_LENGTHS": False, "REVERSE": False}


def loops(cubin: bytes) -> list[tuple[int, collections.Counter]]:
    """(instruction count, opcode counts) of every loop body (from a backward branch's target to the branch)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernel.cubin")
        path.write_bytes(cubin)
        sass = subprocess.run([knobs.nvidia.cuobjdump.path, "-sass", str(path)], capture_output=True, text=True,
                              check=True).stdout
    code = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4})\*/\s+(.*?);", sass)]
    found = []
    for addr, ins in code:
        target = re.search(r"BRA\s.*?0x([0-9a-f]+)", ins)
        if target and int(target.group(1), 16) < addr:
            body = [i for a, i in code if int(target.group(1), 16) <= a <= addr]
            found.append((len(body), collections.Counter(i.split()[1] if i.startswith("@") else i.split()[0]
                                                         for i in body)))
    return found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--dstate", type=int, default=16, choices=(1, 4, 16, 32))
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="selective_scan/triton.py settings (Python literals), e.g. _BWD_ROWS_TILE_SUMS=True")
    args = parser.parse_args(argv)
    for item in args.set:
        name, value = item.split("=", 1)
        if not hasattr(selective, name):
            raise SystemExit(f"--set: selective_scan.triton has no setting {name!r}")
        setattr(selective, name, ast.literal_eval(value))
    for spec_index, spec in enumerate(aot.SPECS):
        if not spec.name.startswith("selective_scan."):
            continue
        flags = {name: FLAGS[name] for group in spec.flag_groups for name in group}
        row = aot.compile_case((spec_index, "bf16", args.dstate, flags), keep_cubin=True)
        if "error" in row:
            print(spec.name, "error:", row["error"].splitlines()[-1])
            continue
        print(f"{spec.name} N={args.dstate} {row['blocks']} REG {row['REG']} STACK {row['STACK']}")
        for count, ops in loops(row.pop("cubin")):
            print(f"    loop of {count} instructions: {dict(ops.most_common(8))}")


if __name__ == "__main__":
    main()
