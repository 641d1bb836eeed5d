"""Numba helpers shared by the fused CPU kernels: a vectorizable float32 exp, softplus, sigmoid, tiling, conversion.

Why a hand-written exp: without Intel SVML (``numba -s`` reports ``SVML False`` on most pip installs) a call to
``math.exp`` inside a loop stays a scalar libm call and the loop does not vectorize. ``fast_exp2(y, k)`` = 2^y uses
only add, multiply-add, min / max and an integer shift, which LLVM turns into SIMD code (13 vector instructions):

    k = round(y) by the magic addition t = y + 1.5 * 2^23 (k sits in the low mantissa bits of t), f = y - k
    2^f ~ 1 + f (c1 + f (c2 + ... + f c5)), a degree-5 minimax fit on [-0.5, 0.5] (max relative error 1.9e-7 in
    float32 arithmetic), 2^k = float32 whose bits are (bits(t) << 23) + (127 << 23) (an LLVM shift and add)

y is clamped to [-127, 127] by min / max (no branch); k = -127 gives the bit pattern 0, so 2^y is exactly 0 for
y < -126.5 and at most 2^127 above. The kernels fold log2(e) into A once; ``fast_exp(x, k)`` = 2^(x log2 e) adds
the error of rounding x log2 e (relative 6e-8 |x|, the conditioning of exp itself).

Constants as runtime values: numba's JIT uses LLVM's large code model, where every constant-pool operand costs a
``movabs`` plus a broadcast, and LLVM rematerializes them inside loops under register pressure (a third of the
instructions of the former exp loop). The exp constants therefore travel as runtime values (``EXP2_CONSTS``, read
once per task by ``exp2_consts`` into a tuple ``k``), which stay in registers or become folded stack operands.
"""

from __future__ import annotations

import math
import threading

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["EXP2_CONSTS", "JIT_OPTIONS", "LOG2E", "exp2_consts", "fast_exp", "fast_exp2", "log1p_unit",
           "match_torch_threads", "sigmoid", "softplus", "softplus_grad", "tile_width", "to_f32"]

# Options of every kernel: on-disk cache (compile once per machine), fastmath (FMA contraction, reassociation of
# the small per-tile reductions), parallel prange over (batch, channel-tile) tasks, released GIL, and numpy error
# semantics (a float division never raises, so loops with divisions vectorize).
JIT_OPTIONS = dict(cache=True, fastmath=True, parallel=True, nogil=True, error_model="numpy")
_HELPER_OPTIONS = dict(cache=True, fastmath=True, inline="always", error_model="numpy")
# No reassociation inside exp: it would fold (y + magic) - magic into y and lose the rounding to an integer.
# LLVM still inlines and vectorizes the call (instruction flags survive inlining into fastmath kernels).
_EXP_OPTIONS = dict(cache=True, fastmath={"nnan", "ninf", "nsz", "contract", "arcp", "afn"}, error_model="numpy")

_LOG2E = np.float32(1.0 / math.log(2.0))
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_THREE = np.float32(3.0)
_SQRT2_M1 = np.float32(math.sqrt(2.0) - 1.0)
_LN2 = np.float32(math.log(2.0))
_C3_ODD = np.float32(1.0 / 3.0)
_C5_ODD = np.float32(1.0 / 5.0)
_C7_ODD = np.float32(1.0 / 7.0)
_C9 = np.float32(1.0 / 9.0)
_SOFTPLUS_THRESHOLD = np.float32(20.0)


@intrinsic
def _pow2_from_magic(typingctx, t):
    """2^k as a float32 from t = k + 1.5 * 2^23 (|k| <= 127): the bits (bits(t) << 23) + (127 << 23), bit-cast."""
    if t != types.float32:
        return None

    def codegen(context, builder, signature, args):
        bits = builder.bitcast(args[0], ir.IntType(32))
        exponent = builder.add(builder.shl(bits, ir.Constant(ir.IntType(32), 23)),
                               ir.Constant(ir.IntType(32), 127 << 23))
        return builder.bitcast(exponent, ir.FloatType())

    return types.float32(types.float32), codegen


LOG2E = 1.0 / math.log(2.0)  # float64; the caller of fast_exp2 multiplies its exponent (e.g. A) by log2(e) once
# fast_exp2 constants: clamp bounds, magic rounding shift (1.5 * 2^23), minimax coefficients c1..c5 of 2^f - 1 = f p(f)
EXP2_CONSTS = np.array([-127.0, 127.0, 12582912.0, 0.6931470036506653, 0.24022242426872253, 0.05550733581185341,
                        0.009671512991189957, 0.0013264729641377926], dtype=np.float32)


