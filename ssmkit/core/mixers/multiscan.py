"""Multi-direction Mamba mixer: K scan orders of an N-D token grid in ONE selective-scan call (PlainMamba-style).

The mixer follows PlainMamba's ``PlainMamba2D`` (ChenhongyiYang/PlainMamba) with mamba_ssm parameter names:

    x, z   = in_proj(x).chunk(2)                               # [B, L, E] each, E = expand * d_model
    x      = silu(depthwise conv over the grid (x))             # "same" padding, kernel d_conv (odd)
    dt, B, C = x_proj(x)                                       # [B, L, R], [B, L, N], [B, L, N]
    for every order k:  y_k = selective_scan(x[o_k], dt_proj.weight dt [o_k], A, B[o_k] + dB_k, C[o_k], D,
                                             delta_bias=dt_proj.bias, softplus)[inv_k]
    out    = out_proj(combine_k(y_k) * silu(z))                # combine = sum (PlainMamba) or mean

The K scans share A_log, D and dt_proj (as in PlainMamba). They run as one kernel call: the K reordered sequences are
stacked along channels (u, delta: [B, L, K*E], channel ``k*E + e`` belongs to order k), B and C become
[B, L, K, N] with G = K groups, and A, D and the dt bias are tiled to K*E rows. ``dB_k`` is the optional
direction-aware offset ``direction_Bs[dirs_k]`` (PlainMamba: a learned [1 + 2m, N] table indexed by the direction of
the move that reached each step, see ``ssmkit.core.scan_order``).

``compat_plainmamba=True`` reproduces two quirks of the released PlainMamba code (needed to match its checkpoints):
only u is put in scan order (dt, B and C stay in raster order while the direction offsets are in scan order), and the
dt bias is added twice (``dt_proj`` keeps its bias and ``delta_bias = dt_proj.bias`` is also passed to the scan).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.mixers.mamba import check_mixer_input
from ssmkit.core.narrow_linear import narrow_linear
from ssmkit.core.scan_order import (
    ORDER_NAMES,
    PLAINMAMBA_ORDERS,
    ScanOrders,
    build_scan_orders,
    num_directions,
    resolve_grid,
)
from ssmkit.kernels import selective_scan
from ssmkit.kernels._validate import check_lengths

__all__ = ["MultiScanMamba"]

_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Reorder positions per scan: ``out[b, t, k] = x[b, index[b, k, t]]``.

    Args:
        x: [B, L, C] (one sequence shared by the K scans) or [B, L, K, C] (one per scan).
        index: LongTensor [B or 1, K, L].

    Returns:
        [B, L, K, C].
    """
    batch, seqlen = x.shape[:2]
    num = index.shape[1]
    idx = index.expand(batch, -1, -1).permute(0, 2, 1)  # [B, L, K]
    if x.dim() == 3:
        x = x.unsqueeze(2).expand(-1, -1, num, -1)  # [B, L, K, C]
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, -1, x.shape[-1]))  # [B, L, K, C]


