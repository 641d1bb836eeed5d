"""Chimera: "Effectively Modeling Multivariate Time Series with 2-Dimensional State Space Models" (Behrouz,
Santacatterina, Zabih; NeurIPS 2024, arXiv 2406.04320).

There is no official code. The paper's body (section 3) could not be read through the search tools here: only its
abstract (arxiv.org/html/2406.04320v1) and third-party summaries (reference/timeseries.md section 3). So this file
keeps what those sources state and marks our own choices where they are silent.

What the sources state and we implement:

* A 2-D SSM over the (time t, variate v) grid in Roesser form, with a temporal state h1 and a variate state h2,
  diagonal state matrices and input-dependent (selective) B, C and step sizes dt1 (time) and dt2 (variates).
  Per channel e and state n (everything elementwise; x = the mixer input, D = skip)::

      h1[t, v] = a1 * h1[t-1, v] + a2 * h2[t-1, v] + dt1 * B1[t, v] * x[t, v]
      h2[t, v] = a3 * h1[t, v-1] + a4 * h2[t, v-1] + dt2 * B2[t, v] * x[t, v]
      y[t, v]  = sum_n (C1[t, v] * h1 + C2[t, v] * h2) + D * x[t, v]

  computed by ``ssmkit.kernels.scan2d`` (the "2-D parallel selective scan": blocked parallel scans along time,
  sequential over the few variates).
* Two SSM heads with different discretizations, for long-term progression (trend) and seasonal patterns: small
  dt1 gives long memory along time, large dt1 short memory. A seasonal-trend decomposition feeds them.
* Bidirectional along the variates (variates have no order): each mixer scans the variates forward and backward.
* A data-dependent gate (the "third head" that selects what to pass on).

Our choices where the sources are silent:

* Discretization. ``a1 = exp(dt1 * A1)``, ``a4 = exp(dt2 * A4)`` (ZOH of the diagonal parts, A1, A4 < 0, S4D-real
  init as Mamba). The couplings come from ZOH with the other state held constant over the step,
  ``a2 = (1 - a1) * r2``, ``a3 = (1 - a4) * r3`` with ``r = sigmoid(.)`` learnable per (channel, state): then
  ``a1 + a2 <= 1`` and ``a3 + a4 <= 1``, so the state grows at most linearly (as a cumulative sum) over the grid.
  Inputs use Mamba's Euler step ``dt * B * x``.
* The two heads are two channel groups of width ``d_model`` in one mixer: the trend head reads the moving average of
  the series (window ``moving_avg``, Autoformer/DLinear decomposition), the seasonal head the remainder; their dt1
  biases are initialised log-uniformly in ``trend_dt`` (small) and ``seasonal_dt`` (large). dt2 uses Mamba's range.
  The projections for B, C and dt are shared by the groups (one scan2d call per direction for both heads).
* Grid cells: the time axis is cut into patches of ``patch_len`` steps, each embedded by a Linear per head, so the
  scan runs over (L / patch_len) x N cells; ``patch_len=1`` gives one cell per time step. The configs use 8 so that
  a run fits the CPU budget here.
* The gate is Mamba's ``y * silu(z)``; forward and backward variate scans share their parameters and are summed.
* Forecast head, two choices (``decoder``), each plus a linear map of the normalised lookback (Linear(seq_len ->
  pred_len), shared over variates). Series normalisation (mean / std over time, no affine) wraps the model, as in
  S-Mamba.

  - ``"linear"``: flatten the time axis of each variate's features, Linear(T * 2 * d_model -> pred_len).
  - ``"closed_loop"``: the paper's closed-loop decoder for long horizons, which its summaries describe only as
    "as in SpaceTime" (reference/timeseries.md section 2.2). Ours, per channel e of the encoder's last features u
    (one time cell per step; every variate's state already holds the other variates through the 2-D SSM)::

        x[t+1] = diag(a) x[t] + b u[t]          over the lookback cells, x[0] = 0   (the state x_T after it)
        x[T+s+1] = (diag(a) + b k^T) x[T+s]     the closed loop: the decoder feeds itself u = k^T x
        y[T+s] = c^T x[T+s],  s = 0 .. ceil(pred_len / patch_len) - 1

    with a = exp(-dt * exp(A_log)) in (0, 1) (S4D-real init, dt log-uniform in [1e-3, 1e-1]), b = (1 - a) *
    tanh(beta) and k L1-normalised: every row of diag(a) + b k^T sums in absolute value to at most 1, so the
    roll-out cannot grow (SpaceTime L1-normalises for the same reason). Each cell's y [E] becomes its patch_len
    forecast steps by one Linear(E -> patch_len) shared over cells. SpaceTime's two auxiliary losses are not used.

Shapes: B batch, L = seq_len, T = L / patch_len (time cells of the scan), N = n_vars (variates, V in the scan),
P = patch_len, E = 2 * d_model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.drop import Dropout
from ssmkit.core.registry import register_model
from ssmkit.kernels import scan2d

from ._series import check_forecast_input, normalize_series
from .spacetime import krylov, l1_normalize


def _log_dt(dim: int, dt_min: float, dt_max: float) -> torch.Tensor:
    """log dt for dt ~ log-uniform [dt_min, dt_max] (Mamba's dt init): [dim]."""
    return torch.rand(dim) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)


