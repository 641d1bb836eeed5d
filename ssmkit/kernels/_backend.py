"""Backend resolution for the scan ops: ``auto`` | ``triton`` | ``cpu`` | ``torch`` | ``naive``.

The choice comes from the ``backend=`` argument, else from the ``SSMKIT_BACKEND`` environment variable, else from
the device (``auto``: ``triton`` for CUDA tensors, ``cpu`` for CPU tensors). It is logged once per (op, backend,
device type) and never changes silently: a backend that cannot run on the given tensors raises.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "triton", "cpu", "torch", "naive")
ENV_VAR = "SSMKIT_BACKEND"

logger = logging.getLogger("ssmkit.kernels")
_logged: set[tuple[str, str, str]] = set()
_modules: dict[str, ModuleType] = {}


def triton_interpret() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(op: str, backend: str, device: torch.device) -> str:
    """Return the concrete backend for ``op`` on ``device``.

    Args:
        op: name of the op, for the log line and error messages.
        backend: the ``backend=`` argument of the op.
        device: device of the input tensors.

    Raises:
        ValueError: unknown backend name, or a backend that cannot run on ``device``.
    """
    source = "backend="
    if backend == "auto" and os.environ.get(ENV_VAR):
        backend, source = os.environ[ENV_VAR].strip().lower(), ENV_VAR
    if backend not in BACKENDS:
        raise ValueError(f"{op}: {source} must be one of {BACKENDS}, found {backend!r}")
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "cpu" if device.type == "cpu" else "torch"
    if backend == "triton" and device.type != "cuda" and not (device.type == "cpu" and triton_interpret()):
        raise ValueError(
            f"{op}: backend 'triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1), found device "
            f"{device}; use backend='cpu' or 'torch' for CPU tensors"
        )
    if backend == "cpu" and device.type != "cpu":
        raise ValueError(f"{op}: backend 'cpu' needs CPU tensors, found device {device}; use 'triton' or 'torch'")
    key = (op, backend, device.type)
    if key not in _logged:
        _logged.add(key)
        logger.info("ssmkit: %s uses backend %r for %s tensors (%s)", op, backend, device.type, source)
    return backend


def backend_module(package: str, module: str) -> ModuleType:
    """The backend module ``package.module`` (e.g. ``ssmkit.kernels.linear_scan.cpu``), imported on first use so that
    numba and triton load only when asked for, then cached: later calls import nothing, so that ``torch.compile``
    (which does not trace ``importlib``) does not break the graph at every call."""
    name = f"{package}.{module}"
    loaded = _modules.get(name)
    if loaded is None:
        loaded = _modules[name] = importlib.import_module(name)
    return loaded
