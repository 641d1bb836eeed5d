"""Ahead-of-time compile every Triton kernel of ssmkit for an H100 (sm_90) on a machine without a GPU.

What it proves: with the triton version installed here (and its bundled ptxas), every kernel of
``ssmkit/kernels/selective_scan/triton.py`` (forward and backward), ``ssmkit/kernels/linear_scan/triton.py``
(forward and backward) and ``ssmkit/kernels/_step_triton.py`` compiles to an sm_90 cubin for each swept state size
N, flag combination and I/O dtype, and whether it fits in registers. ``cuobjdump`` (bundled with triton) reports
REG / STACK / SHARED / LOCAL per kernel (``--dump-resource-usage``) and STL_LDL, the number of local-memory store /
load instructions in its SASS. ptxas places register spills in the per-thread stack frame, so a spill shows as
STACK > 0 and STL / LDL instructions while LOCAL stays 0 (these kernels make no calls: the stack holds nothing else);
any nonzero STACK, LOCAL or STL_LDL counts as a spill.

Each kernel is specialised exactly as ``kernel[grid](...)`` would specialise it (same helper functions for the block
sizes, same constexprs, the backend's num_warps, the JIT's own integer / alignment specialisation) for a
representative call:
``DIM`` channels in ``GROUPS`` group(s), ``SEQLEN`` steps, pointers 16-byte aligned (as fresh PyTorch allocations
are), weights / states / checkpoints in float32 and activations in the I/O dtype. Flags listed together in a spec's
``flag_groups`` are switched on and off together (D, z, delta_bias and softplus: the Mamba gates); the groups are
swept over all their combinations.

What it does not prove: nothing is run, so there is no timing, occupancy or correctness evidence here (correctness
is covered by the interpreter tests); other geometries (e.g. GROUPS > 1, unaligned views) specialise differently.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/triton_compile_sm90.py --dtype bf16 fp32

Writes ``<out>.json`` and ``<out>.md``; exits 1 if any kernel fails to compile or spills, so it can serve as a check.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import JITFunction, native_specialize_impl

from ssmkit.kernels import _step_triton as step
from ssmkit.kernels.linear_scan import triton as linear
from ssmkit.kernels.selective_scan import triton as selective

TARGET = GPUTarget("cuda", 90, 32)  # H100: sm_90, 32 threads per warp
NUM_WARPS = 4  # the state-update kernel's launch; the scans' come from their modules
DIM, GROUPS, SEQLEN = 1536, 1, 2048  # representative call (Mamba-130m: d_inner 1536, one B/C group)
DSTATES = (1, 4, 16, 64)
LINEAR_BATCHES = (1, 8)  # linear_scan's BLOCK_D depends on the batch: 16 at batch 1, 32 at batch 8 (DIM = 1536)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
GATES = ("HAS_D", "HAS_Z", "HAS_BIAS", "SOFTPLUS")
RESOURCES = ("REG", "STACK", "SHARED", "LOCAL", "STL_LDL")


def _selective_sizes(dstate: int, unroll: int, tile_values: int) -> dict[str, int]:
    """Integer arguments and block constexprs of the selective-scan kernels, from the backend's own ``_geometry``."""
    meta = functools.partial(torch.empty, device="meta")
    geo = selective._geometry(meta(1, SEQLEN, DIM), meta(DIM, dstate), meta(1, SEQLEN, GROUPS, dstate), tile_values)
    ints = ("seqlen", "dim", "groups", "dim_per_group", "tiles_per_group", "dstate", "n_chunks")
    return {**{k: geo[k] for k in ints}, "CHUNK": geo["chunk"], "BLOCK_D": geo["block_d"],
            "BLOCK_N": geo["block_n"], "UNROLL": unroll}


