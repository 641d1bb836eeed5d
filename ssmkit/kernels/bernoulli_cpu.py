"""Bernoulli keep-masks from torch's default CPU generator, the same numbers as ``bernoulli_``, drawn faster.

``torch.empty_like(x).bernoulli_(keep)`` on the CPU (what ``F.dropout`` does in training) runs, per element in
memory order, one Mersenne Twister (MT19937) double: two 32-bit outputs a then b, u = ((a << 32 | b) & (2^53 - 1))
* 2^-53, and writes 1 where u < keep, else 0. Each element costs 4-6 ns there (a serial loop through the
generator's virtual interface). ``bernoulli_keep_`` reads the generator's state (``get_state``), runs the same
twist, tempering and comparison in a vectorized numba kernel, and writes the advanced state back (``set_state``),
so that the mask and every later draw are bit-identical to torch's (``tests/kernels/test_bernoulli_cpu.py``).

The state layout read here is torch's ``CPUGeneratorImplState`` (5056 bytes in torch 2.14 on 64-bit Linux, the
only platform tested; the size and the left / next fields are checked on every call):
    int64 seed | int32 left | int32 seeded | uint64 next | uint64 state[624] (each a 32-bit word) | normal caches
``next`` indexes the next unused word of ``state`` and ``left - 1`` words are unused; ``left == 1`` means a twist
comes first. Any other size makes ``bernoulli_keep_`` return False and draw nothing, so that the caller can use
torch's own path (the same numbers, slower).

Calls of ``bernoulli_keep_`` from several Python threads are serialized by a lock. A draw by torch itself in
another thread while one of these calls runs (between ``get_state`` and ``set_state``) would be overwritten; torch's
own ``bernoulli_`` holds the generator's mutex instead. On a big-endian machine it returns False (the kernel reads
word pairs as little-endian 64-bit integers).
"""

from __future__ import annotations

import sys
import threading

import numba
import numpy as np
import torch

__all__ = ["bernoulli_keep_"]

_N, _M = 624, 397  # MT19937 state words and the twist offset
_STATE_BYTES = 5056
_WORDS = slice(24, 24 + 8 * _N)  # the state[624] field, uint64 per word
_CHUNK = 4096  # mask elements per block of tempered words (32 KiB of words, cache resident)
_BITS_DTYPE = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_ONE_BITS: dict[torch.dtype, int] = {}  # the bit pattern of 1.0 per float dtype, filled on first use
_OPTIONS = dict(cache=True, nogil=True, error_model="numpy")
_LOCK = threading.Lock()


@numba.njit(inline="always")
def _twist_word(u, v):
    """MT19937's twist of a word pair: the high bit of u, the low 31 bits of v, shifted, xor-ed with the matrix."""
    y = (u & np.uint32(0x80000000)) | (v & np.uint32(0x7FFFFFFF))
    return (y >> np.uint32(1)) ^ ((v & np.uint32(1)) * np.uint32(0x9908B0DF))


@numba.njit(**_OPTIONS)
def _twist(mt, old):
    """Regenerate the 624 words of ``mt`` in place (``old``: scratch). Written as three loops over disjoint
    slices (words 0-226 read old words 397-623; 227-453 and 454-622 read the new words 227 places back) so that
    LLVM vectorizes them."""
    for i in range(_N):
        old[i] = mt[i]  # (an explicit loop: numba's slice assignment takes 3x longer than the twist itself)
    step = _N - _M  # 227
    dst, u, v, far = mt[:step], old[:step], old[1:step + 1], old[_M:]
    for i in range(step):
        dst[i] = far[i] ^ _twist_word(u[i], v[i])
    dst, u, v, far = mt[step:2 * step], old[step:2 * step], old[step + 1:2 * step + 1], mt[:step]
    for i in range(step):
        dst[i] = far[i] ^ _twist_word(u[i], v[i])
    rest = _N - 1 - 2 * step  # 169
    dst, u, v, far = mt[2 * step:_N - 1], old[2 * step:_N - 1], old[2 * step + 1:], mt[step:step + rest]
    for i in range(rest):
        dst[i] = far[i] ^ _twist_word(u[i], v[i])
    mt[_N - 1] = mt[_M - 1] ^ _twist_word(old[_N - 1], mt[0])