class MultiScanMamba(nn.Module):
    """K-direction selective-scan mixer over an N-D grid of tokens (one kernel call for all directions).

    Args:
        d_model: model width D.
        d_state: SSM state size N.
        d_conv: kernel size of the depthwise grid convolution (odd; PlainMamba uses 7).
        expand: inner width factor, E = expand * d_model.
        dt_rank: rank R of the dt projection, or "auto" (ceil(d_model / 16)).
        orders: names of the K scan orders (``ssmkit.core.scan_order.ORDER_NAMES``); default PlainMamba's four.
        grid_ndim: number of grid axes m (the convolution is m-D; its parameter is ``conv{m}d``).
        direction_aware: add learned direction offsets ``direction_Bs`` [1 + 2m, N] to B (needs continuous orders).
        combine: "sum" (PlainMamba) or "mean" of the K un-permuted outputs.
        bias: bias of in_proj and out_proj (PlainMamba's released models use True).
        conv_bias: bias of the grid convolution.
        compat_plainmamba: reproduce PlainMamba's raster-order dt/B/C and double dt bias (see module docstring).
        dt_min, dt_max, dt_init_floor, dt_scale: mamba_ssm initialisation of dt_proj.
        backend: kernel backend for ``ssmkit.kernels.selective_scan``.

    Shapes:
        forward(x [B, L, D], grid=None, lengths=None) -> [B, L, D], L == prod(grid). ``grid=None`` means a 1-D
        sequence (grid (1, ..., 1, L)). ``lengths`` [B] (valid prefix per row) is supported on 1-D sequences.

    Example:
        >>> mixer = MultiScanMamba(16, d_state=4, orders=("snake_h", "snake_v"), direction_aware=True)
        >>> mixer(torch.randn(2, 12, 16), grid=(3, 4)).shape
        torch.Size([2, 12, 16])
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 7,
        expand: float = 2,
        dt_rank: int | str = "auto",
        orders: tuple[str, ...] = PLAINMAMBA_ORDERS,
        grid_ndim: int = 2,
        direction_aware: bool = False,
        combine: str = "sum",
        bias: bool = False,
        conv_bias: bool = True,
        compat_plainmamba: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state), ("d_conv", d_conv), ("grid_ndim", grid_ndim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MultiScanMamba: {name} must be a positive int, found {value!r}")
        if d_conv % 2 == 0:
            raise ValueError(f"MultiScanMamba: d_conv must be odd (a centred 'same' grid convolution), found {d_conv}")
        if grid_ndim not in _CONVS:
            raise ValueError(f"MultiScanMamba: grid_ndim must be one of {tuple(_CONVS)}, found {grid_ndim}")
        if isinstance(orders, str) or not isinstance(orders, (tuple, list)) or len(orders) == 0:
            raise TypeError(f"MultiScanMamba: orders must be a non-empty tuple of names from {ORDER_NAMES}, "
                            f"found {orders!r}")
        for name in orders:
            if name not in ORDER_NAMES:
                raise ValueError(f"MultiScanMamba: orders must contain names from {ORDER_NAMES}, found {name!r}")
        if combine not in ("sum", "mean"):
            raise ValueError(f"MultiScanMamba: combine must be 'sum' or 'mean', found {combine!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.expand = expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.orders = tuple(orders)
        self.grid_ndim = grid_ndim
        self.direction_aware = bool(direction_aware)
        self.combine = combine
        self.compat_plainmamba = bool(compat_plainmamba)
        self.backend = backend
        self._order_cache: dict[tuple, ScanOrders] = {}

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=bias)
        self.conv_name = f"conv{grid_ndim}d"
        conv = _CONVS[grid_ndim](self.d_inner, self.d_inner, d_conv, padding=d_conv // 2, groups=self.d_inner,
                                 bias=conv_bias)
        self.add_module(self.conv_name, conv)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

        # mamba_ssm initialisation: dt_proj.weight ~ U(+-R^-0.5 * scale), softplus(dt_proj.bias) log-uniform
        std = self.dt_rank ** -0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)  # [E]
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.dt_proj.bias._no_reinit = True
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)  # [E, N]
        self.A_log = nn.Parameter(torch.log(a))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True
        if self.direction_aware:
            self.direction_Bs = nn.Parameter(torch.zeros(num_directions(grid_ndim), d_state))
            nn.init.trunc_normal_(self.direction_Bs, std=0.02)
            self.direction_Bs._no_weight_decay = True

    @property
    def num_orders(self) -> int:
        """K, the number of scan directions."""
        return len(self.orders)

    def _check_input(self, x: torch.Tensor, grid, lengths) -> tuple[tuple[int, ...], torch.Tensor | None]:
        check_mixer_input("MultiScanMamba", x, self.d_model)
        grid = resolve_grid("MultiScanMamba", x.shape[1], grid, self.grid_ndim)
        if lengths is not None and math.prod(grid[:-1]) != 1:
            raise ValueError(f"MultiScanMamba: lengths is supported for 1-D sequences only, found grid {grid}")
        lengths = check_lengths(lengths, x.shape[0], x.shape[1], x.device, "MultiScanMamba")
        return grid, lengths

    def _scan_orders(self, grid: tuple[int, ...], device: torch.device) -> ScanOrders:
        key = (grid, str(device))
        if key not in self._order_cache:
            so = build_scan_orders(self.orders, grid, with_directions=self.direction_aware)
            self._order_cache[key] = so.to(device)
        return self._order_cache[key]

    def _indices(self, grid, lengths, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Orders, inverses and direction ids as [B or 1, K, L] (per row when lengths are given)."""
        if lengths is None:
            so = self._scan_orders(grid, device)
            dirs = None if so.directions is None else so.directions[None]
            return so.orders[None], so.inverses[None], dirs
        seqlen = grid[-1]
        rows_o, rows_i, rows_d = [], [], []
        for n in lengths.tolist():
            so = self._scan_orders((1,) * (self.grid_ndim - 1) + (n,), device)
            tail = torch.arange(n, seqlen, device=device).expand(self.num_orders, -1)  # [K, L - n]
            rows_o.append(torch.cat([so.orders, tail], dim=1))  # [K, L]
            rows_i.append(torch.cat([so.inverses, tail], dim=1))  # [K, L]
            if so.directions is not None:
                rows_d.append(torch.cat([so.directions, torch.zeros_like(tail)], dim=1))  # [K, L]
        dirs = torch.stack(rows_d) if rows_d else None
        return torch.stack(rows_o), torch.stack(rows_i), dirs

    def _grid_conv(self, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
        """Depthwise 'same' convolution over the grid; [B, L, E] -> [B, L, E]."""
        batch, seqlen, width = x.shape
        x_grid = x.transpose(1, 2).reshape(batch, width, *grid)  # [B, E, *grid]
        y = getattr(self, self.conv_name)(x_grid)  # [B, E, *grid]
        return y.reshape(batch, width, seqlen).transpose(1, 2)  # [B, L, E]

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mix tokens along K scan orders of the grid.

        Args:
            x: tokens [B, L, D] in raster order of ``grid``.
            grid: grid shape with prod(grid) == L (None: a 1-D sequence).
            lengths: [B] valid prefix per row (1-D sequences only); padded outputs are 0.

        Returns:
            [B, L, D].
        """
        grid, lengths = self._check_input(x, grid, lengths)
        batch, seqlen, _ = x.shape
        num, width = self.num_orders, self.d_inner
        orders, inverses, dirs = self._indices(grid, lengths, x.device)  # [B|1, K, L] each
        valid = None
        if lengths is not None:
            valid = (torch.arange(seqlen, device=x.device)[None] < lengths[:, None]).unsqueeze(-1)  # [B, L, 1]

        xz = self.in_proj(x)  # [B, L, 2E]
        xs, z = xz.chunk(2, dim=-1)  # [B, L, E] each
        if valid is not None:
            xs = xs * valid  # padding must not leak into valid tokens through the centred convolution
        xs = F.silu(self._grid_conv(xs, grid))  # [B, L, E]
        dt, b_in, c_in = torch.split(self.x_proj(xs), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        if self.compat_plainmamba:
            delta = self.dt_proj(dt)  # [B, L, E]  (bias included here and again as delta_bias)
        else:
            delta = narrow_linear(dt, self.dt_proj.weight)  # [B, L, E]

        u = _gather_steps(xs, orders)  # [B, L, K, E]
        if self.compat_plainmamba:
            delta = delta.unsqueeze(2).expand(-1, -1, num, -1)  # [B, L, K, E] raster order
            b_in = b_in.unsqueeze(2).expand(-1, -1, num, -1)  # [B, L, K, N]
            c_in = c_in.unsqueeze(2).expand(-1, -1, num, -1)  # [B, L, K, N]
        else:
            delta = _gather_steps(delta, orders)  # [B, L, K, E]
            b_in = _gather_steps(b_in, orders)  # [B, L, K, N]
            c_in = _gather_steps(c_in, orders)  # [B, L, K, N]
        if self.direction_aware:
            b_in = b_in + self.direction_Bs[dirs].permute(0, 2, 1, 3).to(b_in.dtype)  # [B, L, K, N]

        A = -torch.exp(self.A_log.float())  # [E, N]
        y = selective_scan(
            u.reshape(batch, seqlen, num * width),
            delta.reshape(batch, seqlen, num * width),
            A.repeat(num, 1),  # [K*E, N]
            b_in.contiguous(),
            c_in.contiguous(),
            D=self.D.float().repeat(num),  # [K*E]
            delta_bias=self.dt_proj.bias.float().repeat(num),  # [K*E]
            delta_softplus=True,
            lengths=lengths,
            backend=self.backend,
        )  # [B, L, K*E]
        y = _gather_steps(y.view(batch, seqlen, num, width), inverses)  # [B, L, K, E] back in raster order
        y = y.sum(2) if self.combine == "sum" else y.mean(2)  # [B, L, E]
        out = self.out_proj(y * F.silu(z))  # [B, L, D]
        return out if valid is None else out * valid
