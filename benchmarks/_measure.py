"""Timing and peak-memory helpers shared by the benchmarks (CPU: RSS sampling; CUDA: the allocator's peak)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable

import torch


def device_name(device: str) -> str:
    """A short name for results files and tables, e.g. 'cpu-AMD-EPYC-7B13' or 'cuda-NVIDIA-H100'."""
    if device == "cuda":
        return "cuda-" + torch.cuda.get_device_name().replace(" ", "-")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "cpu-" + "-".join(cpu.split())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakRSS:
    """Peak resident memory above the level at entry (CPU only, Linux).

    Exact, not sampled: entering resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) and exiting
    reads it back (``VmHWM``). Run with ``MALLOC_MMAP_THRESHOLD_`` fixed so freed tensors leave RSS.
    """

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base = _rss_bytes()
        return self

    def __exit__(self, *exc):
        self.peak = max(_status_kib("VmHWM") * 1024, _rss_bytes())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(fn: Callable[[], object], device: str, repeats: int = 5, budget_s: float = 2.0) -> tuple[float, float]:
    """Median time (ms) over up to ``repeats`` calls after one warm-up, and peak memory (MiB) of one call."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()
    sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        sync()
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        with PeakRSS() as rss:
            fn()
        peak_mb = rss.delta_mb
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return statistics.median(times) * 1e3, peak_mb


def gpu_ceilings(copy_gib: float = 2.0) -> dict:
    """The two GPU ceilings of reference/kernels.md section 4, read off the device in use.

    ``copy_tbps``: a device-to-device copy of ``copy_gib`` GiB (median of ``triton.testing.do_bench``), counting bytes
    read plus bytes written. ``exp_per_s``: 16 ``ex2`` per clock per SM (the special-function unit's rate on sm_80 /
    sm_90) times the SM count times the maximal SM clock that NVML reports (1.98 GHz when NVML is absent).
    """
    import triton.testing

    n = int(copy_gib * 2**30) // 2
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    copy_tbps = 2 * src.numel() * src.element_size() / (ms / 1e3) / 1e12
    clock_hz, clock_source = 1.98e9, "assumed 1.98 GHz"
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        clock_hz = pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM) * 1e6
        clock_source = "NVML max SM clock"
    except Exception as err:  # NVML is optional: keep the assumed clock, say so
        clock_source += f" (NVML: {err})"
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return dict(copy_tbps=round(copy_tbps, 3), copy_ms=round(ms, 4), sms=sms, sm_clock_hz=clock_hz,
                clock_source=clock_source, exp_per_s=16 * sms * clock_hz)
