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
