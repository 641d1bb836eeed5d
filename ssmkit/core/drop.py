"""Stochastic depth (drop path) and a faster CPU dropout that draws the same random numbers as ``nn.Dropout``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Zero the branch output of a random subset of samples and rescale the kept ones by ``1 / (1 - p)``.

    In eval mode, or with ``p == 0``, it is the identity. One Bernoulli draw per sample (first dimension), so the
    expected output equals the input.

    Args:
        p: probability of dropping a sample's branch, in [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
            raise ValueError(f"DropPath: p must be a float in [0, 1), got {p!r}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply drop path.

        Args:
            x: [B, ...] branch output.

        Returns:
            [B, ...] the same tensor (eval / p == 0) or a per-sample masked and rescaled copy.
        """
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        mask = x.new_empty(mask_shape).bernoulli_(keep)  # [B, 1, ..., 1]
        return x * mask / keep  # [B, ...]

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the same output, gradient and random-number use, faster on the CPU.

    On the CPU, ``F.dropout`` fills a mask with ``bernoulli_(1 - p)``, which draws one float64 uniform u per element
    (in the input's memory order) from the default generator and keeps the element where u < 1 - p; then it divides
    the mask by 1 - p and multiplies. Here the same mask comes from ``ssmkit.kernels.bernoulli_cpu`` (the same
    Mersenne Twister numbers in a vectorized kernel, the generator's state read and written back), then the same
    division and product in the input's dtype. So a seeded run gives bit-identical outputs, gradients and generator
    state with either module (``tests/core/test_drop.py``), and no memory beyond nn.Dropout's mask but the
    kernel's 35 KiB of scratch.

    Speed (one thread): the mask of a float32 [32, 11, 256] input takes 70 us here against 520 us for
    ``bernoulli_`` (``ssmkit/kernels/README.md``). Where the generator's state
    layout is not the one the kernel knows, the mask comes from ``uniform_`` on float64 chunks of at most ``CHUNK``
    elements in the same memory order: the same numbers again, at about 4 ns per element. Other devices,
    ``inplace``, eval mode and code traced by ``torch.compile`` call ``F.dropout``.

    Args:
        p: probability of zeroing an element, in [0, 1].
        inplace: as ``nn.Dropout`` (then ``F.dropout`` runs).
    """

    CHUNK = 1 << 16  # float64 uniforms drawn at a time by the fallback (512 KiB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: any shape -> the same shape (dropped elements 0, kept ones scaled by 1 / (1 - p) in training)."""
        return dropout(x, self.p, self.training, self.inplace)


def dropout(x: torch.Tensor, p: float, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """``F.dropout`` with the same output, gradient and random-number use, faster on the CPU (see ``Dropout``).

    Args:
        x: any shape.
        p: probability of zeroing an element, in [0, 1].
        training: apply dropout (else return x).
        inplace: as ``F.dropout`` (then ``F.dropout`` runs).

    Returns:
        The same shape: dropped elements 0, kept ones scaled by 1 / (1 - p).
    """
    if not training or p == 0.0 or p == 1.0 or inplace or x.device.type != "cpu" or not x.is_floating_point() \
            or x.numel() == 0 or torch.compiler.is_compiling():  # a compiled graph keeps F.dropout (its own RNG)
        return F.dropout(x, p, training, inplace)
    keep = 1.0 - p
    noise = torch.empty_like(x)  # x's dtype and layout (dense), as F.dropout's mask
    flat = noise.as_strided((noise.numel(),), (1,))  # its elements in memory order, the order bernoulli_ draws
    from ssmkit.kernels.bernoulli_cpu import bernoulli_keep_  # numba, imported on first use

    if not bernoulli_keep_(flat, keep):
        chunk = Dropout.CHUNK
        uniform = torch.empty(min(chunk, flat.numel()), dtype=torch.float64)
        for start in range(0, flat.numel(), chunk):
            part = flat[start:start + chunk]
            torch.lt(uniform[:part.numel()].uniform_(), keep, out=part)  # 1 where kept, in x's dtype
    return x * noise.div_(keep)  # mask / (1 - p), rounded as F.dropout rounds it
