"""GPU targets of the scan kernels, measured against the device's own ceilings (reference/kernels.md section 4).

Sections (each one's rows are printed as they come and written to ``<out>.json`` / ``<out>.md`` at the end):

* ``ceilings``: measured device-to-device copy bandwidth (bytes read + written) and the exp rate (16 ex2 / clock / SM).
* ``selective``: ``selective_scan`` at B=8, L=4096, D=1536, N=16 (with z, D, delta_bias, softplus), bf16 and fp32,
  forward and forward+backward, triton and torch: time, achieved bytes/s and the fraction of max(byte floor, exp
  floor). Target: triton bf16 forward >= 60 %.
* ``linear``: ``linear_scan`` at B=8, D=1536, L from 4K to 64K, bf16 and fp32: forward and forward+backward against
  the copy bandwidth (target >= 70 %, no cliff), and flash-linear-attention's ``chunk_hgrn`` on the same problem
  (``h_t = exp(g_t) h_{t-1} + x_t`` with g = log a) when ``fla`` is importable.
* ``sel_variants``: settings of the selective scan (module constants of ``selective_scan/triton.py``). Forward: tile
  or rows kernel, prefetch depth, lanes per channel, warps, each checked against the torch backend and timed.
  Backward, with the fastest correct forward: tile kernel (optionally capped tiles per group) or rows kernel
  (channels per program, warps, programs per SM), gradients checked against the tile backward, forward+backward time
  and peak memory. The fastest correct pair is the row "chosen settings", also timed at other shapes.
* ``lin_variants``: tile shapes / warps of the linear scan, checked against the default output and timed.
  The variant sections choose the defaults from measurements.

Times are medians of ``triton.testing.do_bench`` (CUDA events, warm-up first). Usage on a GPU machine::

    python benchmarks/gpu_kernels.py --out benchmarks/results/kernels-gpu-targets-<device>
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import device_name, gpu_ceilings  # noqa: E402
from kernels import floors, selective_case, selective_inputs  # noqa: E402

from ssmkit.core.io import write_text_atomic  # noqa: E402
from ssmkit.kernels import linear_scan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET = dict(B=8, L=4096, D=1536, N=16)
DEVICE = "cuda"
LINEAR_LENGTHS = (4096, 8192, 16384, 32768, 65536)


def bench_ms(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def selective_runner(backend, dtype, mode, shape=TARGET):
    return selective_case(backend, shape, dtype, DEVICE, mode)


def section_selective(ceilings, backends=("triton", "torch")):
    rows = []
    for dtype in (torch.bfloat16, torch.float32):
        for backend in backends:
            for mode in ("fwd", "fwd+bwd"):
                ms = bench_ms(selective_runner(backend, dtype, mode))
                nbytes, t_mem, t_exp = floors("selective_scan", TARGET, dtype, mode, ceilings)
                floor_ms = max(t_mem, t_exp) * 1e3
                rows.append(dict(op="selective_scan", backend=backend, dtype=str(dtype)[6:], mode=mode, **TARGET,
                                 ms=round(ms, 4), tbps=round(nbytes / ms / 1e9, 3), byte_floor_ms=round(t_mem * 1e3, 4),
                                 exp_floor_ms=round(t_exp * 1e3, 4), fraction_of_floor=round(floor_ms / ms, 3)))
                print(rows[-1], flush=True)
                torch.cuda.empty_cache()
    return rows


def linear_runner(impl, dtype, mode, B, L, D):
    g = torch.Generator(device="cuda").manual_seed(0)
    a = (torch.rand(B, L, D, generator=g, device="cuda") * 0.5 + 0.5).to(dtype)  # [B, L, D] decays in (0.5, 1)
    b = torch.randn(B, L, D, generator=g, device="cuda").to(dtype)  # [B, L, D]
    if impl == "fla_chunk_hgrn":
        from fla.ops.hgrn import chunk_hgrn

        first = a.float().log().to(dtype)  # g = log a, fla's log-space gate

        def call(x, gate):
            return chunk_hgrn(x, gate, output_final_state=True)[0]
        args = [b, first]
    else:
        def call(x, y):
            return linear_scan(x, y, backend=impl)
        args = [a, b]
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return call(*args)
        return run
    args = [t.requires_grad_(True) for t in args]
    gh = torch.randn(B, L, D, generator=g, device="cuda").to(dtype)

    def run():
        for t in args:
            t.grad = None
        call(*args).backward(gh)
    return run


def section_linear(ceilings, lengths=LINEAR_LENGTHS, impls=("triton", "fla_chunk_hgrn")):
    rows = []
    B, D = 8, 1536
    for dtype in (torch.bfloat16, torch.float32):
        for L in lengths:
            for impl in impls:
                for mode in ("fwd", "fwd+bwd"):
                    try:
                        ms = bench_ms(linear_runner(impl, dtype, mode, B, L, D))
                    except Exception as err:  # fla absent or failing: say so in the row, go on
                        rows.append(dict(op="linear_scan", impl=impl, dtype=str(dtype)[6:], mode=mode, B=B, L=L, D=D,
                                         error=f"{type(err).__name__}: {err}"[:300]))
                        print(rows[-1], flush=True)
                        continue
                    nbytes = floors("linear_scan", dict(B=B, L=L, D=D), dtype, mode, ceilings)[0]
                    tbps = nbytes / ms / 1e9
                    rows.append(dict(op="linear_scan", impl=impl, dtype=str(dtype)[6:], mode=mode, B=B, L=L, D=D,
                                     ms=round(ms, 4), tbps=round(tbps, 3),
                                     fraction_of_copy=round(tbps / ceilings["copy_tbps"], 3)))
                    print(rows[-1], flush=True)
                    torch.cuda.empty_cache()
    return rows


@contextlib.contextmanager
def patched(module, **values):
    old = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(module, k, v)


def _rel(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return float((ref - out).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30))


SEL_FWD_VARIANTS = (  # module settings of selective_scan/triton.py for the forward; "tile" = the [BLOCK_D, BLOCK_N]
    # kernel with the defaults of call 3 (128 values, 1 warp, U = 4); "rows" = one channel per thread, N in registers
    # (PREFETCH 2 / 3 / 5 / 8, unpacked B/C and 2 warps were measured in the second device session: slower than 4)
    dict(_FWD_KIND="tile"),
    *(dict(_FWD_KIND="rows", _ROWS_LANES=1, _ROWS_PREFETCH=p) for p in (4, 6)),
    *(dict(_FWD_KIND="rows", _ROWS_LANES=lanes, _ROWS_PREFETCH=p) for lanes in (2, 4) for p in (4, 8)),
    dict(_FWD_KIND="rows", _ROWS_LANES=2, _ROWS_NUM_WARPS=2, _ROWS_PREFETCH=8),
)
SEL_BWD_VARIANTS = (  # backward settings: the tile kernel (192 tiles of 8 channels at D=1536, or capped at 24 tiles
    # per group) and the rows kernel (channels per program, dB / dC sums from a scratch tile, programs per SM)
    dict(_BWD_KIND="tile"), dict(_BWD_KIND="tile", _BWD_MAX_TILES=24),
    dict(_BWD_KIND="rows"), dict(_BWD_KIND="rows", _BWD_ROWS_BLOCK_D=64), dict(_BWD_KIND="rows", _BWD_ROWS_PER_SM=32),
    dict(_BWD_KIND="rows", _BWD_ROWS_TILE_SUMS=True), dict(_BWD_KIND="rows", _BWD_ROWS_TILE_SUMS=True,
                                                          _BWD_ROWS_BLOCK_D=64),
)
SEL_OTHER_SHAPES = (  # the chosen settings against the defaults at other shapes (grid corner, time series, Mamba4Rec)
    dict(B=2, L=256, D=256, N=16), dict(B=32, L=16, D=64, N=16), dict(B=2048, L=200, D=128, N=32))
SEL_MAX_REL_ERR = 2e-2  # a forward variant further than this from the torch backend (bf16) is never chosen
LINEAR_VARIANTS = (  # (steps per tile, channels per program, warps); the second session's sweep chose (64, 32, 4)
    (64, 32, 4), (64, 64, 4), (64, 64, 8), (128, 64, 4), (32, 64, 4))


def _selective_grads(cfg: dict, shape=TARGET, dtype=torch.bfloat16) -> dict:
    """Gradients of every input of the benchmark's selective scan (fixed inputs and dy) under settings ``cfg``."""
    from ssmkit.kernels import selective_scan
    from ssmkit.kernels.selective_scan import triton as sel

    torch.manual_seed(0)
    x = selective_inputs(**shape, dtype=dtype, device=DEVICE, grad=True)
    gy = torch.randn(shape["B"], shape["L"], shape["D"], device=DEVICE, dtype=dtype)
    with patched(sel, **cfg):
        selective_scan(**x, delta_softplus=True, backend="triton").backward(gy)
    return {name: t.grad.float() for name, t in x.items()}