def _rows_sizes(dstate: int) -> dict[str, int]:
    """Integer arguments and constexprs of the rows forward (as in ``_SelectiveScanFn.forward``); ELEM is per dtype."""
    meta = functools.partial(torch.empty, device="meta")
    geo = selective._geometry(meta(1, SEQLEN, DIM), meta(DIM, dstate), meta(1, SEQLEN, GROUPS, dstate), 128)
    block_d = 32 * selective._ROWS_NUM_WARPS
    return {"seqlen": SEQLEN, "dim": DIM, "groups": GROUPS, "dim_per_group": DIM // GROUPS,
            "tiles_per_group": triton.cdiv(DIM // GROUPS, block_d), "n_chunks": geo["n_chunks"], "CHUNK": geo["chunk"],
            "BLOCK_D": block_d, "DSTATE": dstate, "LANES": 1, "PREFETCH": selective._rows_prefetch(dstate),
            "PACK": dstate % 4 == 0, "FAST": True}  # whole 8-byte B / C words for every dtype when 4 divides N


def _bwd_rows_sizes(dstate: int) -> dict[str, int]:
    """Integer arguments and constexprs of the rows backward (as in ``_backward_rows``); ELEM is per dtype."""
    block_d = selective._BWD_ROWS_BLOCK_D
    tiles = triton.cdiv(DIM // GROUPS, block_d)
    return {"batch": 8, "seqlen": SEQLEN, "dim": DIM, "groups": GROUPS, "dim_per_group": DIM // GROUPS,
            "tiles_per_group": tiles, "n_chunks": triton.cdiv(SEQLEN, selective._chunk_size()),
            "n_programs": 8 * GROUPS * tiles, "CHUNK": selective._chunk_size(), "BLOCK_D": block_d, "DSTATE": dstate,
            "PACK": dstate % 4 == 0, "FAST": True,
            "SUMS_PAD": triton.next_power_of_2(2 * dstate) if selective._BWD_ROWS_TILE_SUMS else 0}


def _linear_sizes(batch: int) -> dict[str, int]:
    """Integer arguments and block constexprs of the linear-scan kernels (as in ``_LinearScanFn``)."""
    return {"seqlen": SEQLEN, "dim": DIM, "n_tiles": triton.cdiv(SEQLEN, linear._BLOCK_T),
            "BLOCK_T": linear._BLOCK_T, "BLOCK_D": linear._block_d(batch, DIM)}


def _step_sizes(dstate: int) -> dict[str, int]:
    """Integer arguments and block constexprs of the state-update kernel (as in ``selective_state_update_triton``)."""
    return {"dim": DIM, "groups": GROUPS, "dim_per_group": DIM // GROUPS, "dstate": dstate,
            "BLOCK_D": min(step._block_d(dstate), triton.next_power_of_2(DIM)),
            "BLOCK_N": triton.next_power_of_2(dstate)}


@dataclass(frozen=True)
class KernelSpec:
    """One Triton kernel and how to sweep it.

    Attributes:
        name: label in the report.
        fn: the ``@triton.jit`` function.
        io_ptrs: pointer arguments in the I/O dtype; ``len_ptr`` is int64, every other pointer float32.
        flag_groups: constexpr flags; the flags of one group are switched together, groups over all combinations.
        axis: name of the swept quantity ("N" or "batch") and its values.
        sizes: axis value -> integer arguments and non-flag constexprs.
        num_warps: warps per program, as the backend launches it.
    """

    name: str
    fn: JITFunction
    io_ptrs: frozenset[str]
    flag_groups: tuple[tuple[str, ...], ...]
    axis: tuple[str, tuple[int, ...]]
    sizes: Callable[[int], dict[str, int]]
    num_warps: int = NUM_WARPS


_SEL_FWD_IO = frozenset({"u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr"})
_LIN_IO = frozenset({"a_ptr", "b_ptr", "h_ptr", "dh_ptr", "da_ptr", "db_ptr"})
SPECS = (
    KernelSpec("selective_scan._fwd_kernel", selective._fwd_kernel, _SEL_FWD_IO,
               (GATES, ("HAS_INIT",), ("HAS_LENGTHS",), ("REVERSE",)), ("N", DSTATES),
               functools.partial(_selective_sizes, unroll=selective._UNROLL_FWD,
                                 tile_values=selective._TILE_VALUES_FWD), num_warps=selective._NUM_WARPS_FWD),
    KernelSpec("selective_scan._fwd_rows_kernel", selective._fwd_rows_kernel, _SEL_FWD_IO,
               (GATES, ("HAS_INIT",), ("HAS_LENGTHS",), ("REVERSE",)), ("N", (1, 4, 16, 32)), _rows_sizes,
               num_warps=selective._ROWS_NUM_WARPS),
    KernelSpec("selective_scan._bwd_kernel", selective._bwd_kernel,
               _SEL_FWD_IO - {"y_ptr"} | {"dy_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"},
               (GATES, ("HAS_DFINAL",), ("HAS_LENGTHS",), ("REVERSE",)), ("N", DSTATES),
               functools.partial(_selective_sizes, unroll=selective._UNROLL_BWD,
                                 tile_values=selective._TILE_VALUES_BWD), num_warps=selective._NUM_WARPS_BWD),
    KernelSpec("selective_scan._bwd_rows_kernel", selective._bwd_rows_kernel,
               _SEL_FWD_IO - {"y_ptr"} | {"dy_ptr", "du_ptr", "ddelta_ptr", "dz_ptr"},
               (GATES, ("HAS_DFINAL",), ("HAS_LENGTHS",), ("REVERSE",)), ("N", (1, 4, 16, 32)), _bwd_rows_sizes,
               num_warps=selective._BWD_ROWS_NUM_WARPS),
    KernelSpec("linear_scan._fwd_kernel", linear._fwd_kernel, _LIN_IO,
               (("HAS_INIT",), ("HAS_LENGTHS",), ("REVERSE",)), ("batch", LINEAR_BATCHES), _linear_sizes,
               num_warps=linear._NUM_WARPS),
    KernelSpec("linear_scan._bwd_kernel", linear._bwd_kernel, _LIN_IO,
               (("HAS_DFINAL",), ("HAS_LENGTHS",), ("REVERSE",)), ("batch", LINEAR_BATCHES), _linear_sizes,
               num_warps=linear._NUM_WARPS),
    KernelSpec("_step_triton._state_update_kernel", step._state_update_kernel,
               frozenset({"x_ptr", "dt_ptr", "B_ptr", "C_ptr", "z_ptr", "y_ptr"}), (GATES,), ("N", DSTATES),
               _step_sizes),
)


def _cases(dtypes: list[str]) -> list[tuple[int, str, int, dict[str, bool]]]:
    """Every (spec index, dtype, axis value, flags) to compile."""
    cases = []
    for (i, spec), dtype in itertools.product(enumerate(SPECS), dtypes):
        switches = list(itertools.product((True, False), repeat=len(spec.flag_groups)))
        for value, on_off in itertools.product(spec.axis[1], switches):
            flags = {flag: on for group, on in zip(spec.flag_groups, on_off) for flag in group}
            cases.append((i, dtype, value, flags))
    return cases


def _resource_usage(cubin: bytes) -> dict[str, int]:
    """RESOURCES of the (single) function in a cubin: ``cuobjdump --dump-resource-usage``, STL / LDL in ``-sass``."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "kernel.cubin")
        path.write_bytes(cubin)
        out = subprocess.run([knobs.nvidia.cuobjdump.path, "--dump-resource-usage", "-sass", str(path)],
                             capture_output=True, text=True, check=True).stdout
    usage = re.search(r"Function \w+:\n(.*)", out.split("Resource usage:", 1)[1]).group(1)
    found = {**dict(re.findall(r"\b([A-Z]+):(\d+)", usage)), "STL_LDL": len(re.findall(r"\b(?:STL|LDL)\b", out))}
    return {key: int(found[key]) for key in RESOURCES}


def _spills(row: dict) -> bool:
    """Whether a compiled configuration uses local memory (register spills): STACK, LOCAL or STL_LDL nonzero."""
    return row["STACK"] > 0 or row["LOCAL"] > 0 or row["STL_LDL"] > 0


def compile_case(case: tuple[int, str, int, dict[str, bool]], keep_cubin: bool = False) -> dict:
    """Compile one kernel configuration for sm_90 and measure its resource usage.

    Args:
        case: (index into SPECS, dtype name, axis value, constexpr flags).
        keep_cubin: also return the compiled binary (``row["cubin"]``, bytes).

    Returns:
        The report row: kernel, dtype, axis, block sizes, flags and either the resource usage or the error.
    """
    index, dtype, value, flags = case
    spec = SPECS[index]
    sizes = spec.sizes(value)
    backend = make_backend(TARGET)
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(spec.fn.params):
        name = param.name
        if name == "ELEM":  # the rows forward's B / C element code
            arg = {"fp32": 0, "bf16": 1, "fp16": 2}[dtype]
        elif name in flags or name in sizes:
            arg = flags.get(name, sizes.get(name))
        else:  # a pointer: a meta tensor carries the dtype and (address 0) the 16-byte alignment
            arg_dtype = DTYPES[dtype] if name in spec.io_ptrs else torch.int64 if name == "len_ptr" else torch.float32
            arg = torch.empty(0, device="meta", dtype=arg_dtype)
        if param.is_constexpr:
            kind, attr = "constexpr", None
        else:  # as at a launch: ints equal to 1 become constexprs, multiples of 16 (and pointers) get divisibility
            kind, attr = native_specialize_impl(backend, arg, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[(i,)] = arg
        elif isinstance(attr, str):
            attrs[(i,)] = backend.parse_attr(attr)
    row = {"kernel": spec.name, "dtype": dtype, spec.axis[0]: value,
           "blocks": {k: v for k, v in sizes.items() if k.isupper()}, "flags": flags}
    try:
        kernel = triton.compile(ASTSource(spec.fn, signature, constexprs, attrs), target=TARGET,
                                options={"num_warps": spec.num_warps})
        row.update(_resource_usage(kernel.asm["cubin"]))
        if keep_cubin:
            row["cubin"] = kernel.asm["cubin"]
    except Exception as exc:  # any failure is a result to report, not a crash
        row["error"] = f"{type(exc).__name__}: {exc}".strip()
    return row


def _describe(row: dict) -> str:
    """One-line summary of a row: case, then resources or error."""
    axis = f"N={row['N']}" if "N" in row else f"batch={row['batch']}"
    on = " ".join(k.removeprefix("HAS_") for k, v in row["flags"].items() if v) or "-"
    blocks = " ".join(f"{k}={v}" for k, v in row["blocks"].items())
    usage = row["error"].splitlines()[-1] if "error" in row else " ".join(f"{k}:{row[k]}" for k in RESOURCES)
    return f"{row['kernel']} | {row['dtype']} | {axis} | {blocks} | {on} | {usage}"


def _markdown(report: dict) -> str:
    """Markdown page: provenance, per-kernel summary, then one line per compiled configuration."""
    lines = [f"# Triton AOT compile for sm_90 (H100), triton {report['triton']}", "",
             f"- date: {report['date']}", f"- command: `{report['command']}`",
             f"- geometry: {report['geometry']}, num_warps as each backend launches its kernel; flags listed are on, "
             "the others off",
             f"- {report['compiled']} / {report['cases']} compiled, {report['failed']} failed, "
             f"{report['spilled']} with spills (STACK, LOCAL or STL_LDL > 0), max REG {report['max_reg']}, "
             f"{report['elapsed_s']} s", "",
             "| kernel | dtype | configs | " + " | ".join(f"max {k}" for k in RESOURCES) + " | failed | spilled |",
             "|---" * (len(RESOURCES) + 5) + "|"]
    for s in report["summary"]:
        maxima = " | ".join(str(s[f"max_{k}"]) for k in RESOURCES)
        lines.append(f"| {s['kernel']} | {s['dtype']} | {s['configs']} | {maxima} | {s['failed']} | {s['spilled']} |")
    lines += ["", f"| kernel | dtype | case | blocks | flags on | {' / '.join(RESOURCES)} |", "|---" * 6 + "|"]
    lines += [f"| {_describe(row)} |" for row in report["rows"]]
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile creates 0600
    os.replace(tmp.name, path)


def main(argv: list[str] | None = None) -> int:
    """Compile every case, write ``<out>.json`` / ``<out>.md``, return 1 on any failure or spill, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"], help="I/O dtypes")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/triton-compile-sm90"),
                        help="output stem: writes <out>.json and <out>.md")
    parser.add_argument("--jobs", type=int, default=1, help="parallel compile processes")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    cases = _cases(args.dtype)
    rows = []
    with ProcessPoolExecutor(args.jobs) if args.jobs > 1 else contextlib.nullcontext() as pool:
        for row in (pool.map if pool else map)(compile_case, cases):
            rows.append(row)
            print(f"[{len(rows)}/{len(cases)}] {_describe(row)}", flush=True)
    ok = [row for row in rows if "error" not in row]
    summary = []
    for (kernel, dtype), group in itertools.groupby(rows, key=lambda row: (row["kernel"], row["dtype"])):
        group = list(group)
        good = [row for row in group if "error" not in row]
        summary.append({"kernel": kernel, "dtype": dtype, "configs": len(group), "failed": len(group) - len(good),
                        "spilled": sum(map(_spills, good)),
                        **{f"max_{k}": max((row[k] for row in good), default=None) for k in RESOURCES}})
    report = {
        "triton": triton.__version__, "target": "cuda sm_90, warp 32",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.orig_argv),
        "geometry": f"DIM={DIM}, GROUPS={GROUPS}, SEQLEN={SEQLEN}, N in {list(DSTATES)}, "
                    f"linear batch in {list(LINEAR_BATCHES)}",
        "cases": len(rows), "compiled": len(ok), "failed": len(rows) - len(ok),
        "spilled": sum(map(_spills, ok)), "max_reg": max((row["REG"] for row in ok), default=None),
        "elapsed_s": round(time.perf_counter() - start, 1), "summary": summary, "rows": rows,
    }
    _write_atomic(Path(f"{args.out}.json"), json.dumps(report, indent=1) + "\n")
    _write_atomic(Path(f"{args.out}.md"), _markdown(report))
    print(f"{report['compiled']}/{report['cases']} compiled, {report['failed']} failed, {report['spilled']} spilled, "
          f"max REG {report['max_reg']}, {report['elapsed_s']} s -> {args.out}.json / .md")
    return int(report["failed"] > 0 or report["spilled"] > 0)


if __name__ == "__main__":
    sys.exit(main())
