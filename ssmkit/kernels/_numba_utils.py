"""Numba helpers shared by the fused CPU kernels: a vectorizable float32 exp, softplus, sigmoid, tiling, conversion.

Why a hand-written exp: without Intel SVML (``numba -s`` reports ``SVML False`` on most pip installs) a call to
``math.exp`` inside a loop stays a scalar libm call and the loop does not vectorize. ``fast_exp`` only uses
multiply-add, a float->int conversion and an int->float bit cast, which LLVM turns into SIMD code:

    exp(x) = 2^k * exp(r),   k = round(x / ln 2),   r = x - k ln 2 in [-ln2/2, ln2/2]
    exp(r) ~ Taylor polynomial of degree 7 (truncation error < 1e-8 relative on that interval)
    2^k    = float32 whose bits are (k + 127) << 23 (built in float arithmetic, then bit cast)

Arguments are clamped to [-87.3, 88] (the normal float32 range); below -87.3 the result is exactly 0.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["fast_exp", "log1p_unit", "softplus", "softplus_grad", "sigmoid", "tile_width", "to_f32", "JIT_OPTIONS"]

# Options of every kernel: on-disk cache (compile once per machine), fastmath (FMA contraction, reassociation of
# the small per-tile reductions), parallel prange over (batch, channel-tile) tasks, released GIL, and numpy error
# semantics (a float division never raises, so loops with divisions vectorize).
JIT_OPTIONS = dict(cache=True, fastmath=True, parallel=True, nogil=True, error_model="numpy")
_HELPER_OPTIONS = dict(cache=True, fastmath=True, inline="always", error_model="numpy")
# No reassociation inside exp: it would fold the two-part ln 2 of the Cody-Waite reduction into one float32 constant
# and cost up to 3 ulp near the ends of the range. LLVM still inlines and vectorizes the call.
_EXP_OPTIONS = dict(cache=True, fastmath={"nnan", "ninf", "nsz", "contract", "arcp", "afn"}, error_model="numpy")

_LOG2E = np.float32(1.0 / math.log(2.0))
_LN2_HI = np.float32(0.693145751953125)  # ln 2 split in a high part with few mantissa bits ...
_LN2_LO = np.float32(math.log(2.0) - 0.693145751953125)  # ... and the remainder (Cody-Waite reduction)
_X_MIN = np.float32(-87.3)
_X_ZERO = np.float32(-87.3)
_X_MAX = np.float32(88.0)
_ROUND_SHIFT = np.float32(127.5)  # k = trunc(x / ln2 + 127.5) - 127 rounds to nearest for x / ln2 > -127.5
_F127 = np.float32(127.0)
_MANT = np.float32(8388608.0)  # 2^23
_BIAS_BITS = np.float32(127.0 * 8388608.0)
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_C2 = np.float32(1.0 / 2.0)
_C3 = np.float32(1.0 / 6.0)
_C4 = np.float32(1.0 / 24.0)
_C5 = np.float32(1.0 / 120.0)
_C6 = np.float32(1.0 / 720.0)
_C7 = np.float32(1.0 / 5040.0)
_SOFTPLUS_THRESHOLD = np.float32(20.0)
_TWO = np.float32(2.0)
_SQRT2 = np.float32(math.sqrt(2.0))
_LN2 = np.float32(math.log(2.0))
_C3_ODD = np.float32(1.0 / 3.0)
_C5_ODD = np.float32(1.0 / 5.0)
_C7_ODD = np.float32(1.0 / 7.0)
_C9 = np.float32(1.0 / 9.0)


@intrinsic
def _bits_to_float32(typingctx, bits):
    """Reinterpret the bits of an int32 as a float32 (an LLVM ``bitcast``, free and vectorizable)."""
    if bits != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@numba.njit(**_EXP_OPTIONS)
def fast_exp(x):
    """exp(x) for a float32 ``x`` in float32, about 1 ulp accurate on [-87.3, 88], 0 below -87.3."""
    xc = x if x > _X_MIN else _X_MIN
    xc = xc if xc < _X_MAX else _X_MAX
    k = np.float32(np.int32(xc * _LOG2E + _ROUND_SHIFT)) - _F127  # float arithmetic keeps 32-bit SIMD lanes
    r = xc - k * _LN2_HI
    r = r - k * _LN2_LO
    p = _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + _ONE
    p = p * r + _ONE
    scale = _bits_to_float32(np.int32(k * _MANT + _BIAS_BITS))
    out = p * scale
    return out if x > _X_ZERO else _ZERO


@numba.njit(**_EXP_OPTIONS)
def log1p_unit(w):
    """log(1 + w) for a float32 ``w`` in [0, 1], vectorizable, a few ulp accurate.

    v = 1 + w lies in [1, 2]; with v = 2^k f (k in {0, 1}, f in [0.71, 1.42]) and s = (f - 1) / (f + 1),
    log f = 2 atanh(s) = 2 (s + s^3/3 + ... + s^9/9) (|s| <= 0.172, truncation < 1e-9 relative). The rounding of
    1 + w is undone with log1p(w) = log(v) * w / (v - 1) (exact w when v rounds to 1).
    """
    v = _ONE + w
    big = v > _SQRT2
    f = v * _C2 if big else v
    k = _ONE if big else _ZERO
    s = (f - _ONE) / (f + _ONE)
    s2 = s * s
    p = _C9
    p = p * s2 + _C7_ODD
    p = p * s2 + _C5_ODD
    p = p * s2 + _C3_ODD
    p = p * s2 + _ONE
    logv = k * _LN2 + _TWO * s * p
    dv = v - _ONE
    return logv * (w / dv) if dv > _ZERO else w


@numba.njit(**_HELPER_OPTIONS)
def sigmoid(x):
    """Logistic sigmoid of a float32, vectorizable (uses ``fast_exp``)."""
    return _ONE / (_ONE + fast_exp(-x))


@numba.njit(**_HELPER_OPTIONS)
def softplus(x):
    """softplus with threshold 20 (x > 20 -> x, else log1p(exp(x))), as torch and the mamba_ssm kernels.

    Computed as max(x, 0) + log1p(exp(-|x|)) so that the log1p argument is in [0, 1]; vectorizable.
    """
    ax = x if x > _ZERO else -x
    pos = x if x > _ZERO else _ZERO
    out = pos + log1p_unit(fast_exp(-ax))
    return x if x > _SOFTPLUS_THRESHOLD else out


@numba.njit(**_HELPER_OPTIONS)
def softplus_grad(x):
    """Derivative of ``softplus``: sigmoid(x), and 1 above the threshold."""
    return _ONE if x > _SOFTPLUS_THRESHOLD else sigmoid(x)


def tile_width(channels: int, limit: int) -> int:
    """Largest divisor of ``channels`` that is at most ``limit`` (the channel tile of one prange task)."""
    for width in range(min(channels, limit), 0, -1):
        if channels % width == 0:
            return width
    return 1


def to_f32(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (or copy) of a CPU tensor, detached from autograd."""
    return t.detach().to(torch.float32).contiguous().numpy()