@numba.njit(inline="always")
def _temper(y):
    y ^= y >> np.uint32(11)
    y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
    y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
    return y ^ (y >> np.uint32(18))


@numba.njit(**_OPTIONS)
def _keep_mask(mt, pos, keep, one, out):
    """out[i] = ``one`` where the i-th uniform double < keep, else 0; returns the new word position.

    mt: uint32[624] generator words (advanced in place); pos: index of the next unused word (624: twist first);
    keep: float64; one: the bit pattern of 1.0 in the mask's dtype; out: the mask's bits (int16 / int32 / int64).
    """
    old = np.empty(_N, np.uint32)
    words = np.empty(2 * _CHUNK, np.uint32)
    pairs = words.view(np.uint64)  # little-endian: pair i holds word 2i in its low half
    scale = 1.0 / 9007199254740992.0  # 2^-53
    zero = one - one
    n = out.size
    for start in range(0, n, _CHUNK):
        count = min(_CHUNK, n - start)
        filled = 0
        while filled < 2 * count:
            if pos == _N:
                _twist(mt, old)
                pos = 0
            take = min(_N - pos, 2 * count - filled)
            src, dst = mt[pos:pos + take], words[filled:filled + take]
            for i in range(take):
                dst[i] = _temper(src[i])
            pos += take
            filled += take
        mask = out[start:start + count]
        for i in range(count):
            pair = pairs[i]
            bits = ((pair << np.uint64(32)) | (pair >> np.uint64(32))) & np.uint64(0x1FFFFFFFFFFFFF)  # a << 32 | b
            mask[i] = one if np.float64(np.int64(bits)) * scale < keep else zero
    return pos


def bernoulli_keep_(mask: torch.Tensor, keep: float) -> bool:
    """Fill ``mask`` as ``mask.bernoulli_(keep)`` does, from torch's default CPU generator, bit for bit.

    Args:
        mask: a contiguous 1-D float tensor on the CPU (float16 / bfloat16 / float32 / float64), overwritten with
            1 (kept) and 0 in draw order.
        keep: the probability of a 1, a Python float in [0, 1].

    Returns:
        True when the mask was drawn; False (nothing drawn, the generator untouched) when the generator's state has
        an unknown layout, the machine is big-endian, or the mask is not a contiguous 1-D CPU float tensor.
    """
    if mask.dim() != 1 or not mask.is_contiguous() or mask.device.type != "cpu" or not mask.is_floating_point():
        return False
    if sys.byteorder != "little":
        return False
    with _LOCK:
        return _draw(mask, float(keep))


def _draw(mask: torch.Tensor, keep: float) -> bool:
    """``bernoulli_keep_`` under its lock: read the generator's words, run the kernel, write them back."""
    generator = torch.default_generator
    state = generator.get_state()
    if state.numel() != _STATE_BYTES:
        return False
    raw = state.numpy()
    left = int(raw[8:12].view(np.int32)[0])
    position = int(raw[16:24].view(np.uint64)[0]) if left > 1 else _N
    if not 0 <= position <= _N or (left > 1 and left - 1 != _N - position):
        return False  # not the layout this module knows
    words = raw[_WORDS].view(np.uint64).astype(np.uint32)
    bits_dtype = _BITS_DTYPE[mask.element_size()]
    if mask.dtype not in _ONE_BITS:
        _ONE_BITS[mask.dtype] = torch.ones((), dtype=mask.dtype).view(bits_dtype).item()
    one = _ONE_BITS[mask.dtype]
    bits = mask.view(bits_dtype).numpy()
    position = _keep_mask(words, position, keep, bits.dtype.type(one), bits)
    raw[_WORDS].view(np.uint64)[:] = words
    raw[8:12].view(np.int32)[0] = _N - position + 1
    raw[16:24].view(np.uint64)[0] = position
    generator.set_state(state)
    return True
