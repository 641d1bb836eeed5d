"""Bidirectional Mamba mixer in Vision Mamba's "bimamba v2" layout (Zhu et al., "Vision Mamba", ICML 2024).

Parameter names follow hustvl/Vim (``mamba-1p1p1/mamba_ssm/modules/mamba_simple.py``, ``bimamba_type="v2"``): a
shared ``in_proj`` / ``out_proj``, the forward direction's ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``,
and the backward direction's ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``, ``A_b_log``, ``D_b``. In [B, L, D] layout
(E = d_inner):

    x, z  = in_proj(h).chunk(2)                                        # [B, L, E] each
    y_f   = branch(silu(causal conv1d(x)),       z, x_proj,   dt_proj,   A_log,   D)
    y_b   = branch(silu(anti-causal conv1d_b(x)), z, x_proj_b, dt_proj_b, A_b_log, D_b, reverse=True)
    out   = out_proj(y_f + y_b)          (divided by 2 when if_divide_out, as Vim's released models)

Vim runs the backward branch on ``flip(xz)`` and flips its output back. Here the same result comes without flipped
copies: the causal conv of the flipped sequence is the anti-causal conv of the sequence, and the scan of the flipped
sequence is ``selective_scan(..., reverse=True)``. With ``lengths`` the reverse scan starts at length - 1, so each
row equals BiMamba on the row cut to its length.

Initialization is Vim's: the forward direction as mamba_ssm's ``Mamba``; ``A_b_log`` (S4D-real) and ``D_b`` (ones)
likewise; ``conv1d_b``, ``x_proj_b`` and ``dt_proj_b`` keep PyTorch's default init (Vim gives ``dt_proj_b`` no dt
init).
"""

from __future__ import annotations

import torch
from torch import nn

from ssmkit.core.conv import anticausal_conv1d, causal_conv1d, valid_mask
from ssmkit.core.mixers.mamba import (
    check_mamba_args,
    check_mixer_input,
    depthwise_conv,
    init_dt_proj_,
    ones_skip,
    s4d_real_a_log,
    selective_branch,
)

__all__ = ["BiMamba"]


class BiMamba(nn.Module):
    """Bidirectional selective-SSM mixer (Vim bimamba v2): both directions share in_proj, z and out_proj.

    Args:
        d_model: model width.
        d_state: state size N per channel.
        d_conv: width of the depthwise convolutions.
        expand: inner width factor, E = int(expand * d_model).
        dt_rank: rank R of the dt projections, or "auto" (ceil(d_model / 16)).
        dt_min, dt_max, dt_init, dt_scale, dt_init_floor: mamba_ssm's init of the forward ``dt_proj``.
        conv_bias: bias of conv1d and conv1d_b.
        bias: bias of in_proj and out_proj.
        if_divide_out: average the two directions instead of summing them (Vim's models use True).
        layer_idx: index of the layer in its stack.
        device, dtype: factory arguments (A_log, A_b_log, D, D_b are always float32).
        backend: kernel backend of ``selective_scan``.

    Parameters (state_dict keys): those of ``Mamba`` plus ``conv1d_b.weight`` [E, 1, d_conv], ``conv1d_b.bias`` [E],
    ``x_proj_b.weight`` [R + 2N, E], ``dt_proj_b.weight`` [E, R], ``dt_proj_b.bias`` [E], ``A_b_log`` [E, N],
    ``D_b`` [E].

    Example:
        >>> mixer = BiMamba(16, d_state=4, if_divide_out=True, backend="naive")
        >>> mixer(torch.randn(2, 8, 16), lengths=torch.tensor([8, 5])).shape
        torch.Size([2, 8, 16])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: float = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        if_divide_out: bool = False,
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_inner, self.dt_rank = check_mamba_args(
            "BiMamba", d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_init_floor, backend
        )
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.if_divide_out = bool(if_divide_out)
        self.layer_idx = layer_idx
        self.backend = backend
        # Creation order follows Vim's mixer, so a given seed draws the same initial values.
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory_kwargs)
        self.conv1d = depthwise_conv(self.d_inner, d_conv, conv_bias, factory_kwargs)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)
        init_dt_proj_(self.dt_proj, dt_scale, dt_init, dt_min, dt_max, dt_init_floor)
        self.A_log = s4d_real_a_log(self.d_inner, d_state, device)
        self.D = ones_skip(self.d_inner, device)
        self.A_b_log = s4d_real_a_log(self.d_inner, d_state, device)
        self.conv1d_b = depthwise_conv(self.d_inner, d_conv, conv_bias, factory_kwargs)
        self.x_proj_b = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory_kwargs)
        self.dt_proj_b = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)
        self.D_b = ones_skip(self.d_inner, device)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, cache: None = None) -> torch.Tensor:
        """Mix tokens along L in both directions.

        Args:
            x: [B, L, d_model].
            lengths: [B] valid prefix per row, or None. Padded positions are zeroed before both convolutions,
                skipped by both scans (the backward one starts at length - 1) and give 0 at the output.
            cache: must be None: the backward direction needs the whole sequence, so there is no step-by-step
                decoding (the argument exists so that ``Backbone`` can call every sequence mixer alike).

        Returns:
            [B, L, d_model] in x.dtype.
        """
        if cache is not None:
            raise ValueError(f"BiMamba: cache must be None (a bidirectional mixer reads the whole sequence and "
                             f"cannot decode step by step), found {type(cache).__name__}")
        check_mixer_input("BiMamba", x, self.d_model)
        batch, seqlen, _ = x.shape
        mask = valid_mask(lengths, batch, seqlen, x.device, "BiMamba")  # [B, L] or None
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, L, E] each
        u_f = causal_conv1d(u, self.conv1d.weight, self.conv1d.bias, lengths=lengths, activation="silu")  # [B, L, E]
        u_b = anticausal_conv1d(u, self.conv1d_b.weight, self.conv1d_b.bias, lengths=lengths,
                                activation="silu")  # [B, L, E]
        y_f = selective_branch(u_f, z, self.x_proj, self.dt_proj, self.A_log, self.D, lengths=lengths,
                               backend=self.backend)  # [B, L, E]
        y_b = selective_branch(u_b, z, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, reverse=True,
                               lengths=lengths, backend=self.backend)  # [B, L, E]
        y = y_f + y_b  # [B, L, E]
        if self.if_divide_out:
            y = y / 2
        out = self.out_proj(y)  # [B, L, d_model]
        if mask is not None:
            out = out.masked_fill(~mask[:, :, None], 0.0)
        return out

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, if_divide_out={self.if_divide_out}, backend={self.backend!r}")