PARTIAL = []  # every variant row so far, written to PARTIAL_PATH as it comes (a cut section keeps its rows)
PARTIAL_PATH: Path | None = None


def _record(row: dict) -> None:
    PARTIAL.append(row)
    print(row, flush=True)
    if PARTIAL_PATH is not None:
        write_text_atomic(PARTIAL_PATH, json.dumps(PARTIAL, indent=1))


def _timed(rows: list, label: dict, fn) -> None:
    """Append ``label`` + the result of ``fn()`` (a dict) or its error to ``rows``, and record it."""
    try:
        rows.append(dict(label, **fn()))
    except Exception as exc:
        rows.append(dict(label, error=repr(exc)[:300]))
    _record(rows[-1])


def section_sel_variants():
    """Selective-scan settings (bf16, target shape): the forward variants against the torch backend, then the
    backward variants (with the fastest correct forward) against the default backward's gradients; the fastest
    correct pair is the row "chosen settings" (benchmarks/gpu_session.sh tests it and runs the recsys step with it).
    """
    from ssmkit.kernels.selective_scan import triton as sel

    rows = []
    dtype = torch.bfloat16
    ref_fwd = selective_runner("torch", dtype, "fwd")().float()

    def forward(cfg):
        with patched(sel, **cfg):
            run = selective_runner("triton", dtype, "fwd")
            return dict(rel_err_vs_torch=_rel(ref_fwd, run().float()), ms=round(bench_ms(run), 4))

    for cfg in SEL_FWD_VARIANTS:
        _timed(rows, dict(kernel="selective fwd", **cfg), lambda cfg=cfg: forward(cfg))
    timed = [r for r in rows if "ms" in r and r["_FWD_KIND"] == "rows" and r["rel_err_vs_torch"] <= SEL_MAX_REL_ERR]
    best = min(timed, key=lambda r: r["ms"]) if timed else dict(_FWD_KIND="rows")
    fwd_cfg = {k: v for k, v in best.items() if k.startswith("_")}  # the fastest correct rows forward
    ref_grads = _selective_grads(fwd_cfg)  # the default (tile) backward

    def backward(cfg):
        grads = _selective_grads({**fwd_cfg, **cfg})
        err = max(_rel(ref_grads[name], grads[name]) for name in ref_grads)
        del grads
        with patched(sel, **fwd_cfg, **cfg):
            run = selective_runner("triton", dtype, "fwd+bwd")
            torch.cuda.reset_peak_memory_stats()
            ms = bench_ms(run)
        return dict(max_grad_rel_err_vs_tile=err, ms=round(ms, 4),
                    peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 3))

    bwd_rows = []
    for cfg in SEL_BWD_VARIANTS:
        _timed(bwd_rows, dict(kernel="selective fwd+bwd", **fwd_cfg, **cfg), lambda cfg=cfg: backward(cfg))
        torch.cuda.empty_cache()
    rows += bwd_rows
    ok = [r for r in bwd_rows if "ms" in r and r["max_grad_rel_err_vs_tile"] <= SEL_MAX_REL_ERR]
    best = min(ok, key=lambda r: r["ms"]) if ok else {}
    chosen = {**fwd_cfg, **{k: v for k, v in best.items() if k.startswith("_")}}
    rows.append(dict(kernel="chosen settings", **chosen))
    _record(rows[-1])
    for shape in SEL_OTHER_SHAPES:  # the chosen settings against the defaults elsewhere
        for cfg in ({}, chosen):
            def run_shape(cfg=cfg, shape=shape):
                with patched(sel, **cfg):
                    return dict(ms=round(bench_ms(selective_runner("triton", dtype, "fwd+bwd", shape=shape)), 4))

            _timed(rows, dict(kernel="selective fwd+bwd", shape=shape, **cfg), run_shape)
        torch.cuda.empty_cache()
    return rows


