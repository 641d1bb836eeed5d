"""Recurrent-decoding cache of a Mamba mixer: the short-convolution window and the SSM state of each row.

A ``MambaCache`` is made by ``Mamba.allocate_cache(batch_size)`` and handed to ``Mamba.forward(x, cache=cache)``,
which reads it as the state before ``x`` and overwrites it, in place, with the state after ``x``. The layouts are
mamba_ssm's (``conv_state`` [B, D_inner, d_conv] with the newest input in the last column; ``ssm_state``
[B, D_inner, N]), so a state saved by one can be copied into the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["MambaCache"]


@dataclass
class MambaCache:
    """Decoding state of one Mamba mixer.

    Attributes:
        conv_state: the last ``d_conv`` inputs of the depthwise convolution [B, D_inner, d_conv]; column
            ``d_conv - 1`` holds the newest one (zeros before the first token).
        ssm_state: the selective-scan state after the newest token [B, D_inner, N], float32.
    """

    conv_state: torch.Tensor
    ssm_state: torch.Tensor

    @property
    def batch_size(self) -> int:
        """Number of rows B."""
        return self.conv_state.shape[0]

    def reset(self) -> None:
        """Zero both states in place (start new sequences with the same buffers)."""
        self.conv_state.zero_()
        self.ssm_state.zero_()

    def check(self, owner: str, batch_size: int, d_inner: int, d_conv: int, d_state: int,
              device: torch.device) -> None:
        """Raise a ValueError/TypeError naming the field unless the cache fits a mixer and a batch.

        Args:
            owner: name of the calling module, for the message.
            batch_size: B of the input.
            d_inner: channels D_inner of the mixer.
            d_conv: convolution width of the mixer.
            d_state: state size N of the mixer.
            device: device of the input.
        """
        expected = {"conv_state": (batch_size, d_inner, d_conv), "ssm_state": (batch_size, d_inner, d_state)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{owner}: cache.{name} must be a torch.Tensor, found {type(value).__name__}")
            if tuple(value.shape) != shape:
                raise ValueError(f"{owner}: cache.{name} must have shape {list(shape)} (batch size, d_inner, "
                                 f"{'d_conv' if name == 'conv_state' else 'd_state'}), found {list(value.shape)}")
            if value.device != device:
                raise ValueError(f"{owner}: cache.{name} must be on device {device} (the device of x), "
                                 f"found {value.device}")
            if not value.is_floating_point():
                raise TypeError(f"{owner}: cache.{name} must have a floating dtype, found {value.dtype}")
