"""Input checks shared by the scan ops: every error names the argument, the expected and the found value."""

from __future__ import annotations

import torch


def check_tensor(name: str, t: torch.Tensor, shape: tuple[int, ...], device: torch.device, op: str) -> None:
    """Check that ``t`` is a floating tensor of ``shape`` on ``device`` (``-1`` in ``shape`` matches anything)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, found {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{op}: {name} must have a floating dtype (float32/float64/bfloat16/float16), found {t.dtype}")
    if t.dim() != len(shape) or any(e != -1 and e != f for e, f in zip(shape, t.shape)):
        expected = "[" + ", ".join("*" if e == -1 else str(e) for e in shape) + "]"
        raise ValueError(f"{op}: {name} must have shape {expected}, found {list(t.shape)}")
    if t.device != device:
        raise ValueError(f"{op}: {name} must be on device {device} (the device of the first input), found {t.device}")


def check_lengths(lengths: torch.Tensor | None, batch: int, seqlen: int, device: torch.device, op: str):
    """Check ``lengths`` [B]: integers in [1, L] on ``device``; returns it as int64 (or None)."""
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor):
        raise TypeError(f"{op}: lengths must be a torch.Tensor of integers, found {type(lengths).__name__}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"{op}: lengths must have an integer dtype, found {lengths.dtype}")
    if lengths.shape != (batch,):
        raise ValueError(f"{op}: lengths must have shape [{batch}], found {list(lengths.shape)}")
    if lengths.device != device:
        raise ValueError(f"{op}: lengths must be on device {device}, found {lengths.device}")
    lo, hi = int(lengths.min()), int(lengths.max())
    if lo < 1 or hi > seqlen:
        raise ValueError(f"{op}: lengths must lie in [1, {seqlen}] (L), found values in [{lo}, {hi}]")
    return lengths.to(torch.int64)