def section_lin_variants():
    """Tile shapes of the linear scan (bf16 and fp32, B=8, L=16384, D=1536), forward and forward+backward."""
    from ssmkit.kernels.linear_scan import triton as lin

    rows = []
    B, L, D = 8, 16384, 1536
    for dtype in (torch.bfloat16, torch.float32):
        ref_h = linear_runner("triton", dtype, "fwd", B, L, D)().float()
        for block_t, block_d, warps in LINEAR_VARIANTS:
            cfg = dict(dtype=str(dtype)[6:], block_t=block_t, block_d=block_d, warps=warps)
            try:
                with patched(lin, _BLOCK_T=block_t, _NUM_WARPS=warps,
                             _block_d=lambda batch, dim, b=block_d: b):
                    run = linear_runner("triton", dtype, "fwd", B, L, D)
                    err = _rel(ref_h, run().float())
                    ms_f = bench_ms(run)
                    ms_fb = bench_ms(linear_runner("triton", dtype, "fwd+bwd", B, L, D))
                rows.append(dict(kernel="linear", **cfg, L=L, fwd_ms=round(ms_f, 4), fwd_bwd_ms=round(ms_fb, 4),
                                 rel_err_vs_default=err))
            except Exception as exc:
                rows.append(dict(kernel="linear", **cfg, error=repr(exc)[:300]))
            print(rows[-1], flush=True)
            torch.cuda.empty_cache()
    return rows