@numba.njit(**_HELPER_OPTIONS)
def exp2_consts(consts):
    """The fast_exp2 constants as a tuple of runtime float32 values, read from ``consts`` (= EXP2_CONSTS)."""
    return (consts[0], consts[1], consts[2], consts[3], consts[4], consts[5], consts[6], consts[7])


@numba.njit(**_EXP_OPTIONS)
def fast_exp2(y, k):
    """2^y for a float32 ``y`` (relative error <= 2e-7 on [-126, 127]; 0 below -126.5), ``k`` = exp2_consts(...)."""
    lo, hi, magic, c1, c2, c3, c4, c5 = k
    yc = y if y > lo else lo
    yc = yc if yc < hi else hi
    t = yc + magic  # round(yc) in the low mantissa bits (no reassociation here: t - magic must stay exact)
    f = yc - (t - magic)  # in [-0.5, 0.5]
    p = c5 * f + c4
    p = p * f + c3
    p = p * f + c2
    p = p * f + c1
    scale = _pow2_from_magic(t)  # 2^k
    return scale * (p * f) + scale  # 2^k (1 + f p(f)): no constant 1 to load


@numba.njit(**_EXP_OPTIONS)
def fast_exp(x, k):
    """exp(x) = 2^(x log2 e) for a float32 ``x`` (relative error <= 2e-7 + 6e-8 |x|; 0 below -87.7)."""
    return fast_exp2(x * _LOG2E, k)


@numba.njit(**_EXP_OPTIONS)
def log1p_unit(w):
    """log(1 + w) for a float32 ``w`` in [0, 1], vectorizable, a few ulp accurate.

    log(1 + w) = 2 atanh(s) with s = w / (w + 2) for w <= sqrt(2) - 1, and ln 2 + 2 atanh(s) with
    s = (w - 1) / (w + 3) above (then (1 + w) / 2 = (1 + s) / (1 - s)); |s| <= 0.172, so
    2 atanh(s) = 2 s (1 + s^2/3 + s^4/5 + s^6/7 + s^8/9) truncates below 3e-9 relative. 1 + w is never rounded.
    """
    big = w > _SQRT2_M1
    num = w - _ONE if big else w
    den = w + _THREE if big else w + _TWO
    s = num / den
    s2 = s * s
    p = _C9
    p = p * s2 + _C7_ODD
    p = p * s2 + _C5_ODD
    p = p * s2 + _C3_ODD
    two_s = s + s
    r = two_s * (p * s2) + two_s
    return r + _LN2 if big else r


@numba.njit(**_HELPER_OPTIONS)
def sigmoid(x, k):
    """Logistic sigmoid of a float32 (``k`` = exp2_consts(...)), vectorizable, no cancellation for x < 0."""
    ax = x if x > _ZERO else -x
    e = fast_exp(-ax, k)  # in (0, 1]
    r = _ONE / (_ONE + e)
    return r if x > _ZERO else e * r


@numba.njit(**_HELPER_OPTIONS)
def softplus(x, k):
    """softplus with threshold 20 (x > 20 -> x, else log1p(exp(x))), as torch and the mamba_ssm kernels.

    Computed as max(x, 0) + log1p(exp(-|x|)) so that the log1p argument is in [0, 1]; vectorizable.
    """
    ax = x if x > _ZERO else -x
    pos = x if x > _ZERO else _ZERO
    out = pos + log1p_unit(fast_exp(-ax, k))
    return x if x > _SOFTPLUS_THRESHOLD else out


@numba.njit(**_HELPER_OPTIONS)
def softplus_grad(x, k):
    """Derivative of ``softplus``: sigmoid(x), and 1 above the threshold."""
    return _ONE if x > _SOFTPLUS_THRESHOLD else sigmoid(x, k)


_THREADS_SET: dict[int, int] = {}  # Python thread id -> the numba thread count last set for it


def match_torch_threads() -> None:
    """Run the numba kernels on torch's intra-op thread count (``torch.set_num_threads``), at most NUMBA_NUM_THREADS.

    Without it numba uses every core whatever torch was told, and the two thread pools oversubscribe a machine that
    torch was asked to share. numba's setting is per Python thread, hence the cache key; the kernels' results do not
    depend on the thread count.
    """
    wanted = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    ident = threading.get_ident()
    if _THREADS_SET.get(ident) != wanted:
        numba.set_num_threads(wanted)
        _THREADS_SET[ident] = wanted


def tile_width(channels: int, limit: int) -> int:
    """Largest divisor of ``channels`` that is at most ``limit`` (the channel tile of one prange task)."""
    for width in range(min(channels, limit), 0, -1):
        if channels % width == 0:
            return width
    return 1


def to_f32(t: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (or copy) of a CPU tensor, detached from autograd."""
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    if not t.is_contiguous():
        t = t.contiguous()
    return t.numpy()  # no copy (and no torch op) when the tensor is already float32 and contiguous
