"""Mamba-1 mixer (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023).

Parameter names, shapes and initialization are those of mamba_ssm's ``Mamba`` (state-spaces/mamba,
``mamba_ssm/modules/mamba_simple.py``), so its state_dicts load with ``strict=True`` and give the same output.
The computation, in the [B, L, D] layout (E = d_inner = expand * d_model, R = dt_rank, N = d_state):

    x, z   = in_proj(h).chunk(2)                      # [B, L, E] each
    x      = silu(causal depthwise conv1d(x))          # kernel d_conv, truncated to L
    dt, B, C = x_proj(x).split([R, N, N])              # [B, L, R], [B, L, N], [B, L, N]
    y      = selective_scan(x, dt_proj.weight dt, A=-exp(A_log), B, C, D, z,
                            delta_bias=dt_proj.bias, delta_softplus=True)      # [B, L, E]
    out    = out_proj(y)                               # [B, L, d_model]

Recurrent decoding keeps the convolution window and the SSM state in a ``MambaCache`` (``allocate_cache``):
``forward(x, cache=cache)`` with L == 1 runs one ``selective_state_update`` step; with L > 1 it runs the scan from
the cached state and leaves the state after the last valid position in the cache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.cache import MambaCache
from ssmkit.core.conv import anticausal_conv1d, causal_conv1d, causal_conv1d_step, valid_mask
from ssmkit.core.narrow_linear import narrow_linear
from ssmkit.kernels import BACKENDS, selective_scan, selective_state_update
from ssmkit.kernels._backend import resolve_backend
from ssmkit.kernels._validate import check_lengths

__all__ = [
    "Mamba", "check_mamba_args", "check_mixer_input", "depthwise_conv", "init_dt_proj_", "ones_skip", "s4d_real_a_log",
    "selective_branch",
]


def check_mamba_args(owner: str, d_model: int, d_state: int, d_conv: int, expand: float, dt_rank: int | str,
                     dt_min: float, dt_max: float, dt_init: str, dt_init_floor: float, backend: str) -> tuple[int, int]:
    """Validate the constructor arguments shared by the Mamba mixers.

    Returns:
        (d_inner, dt_rank) resolved as mamba_ssm does: ``int(expand * d_model)`` and ``ceil(d_model / 16)`` for
        ``dt_rank="auto"``.
    """
    for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{owner}: {name} must be a positive int, found {value!r}")
    if isinstance(expand, bool) or not isinstance(expand, (int, float)) or int(expand * d_model) < 1:
        raise ValueError(f"{owner}: expand must be a number with int(expand * d_model) >= 1, found {expand!r}")
    if dt_rank == "auto":
        dt_rank = math.ceil(d_model / 16)
    elif not isinstance(dt_rank, int) or isinstance(dt_rank, bool) or dt_rank < 1:
        raise ValueError(f"{owner}: dt_rank must be 'auto' or a positive int, found {dt_rank!r}")
    if not 0 < dt_min <= dt_max:
        raise ValueError(f"{owner}: dt_min and dt_max must satisfy 0 < dt_min <= dt_max, found {dt_min!r}, {dt_max!r}")
    if not dt_init_floor > 0:
        raise ValueError(f"{owner}: dt_init_floor must be > 0, found {dt_init_floor!r}")
    if dt_init not in ("random", "constant"):
        raise ValueError(f"{owner}: dt_init must be 'random' or 'constant', found {dt_init!r}")
    if backend not in BACKENDS:
        raise ValueError(f"{owner}: backend must be one of {BACKENDS}, found {backend!r}")
    return int(expand * d_model), dt_rank


def check_mixer_input(owner: str, x: torch.Tensor, d_model: int) -> None:
    """Raise a TypeError/ValueError naming ``x`` unless it is a floating tensor [B, L, d_model] with L >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: x must be a torch.Tensor [B, L, {d_model}], found {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: x must have a floating dtype, found {x.dtype}")
    if x.dim() != 3 or x.shape[-1] != d_model or x.shape[1] < 1:
        raise ValueError(f"{owner}: x must have shape [B, L, {d_model}] (rank 3, last dim d_model={d_model}, L >= 1), "
                         f"found {list(x.shape)} (rank {x.dim()})")


def init_dt_proj_(dt_proj: nn.Linear, dt_scale: float, dt_init: str, dt_min: float, dt_max: float,
                  dt_init_floor: float) -> None:
    """mamba_ssm's dt projection init, in place.

    The weight is ``U(-s, s)`` (``dt_init="random"``) or the constant ``s`` with ``s = dt_rank^-0.5 * dt_scale``.
    The bias is the inverse softplus of dt drawn log-uniformly in [dt_min, dt_max] (clamped below at
    ``dt_init_floor``), so ``softplus(bias)`` starts in that range; it is flagged ``_no_reinit`` so model-level
    inits that zero Linear biases leave it alone.
    """
    std = dt_proj.in_features**-0.5 * dt_scale
    if dt_init == "constant":
        nn.init.constant_(dt_proj.weight, std)
    else:
        nn.init.uniform_(dt_proj.weight, -std, std)
    weight = dt_proj.weight
    log_span = math.log(dt_max) - math.log(dt_min)
    dt = torch.exp(torch.rand(dt_proj.out_features, device=weight.device, dtype=weight.dtype) * log_span
                   + math.log(dt_min)).clamp(min=dt_init_floor)  # [E]
    inv_softplus = dt + torch.log(-torch.expm1(-dt))  # [E], softplus(inv_softplus) == dt
    with torch.no_grad():
        dt_proj.bias.copy_(inv_softplus)
    dt_proj.bias._no_reinit = True


def s4d_real_a_log(d_inner: int, d_state: int, device: torch.device | str | None = None) -> nn.Parameter:
    """S4D-real init ``A_log[d, n] = log(n + 1)`` [E, N] in float32, flagged ``_no_weight_decay``."""
    a = torch.arange(1, d_state + 1, dtype=torch.float32, device=device).repeat(d_inner, 1)  # [E, N]
    param = nn.Parameter(torch.log(a))
    param._no_weight_decay = True
    return param


def ones_skip(d_inner: int, device: torch.device | str | None = None) -> nn.Parameter:
    """The skip weight ``D = 1`` [E] in float32, flagged ``_no_weight_decay``."""
    param = nn.Parameter(torch.ones(d_inner, device=device))
    param._no_weight_decay = True
    return param


def depthwise_conv(d_inner: int, d_conv: int, conv_bias: bool, factory_kwargs: dict) -> nn.Conv1d:
    """``nn.Conv1d`` with mamba_ssm's arguments (groups=E, padding d_conv - 1); used through ``ssmkit.core.conv``."""
    return nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias, **factory_kwargs)