def _dt_bias(dim: int, dt_min: float, dt_max: float) -> torch.Tensor:
    """Inverse softplus of dt ~ log-uniform [dt_min, dt_max], floored at 1e-4."""
    dt = torch.exp(_log_dt(dim, dt_min, dt_max)).clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


def _s4d_real_log(dim: int, d_state: int) -> torch.Tensor:
    """log of S4D-real decay rates 1 .. d_state for every channel: [dim, d_state]."""
    return torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(dim, 1)


class Chimera2DSSM(nn.Module):
    """Selective 2-D SSM mixer over [B, T, V, E] with two heads (channel halves) and both variate directions.

    Args:
        dim: channels E (the two heads are the halves [0, E/2) = trend and [E/2, E) = seasonal).
        d_state: states per channel.
        dt_rank: rank of the dt projections.
        trend_dt, seasonal_dt: (min, max) init range of dt1 for the trend and seasonal heads.
        backend: scan2d backend.
    """

    def __init__(self, dim: int, d_state: int, dt_rank: int, trend_dt: tuple[float, float],
                 seasonal_dt: tuple[float, float], backend: str = "auto"):
        super().__init__()
        if dim % 2:
            raise ValueError(f"Chimera2DSSM: dim must be even (two heads), found {dim}")
        self.dim, self.d_state, self.dt_rank, self.backend = dim, d_state, dt_rank, backend
        self.in_proj = nn.Linear(dim, 2 * dim, bias=False)  # -> x, z
        self.x_proj = nn.Linear(dim, 2 * dt_rank + 4 * d_state, bias=False)  # -> dt1, dt2 (low rank), B1, B2, C1, C2
        self.dt1_proj = nn.Linear(dt_rank, dim)
        self.dt2_proj = nn.Linear(dt_rank, dim)
        half = dim // 2
        with torch.no_grad():
            for proj in (self.dt1_proj, self.dt2_proj):
                nn.init.uniform_(proj.weight, -dt_rank**-0.5, dt_rank**-0.5)
            self.dt1_proj.bias.copy_(torch.cat([_dt_bias(half, *trend_dt), _dt_bias(half, *seasonal_dt)]))
            self.dt2_proj.bias.copy_(_dt_bias(dim, 1e-3, 1e-1))
        self.A1_log = nn.Parameter(_s4d_real_log(dim, d_state))  # [E, N]
        self.A4_log = nn.Parameter(_s4d_real_log(dim, d_state))  # [E, N]
        self.coupling = nn.Parameter(torch.zeros(2, dim, d_state))  # r2, r3 = sigmoid(.) = 0.5 at init
        self.D = nn.Parameter(torch.ones(dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: [B, T, V, E] -> [B, T, V, E]."""
        batch, seqlen, nvars, dim = u.shape
        n, r = self.d_state, self.dt_rank
        x, z = self.in_proj(u).chunk(2, dim=-1)  # [B, T, V, E] each
        x = F.silu(x)
        dt1_low, dt2_low, B1, B2, C1, C2 = self.x_proj(x).split([r, r, n, n, n, n], dim=-1)
        dt1 = F.softplus(self.dt1_proj(dt1_low))[..., None]  # [B, T, V, E, 1]
        dt2 = F.softplus(self.dt2_proj(dt2_low))[..., None]  # [B, T, V, E, 1]
        r2, r3 = torch.sigmoid(self.coupling)  # [E, N] each
        a1 = torch.exp(dt1 * -torch.exp(self.A1_log))  # [B, T, V, E, N]
        a4 = torch.exp(dt2 * -torch.exp(self.A4_log))  # [B, T, V, E, N]
        a2, a3 = (1 - a1) * r2, (1 - a4) * r3  # [B, T, V, E, N]
        u1 = dt1 * B1[..., None, :] * x[..., None]  # [B, T, V, E, N]
        u2 = dt2 * B2[..., None, :] * x[..., None]  # [B, T, V, E, N]
        flat = [t.reshape(batch, seqlen, nvars, dim * n) for t in (a1, a2, a3, a4, u1, u2)]  # [B, T, V, E*N]
        f1, f2 = scan2d(*flat, backend=self.backend)  # [B, T, V, E*N] each
        b1, b2 = scan2d(*flat, reverse=True, backend=self.backend)  # [B, T, V, E*N] each
        h1 = (f1 + b1).view(batch, seqlen, nvars, dim, n)  # [B, T, V, E, N]
        h2 = (f2 + b2).view(batch, seqlen, nvars, dim, n)  # [B, T, V, E, N]
        y = (h1 * C1[..., None, :]).sum(-1) + (h2 * C2[..., None, :]).sum(-1) + self.D * x  # [B, T, V, E]
        return self.out_proj(y * F.silu(z))


class ClosedLoopDecoder(nn.Module):
    """Closed-loop forecast from the encoder's last features (the module docstring's equations).

    Args:
        dim: channels E.   d_state: states per channel.   patch_len: forecast steps per cell.
        pred_len: horizon S (the decoder rolls out ceil(S / patch_len) cells).
    """

    def __init__(self, dim: int, d_state: int, patch_len: int, pred_len: int):
        super().__init__()
        self.cells, self.pred_len = math.ceil(pred_len / patch_len), pred_len
        self.A_log = nn.Parameter(_s4d_real_log(dim, d_state))  # [E, N]
        self.dt_log = nn.Parameter(_log_dt(dim, 1e-3, 1e-1))  # [E]
        self.beta = nn.Parameter(torch.randn(dim, d_state))  # [E, N]
        self.k = nn.Parameter(torch.randn(dim, d_state))  # [E, N]
        self.c = nn.Parameter(torch.randn(dim, d_state) / math.sqrt(d_state))  # [E, N]
        self.proj = nn.Linear(dim, patch_len)

    def transition(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(a [E, N], b [E, N], closed-loop matrix diag(a) + b k^T [E, N, N])."""
        a = torch.exp(-torch.exp(self.dt_log)[:, None] * torch.exp(self.A_log))  # [E, N]
        b = (1 - a) * torch.tanh(self.beta)  # [E, N]
        loop = torch.diag_embed(a) + b[..., :, None] * l1_normalize(self.k)[..., None, :]  # [E, N, N]
        return a, b, loop

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: [B, V, T, E] -> forecast [B, V, pred_len] (the last cell cut to the horizon)."""
        a, b, loop = self.transition()
        steps = torch.arange(u.shape[2] - 1, -1, -1, device=u.device, dtype=u.dtype)  # [T]: T-1 .. 0
        weights = a[..., None] ** steps * b[..., None]  # [E, N, T]: a^(T-1-j) b
        state = torch.einsum("bvte,ent->bven", u, weights)  # [B, V, E, N]: x_T
        readout = krylov(self.cells, loop.transpose(-1, -2), self.c)  # [E, N, cells]: ((diag(a) + b k^T)^T)^s c
        y = torch.einsum("ens,bven->bvse", readout, state)  # [B, V, cells, E]
        return self.proj(y).flatten(2)[..., : self.pred_len]  # [B, V, S]


class Chimera(nn.Module):
    """Chimera forecaster (see the module docstring for the equations and our choices).

    Args:
        seq_len: lookback L.   pred_len: horizon S.   n_vars: variates N.
        patch_len: time steps per cell of the grid (1: one cell per time step; L must be a multiple).
        d_model: width of each head (the mixer has 2 * d_model channels).
        d_state: SSM states per channel.   n_layers: pre-norm residual 2-D SSM blocks.
        moving_avg: window of the trend (moving average) of the decomposition.
        trend_dt, seasonal_dt: dt1 init ranges of the two heads.
        dropout: dropout before the forecast head.   use_norm: series normalisation.
        decoder: forecast head, "linear" (flattened features) or "closed_loop" (module docstring).
        backend: scan2d backend.
    """

    def __init__(self, seq_len: int = 96, pred_len: int = 96, n_vars: int = 7, patch_len: int = 8,
                 d_model: int = 16, d_state: int = 4, n_layers: int = 2, moving_avg: int = 25,
                 trend_dt: tuple[float, float] = (1e-3, 1e-2), seasonal_dt: tuple[float, float] = (1e-1, 1.0),
                 dropout: float = 0.1, use_norm: bool = True, decoder: str = "linear", backend: str = "auto"):
        super().__init__()
        if patch_len < 1 or seq_len % patch_len:
            raise ValueError(f"patch_len must divide seq_len={seq_len}, found {patch_len}")
        if moving_avg < 1 or moving_avg % 2 == 0:
            raise ValueError(f"moving_avg must be an odd window >= 1, found {moving_avg}")
        if decoder not in ("linear", "closed_loop"):
            raise ValueError(f"decoder must be 'linear' or 'closed_loop', found {decoder!r}")
        self.seq_len, self.pred_len, self.n_vars, self.use_norm = seq_len, pred_len, n_vars, use_norm
        self.moving_avg, self.patch_len = moving_avg, patch_len
        width = 2 * d_model
        self.embed_trend = nn.Linear(patch_len, d_model)
        self.embed_seasonal = nn.Linear(patch_len, d_model)
        self.variate_embed = nn.Parameter(torch.zeros(n_vars, width))
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(n_layers))
        self.mixers = nn.ModuleList(
            Chimera2DSSM(width, d_state, max(1, math.ceil(width / 16)), tuple(trend_dt), tuple(seasonal_dt), backend)
            for _ in range(n_layers))
        self.norm = nn.LayerNorm(width)
        self.dropout = Dropout(dropout)
        if decoder == "linear":
            self.head = nn.Linear(seq_len // patch_len * width, pred_len)
        else:
            self.head = ClosedLoopDecoder(width, d_state, patch_len, pred_len)
        self.linear = nn.Linear(seq_len, pred_len)

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, L, N] -> (trend, seasonal) [B, L, N]: moving average with edge replication, and the remainder."""
        pad = (self.moving_avg - 1) // 2
        padded = F.pad(x.transpose(1, 2), (pad, pad), mode="replicate")  # [B, N, L + 2 pad]
        trend = F.avg_pool1d(padded, self.moving_avg, stride=1).transpose(1, 2)  # [B, L, N]
        return trend, x - trend

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> torch.Tensor:
        """Forecast.

        Args:
            x: lookback window [B, L, N].
            x_mark: time features [B, L, F]; accepted for the Forecaster interface and not used (Chimera reads
                only the series).

        Returns:
            [B, pred_len, N].
        """
        check_forecast_input(x, x_mark, self.seq_len, self.n_vars)
        if self.use_norm:
            x, mean, std = normalize_series(x)  # [B, L, N], [B, 1, N], [B, 1, N]
        trend, seasonal = self.decompose(x)  # [B, L, N] each
        grid = (x.shape[0], self.seq_len // self.patch_len, self.patch_len, self.n_vars)
        trend = trend.reshape(grid).transpose(2, 3)  # [B, T, V, P]
        seasonal = seasonal.reshape(grid).transpose(2, 3)  # [B, T, V, P]
        h = torch.cat([self.embed_trend(trend), self.embed_seasonal(seasonal)], dim=-1)  # [B, T, V, E]
        h = h + self.variate_embed  # [B, T, V, E]
        for norm, mixer in zip(self.norms, self.mixers):
            h = h + mixer(norm(h))  # [B, T, V, E]
        feats = self.dropout(self.norm(h)).transpose(1, 2)  # [B, V, T, E]
        if isinstance(self.head, ClosedLoopDecoder):
            forecast = self.head(feats)  # [B, V, S]
        else:
            forecast = self.head(feats.flatten(2))  # [B, V, S]: Linear(T*E -> S)
        out = (forecast + self.linear(x.transpose(1, 2))).transpose(1, 2)  # [B, S, N]
        if self.use_norm:
            out = out * std + mean
        return out


def _example(model: Chimera, batch_size: int):
    x = torch.randn(batch_size, model.seq_len, model.n_vars)  # [B, L, N]
    x_mark = torch.rand(batch_size, model.seq_len, 4) - 0.5  # [B, L, 4]
    return {"x": x, "x_mark": x_mark}, (batch_size, model.pred_len, model.n_vars)


@register_model(domain="timeseries", example_input=_example,
                test_overrides=dict(seq_len=16, pred_len=8, n_vars=3, patch_len=4, d_model=4, d_state=2,
                                    n_layers=1, moving_avg=5))
def chimera(**kwargs) -> Chimera:
    """Chimera (2-D selective SSM over time x variate, trend and seasonal heads, bidirectional over variates)."""
    return Chimera(**kwargs)
