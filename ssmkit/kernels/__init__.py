"""Functional scan ops: tensors in, tensors out. Imports only torch (triton and numba lazily, inside backends)."""

from ._backend import BACKENDS, resolve_backend
from .linear_scan import linear_scan
from .scan2d import scan2d
from .selective_scan import selective_scan
from .step import selective_state_update

__all__ = ["BACKENDS", "linear_scan", "resolve_backend", "scan2d", "selective_scan", "selective_state_update"]