def selective_branch(
    u: torch.Tensor,
    z: torch.Tensor | None,
    x_proj: nn.Linear,
    dt_proj: nn.Linear,
    A_log: torch.Tensor,
    D: torch.Tensor,
    reverse: bool = False,
    lengths: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The SSM part of one Mamba direction: ``x_proj`` -> (dt, B, C) -> ``dt_proj.weight`` -> selective scan.

    Args:
        u: convolved and activated input [B, L, E].
        z: gate [B, L, E] or None.
        x_proj: Linear E -> R + 2N (no bias).
        dt_proj: Linear R -> E; its weight makes delta, its bias goes to the scan as ``delta_bias`` (softplus).
        A_log: [E, N]; the scan uses ``A = -exp(A_log)`` in float32.
        D: skip weight [E].
        reverse, lengths, initial_state, return_final_state, backend: passed to ``selective_scan``.

    Returns:
        y [B, L, E] (and the final state [B, E, N] with ``return_final_state``).
    """
    dt_rank, d_state = dt_proj.in_features, A_log.shape[1]
    x_dbl = x_proj(u)  # [B, L, R + 2N]
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=-1)  # [B, L, R], [B, L, N], [B, L, N]
    delta = narrow_linear(dt, dt_proj.weight)  # [B, L, E] (F.linear with a CPU-friendly backward)
    A = -torch.exp(A_log.float())  # [E, N]
    return selective_scan(
        u, delta, A, B, C, D.float(), z=z, delta_bias=dt_proj.bias.float(), delta_softplus=True,
        initial_state=initial_state, return_final_state=return_final_state, reverse=reverse, lengths=lengths,
        backend=backend,
    )


class Mamba(nn.Module):
    """Mamba-1 selective-SSM mixer with mamba_ssm's parameters.

    Args:
        d_model: model width.
        d_state: state size N per channel.
        d_conv: width of the causal depthwise convolution.
        expand: inner width factor, E = int(expand * d_model).
        dt_rank: rank R of the dt projection, or "auto" (ceil(d_model / 16)).
        dt_min, dt_max: range of the initial step size softplus(dt_proj.bias) (log-uniform).
        dt_init: "random" (dt_proj.weight ~ U(+-R^-0.5 * dt_scale)) or "constant".
        dt_scale: scale of the dt_proj.weight init.
        dt_init_floor: lower clamp of the initial dt.
        conv_bias: bias of conv1d.
        bias: bias of in_proj and out_proj.
        layer_idx: index of the layer in its stack (kept for callers that key caches by layer).
        device, dtype: factory arguments of the parameters (A_log and D are always float32, as in mamba_ssm).
        backend: kernel backend of ``selective_scan`` / ``selective_state_update``.
        reverse: scan right to left (anti-causal convolution + ``selective_scan(reverse=True)``): the same function
            as running this mixer on the flipped sequence and flipping back, without the copies. No decoding cache.

    Parameters (state_dict keys): ``in_proj.weight`` [2E, d_model], ``conv1d.weight`` [E, 1, d_conv],
    ``conv1d.bias`` [E], ``x_proj.weight`` [R + 2N, E], ``dt_proj.weight`` [E, R], ``dt_proj.bias`` [E],
    ``A_log`` [E, N], ``D`` [E], ``out_proj.weight`` [d_model, E] (+ ``in_proj.bias``, ``out_proj.bias`` with bias).

    Example:
        >>> mixer = Mamba(16, d_state=4, backend="naive")
        >>> mixer(torch.randn(2, 8, 16)).shape
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
        layer_idx: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        reverse: bool = False,
    ) -> None:
        super().__init__()
        self.d_inner, self.dt_rank = check_mamba_args(
            "Mamba", d_model, d_state, d_conv, expand, dt_rank, dt_min, dt_max, dt_init, dt_init_floor, backend
        )
        factory_kwargs = {"device": device, "dtype": dtype}
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.layer_idx = layer_idx
        self.backend = backend
        self.reverse = bool(reverse)
        # Creation order follows mamba_ssm, so a given seed draws the same initial values.
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias, **factory_kwargs)
        self.conv1d = depthwise_conv(self.d_inner, d_conv, conv_bias, factory_kwargs)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False, **factory_kwargs)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True, **factory_kwargs)
        init_dt_proj_(self.dt_proj, dt_scale, dt_init, dt_min, dt_max, dt_init_floor)
        self.A_log = s4d_real_a_log(self.d_inner, d_state, device)
        self.D = ones_skip(self.d_inner, device)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias, **factory_kwargs)

    def allocate_cache(self, batch_size: int, dtype: torch.dtype | None = None) -> MambaCache:
        """Zero decoding cache for ``batch_size`` rows.

        Args:
            batch_size: number of sequences B decoded together.
            dtype: dtype of the convolution state (default: that of ``conv1d.weight``); the SSM state is float32.

        Returns:
            ``MambaCache`` with ``conv_state`` [B, E, d_conv] and ``ssm_state`` [B, E, N] on the parameters' device.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"Mamba.allocate_cache: batch_size must be a positive int, found {batch_size!r}")
        device = self.out_proj.weight.device
        conv_dtype = self.conv1d.weight.dtype if dtype is None else dtype
        conv_state = torch.zeros(batch_size, self.d_inner, self.d_conv, device=device, dtype=conv_dtype)
        ssm_state = torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32)
        return MambaCache(conv_state=conv_state, ssm_state=ssm_state)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, cache: MambaCache | None = None
    ) -> torch.Tensor:
        """Mix tokens along L.

        Args:
            x: [B, L, d_model].
            lengths: [B] valid prefix per row, or None. Padded positions are zeroed before the convolution, skipped
                by the scan and give 0 at the output; with a cache, its state is the one after position length - 1.
            cache: ``MambaCache`` from ``allocate_cache`` holding the state before x, or None. It is updated in
                place to the state after x; L == 1 runs one recurrent step.

        Returns:
            [B, L, d_model] in x.dtype.
        """
        check_mixer_input("Mamba", x, self.d_model)
        batch, seqlen, _ = x.shape
        mask = valid_mask(lengths, batch, seqlen, x.device, "Mamba")  # [B, L] or None
        if cache is not None:
            if self.reverse:
                raise ValueError("Mamba: a reverse (right-to-left) mixer cannot decode step by step; pass cache=None")
            if not isinstance(cache, MambaCache):
                raise TypeError(f"Mamba: cache must be a MambaCache (from allocate_cache), "
                                f"found {type(cache).__name__}")
            cache.check("Mamba", batch, self.d_inner, self.d_conv, self.d_state, x.device)
            if seqlen == 1:
                return self._step(x, cache)
        if cache is None and self._fused_cpu(x):
            from ssmkit.kernels.mamba_inner_cpu import mamba_inner_cpu  # numba loads on first use

            out = mamba_inner_cpu(x, self.in_proj.weight, self.in_proj.bias, self.conv1d.weight, self.conv1d.bias,
                                  self.x_proj.weight, self.dt_proj.weight, self.dt_proj.bias, -torch.exp(self.A_log),
                                  self.D, self.out_proj.weight, self.out_proj.bias,
                                  check_lengths(lengths, batch, seqlen, x.device, "Mamba"), self.reverse,
                                  matmul_dtype=torch.bfloat16 if torch.is_autocast_enabled("cpu")
                                  else None)  # [B, L, d_model]; _fused_cpu admits bfloat16 autocast only
            return out if mask is None else out.masked_fill(~mask[:, :, None], 0.0)
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, L, E] each
        if cache is None:
            conv = anticausal_conv1d if self.reverse else causal_conv1d
            u = conv(u, self.conv1d.weight, self.conv1d.bias, lengths=lengths, activation="silu")  # [B, L, E]
            y = selective_branch(u, z, self.x_proj, self.dt_proj, self.A_log, self.D, reverse=self.reverse,
                                 lengths=lengths, backend=self.backend)  # [B, L, E]
        else:
            u, conv_state = causal_conv1d(u, self.conv1d.weight, self.conv1d.bias, lengths=lengths,
                                          initial_state=cache.conv_state, return_final_state=True,
                                          activation="silu")  # [B, L, E]
            y, ssm_state = selective_branch(u, z, self.x_proj, self.dt_proj, self.A_log, self.D,
                                            lengths=lengths, initial_state=cache.ssm_state, return_final_state=True,
                                            backend=self.backend)  # [B, L, E], [B, E, N]
            cache.conv_state.copy_(conv_state)
            cache.ssm_state.copy_(ssm_state)
        out = self.out_proj(y)  # [B, L, d_model]
        if mask is not None:
            out = out.masked_fill(~mask[:, :, None], 0.0)
        return out

    def _fused_cpu(self, x: torch.Tensor) -> bool:
        """Whether ``ssmkit.kernels.mamba_inner_cpu`` serves this call: the ``cpu`` scan backend on CPU tensors,
        float32 parameters and a float32 input, or, under CPU autocast to bfloat16, an input in float32 or bfloat16
        (then in_proj and out_proj multiply in bfloat16, as autocast would). It computes the same function as the
        composed path (outputs bit for bit in the tests, gradients up to rounding) and keeps about a third of its
        memory for the backward, as mamba_ssm's ``mamba_inner_fn`` does on CUDA."""
        if x.device.type != "cpu":
            return False
        if torch.is_autocast_enabled("cpu"):
            if torch.get_autocast_dtype("cpu") != torch.bfloat16 or x.dtype not in (torch.float32, torch.bfloat16):
                return False
        elif x.dtype != torch.float32:
            return False
        if any(p.dtype != torch.float32 for p in self.parameters()):
            return False
        return resolve_backend("selective_scan", self.backend, x.device) == "cpu"

    def _step(self, x: torch.Tensor, cache: MambaCache) -> torch.Tensor:
        """One recurrent step on x [B, 1, d_model]; the cache is updated in place. Returns [B, 1, d_model]."""
        u, z = self.in_proj(x[:, 0]).chunk(2, dim=-1)  # [B, E] each
        u = F.silu(causal_conv1d_step(u, cache.conv_state, self.conv1d.weight, self.conv1d.bias))  # [B, E]
        dt, B, C = torch.split(self.x_proj(u), [self.dt_rank, self.d_state, self.d_state], dim=-1)  # [B, R|N|N]
        delta = F.linear(dt, self.dt_proj.weight)  # [B, E]
        A = -torch.exp(self.A_log.float())  # [E, N]
        y = selective_state_update(cache.ssm_state, u, delta, A, B, C, self.D.float(), z=z,
                                   dt_bias=self.dt_proj.bias.float(), dt_softplus=True, backend=self.backend)  # [B, E]
        return self.out_proj(y)[:, None]  # [B, 1, d_model]

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, d_state={self.d_state}, d_conv={self.d_conv}, "
                f"dt_rank={self.dt_rank}, backend={self.backend!r}" + (", reverse=True" if self.reverse else ""))