def markdown(result) -> str:
    c = result["ceilings"]
    lines = [f"## Scan kernels on {result['device']} ({result['date']}, torch {result['torch']}, "
             f"triton {result['triton']})", "", f"Command: `{result['command']}`", "",
             f"Measured ceilings: copy {c['copy_tbps']} TB/s (bytes read + written, {c['copy_ms']} ms for "
             f"2 GiB); exp rate {c['exp_per_s']:.3g}/s = 16 x {c['sms']} SMs x {c['sm_clock_hz'] / 1e9:.2f} GHz "
             f"({c['clock_source']}). Times: median of triton.testing.do_bench.", ""]
    sel = [r for r in result.get("selective", []) if "ms" in r]
    if sel:
        lines += ["### selective_scan, B=8 L=4096 D=1536 N=16 (z, D, delta_bias, softplus)", "",
                  "| backend | dtype | mode | ms | TB/s | byte floor ms | exp floor ms | % of max(floors) |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {r['dtype']} | {r['mode']} | {r['ms']} | {r['tbps']} | {r['byte_floor_ms']} | "
                  f"{r['exp_floor_ms']} | {100 * r['fraction_of_floor']:.0f} |" for r in sel]
        lines.append("")
    lin = result.get("linear", [])
    if lin:
        lines += ["### linear_scan vs fla chunk_hgrn, B=8 D=1536", "",
                  "| impl | dtype | mode | L | ms | TB/s | % of copy |", "|---|---|---|---|---|---|---|"]
        for r in lin:
            if "ms" in r:
                lines.append(f"| {r['impl']} | {r['dtype']} | {r['mode']} | {r['L']} | {r['ms']} | {r['tbps']} | "
                             f"{100 * r['fraction_of_copy']:.0f} |")
            else:
                lines.append(f"| {r['impl']} | {r['dtype']} | {r['mode']} | {r['L']} | error: {r['error'][:80]} | | |")
        lines.append("")
    for name in ("sel_variants", "lin_variants"):
        if result.get(name):
            lines += [f"### Variants ({name})", ""] + [f"- {json.dumps(r)}" for r in result[name]] + [""]
    for name, text in result.get("errors", {}).items():
        lines += [f"Section {name} failed: `{text.splitlines()[-1][:200]}`", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", nargs="+", default=["sel_variants", "selective", "lin_variants", "linear"],
                   choices=["sel_variants", "selective", "lin_variants", "linear"])
    p.add_argument("--selective-backends", nargs="+", default=["triton", "torch"])
    p.add_argument("--out", default=None, help="results file stem (default benchmarks/results/kernels-gpu-<device>)")
    args = p.parse_args(argv)
    import triton

    if not torch.cuda.is_available():
        raise SystemExit("gpu_kernels.py needs a CUDA GPU")
    dev = device_name("cuda")
    result = dict(device=dev, date=time.strftime("%Y-%m-%d"), torch=torch.__version__, triton=triton.__version__,
                  command="python benchmarks/gpu_kernels.py " + " ".join(argv or sys.argv[1:]), errors={})
    result["ceilings"] = gpu_ceilings()
    print("ceilings", result["ceilings"], flush=True)
    stem = Path(args.out) if args.out else RESULTS / f"kernels-gpu-{dev}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    global PARTIAL_PATH
    PARTIAL_PATH = stem.with_name(stem.name + ".partial.json")
    sections = dict(selective=lambda: section_selective(result["ceilings"], backends=args.selective_backends),
                    linear=lambda: section_linear(result["ceilings"]), sel_variants=section_sel_variants,
                    lin_variants=section_lin_variants)
    for name in args.sections:
        start = time.perf_counter()
        try:
            result[name] = sections[name]()
        except Exception:  # one section failing must not lose the others' numbers
            result["errors"][name] = traceback.format_exc()
            print(result["errors"][name], flush=True)
        result[f"{name}_wall_s"] = round(time.perf_counter() - start, 1)
        write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=1))
    md = markdown(result)
    write_text_atomic(stem.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
