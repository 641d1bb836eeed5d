"""LightNet attention: the additive linear recurrence of "You Only Scan Once" (arXiv 2405.21022), with MD-LRPE.

Symbols (per head h; k and q have d_k channels i, v has d_v channels j; t, s index tokens in raster order):

    q_t = phi(x_t W_q)  (phi = SiLU)      k_t = x_t W_k  (no activation)      v_t = x_t W_v
    delta_t = exp(k_t)                    g_t = sum_{s<=t} delta_s          (elementwise over i)

Causal form, the additive linear recurrence (state s_t [d_k, d_v] per head)::

    s_t = lambda_t * s_{t-1} + ktilde_t v_t^T,   lambda_t = g_{t-1} / g_t,   ktilde_t = delta_t / g_t
    o_t = q_t^T s_t                          =>  s_t = sum_{s<=t} (delta_s / g_t) v_s^T

The decay is "additive": g is a running sum, so the *unnormalised* state ``sum_s delta_s v_s^T`` does not depend on
the order in which tokens are scanned. ``lambda`` and ``ktilde`` are computed in log space
(``z_t = logcumsumexp(k)_t``: ``lambda_t = exp(z_{t-1} - z_t)``, ``ktilde_t = exp(k_t - z_t)``), and the recurrence
runs on ``ssmkit.kernels.linear_scan`` with one channel per state entry (i, j) of every head.

Global (non-causal) form, "one scan for N-D": normalising by the total ``g_L`` instead of the running ``g_t`` gives
one global state, the final state of the causal scan in ANY scan order::

    S = sum_s (delta_s / g_L) v_s^T = softmax_over_tokens(K)^T V        o_t = q_t^T S

which is computed with two matmuls (no recurrence kernel is needed for it).

Positions: without positional terms the global form is permutation-equivariant, so MD-LRPE (``ssmkit.core.positional``)
turns ``q_t`` and ``ktilde_t`` into ``[x cos(Theta p), x sin(Theta p)]`` (d_k -> 2 d_k; the decay is repeated for the
two halves), which makes ``q_t . ktilde_s`` depend on the offset ``p_t - p_s`` along every grid axis. MD-TPE is applied
once to the token embeddings by the model (``ssmkit.core.positional.MDTPE``), not inside this mixer.

Output (as in the author's implementation, Doraemonzzz/xmixers ``LightNetAttention``)::

    out = o_proj(RMSNorm(o * gate(W_u2 W_u1 x)))        gate = sigmoid (default) or silu

Provenance: the arXiv text itself is not in this project's reference store. The equations above are taken from the
author's code (xmixers: ``z = logcumsumexp(k)``, ``log lambda = z_{t-1} - z_t``, ``k = exp(k - z)``, ``phi = SiLU``,
low-rank output gate, RMSNorm, o_proj), from flash-linear-attention's LightNet layer, and from the paper's public
reviews (additive decay ``g(t) = sum_{s<=t} delta(s)``, ``softmax(K)`` in the non-causal form, MD-LRPE after the Q/K
projections, MD-TPE after the input embedding).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.mixers.mamba import check_mixer_input
from ssmkit.core.positional import MDLRPE, grid_coordinates
from ssmkit.core.scan_order import resolve_grid
from ssmkit.kernels import linear_scan
from ssmkit.kernels._validate import check_lengths

__all__ = ["LightNetMixer"]

_GATES = {"sigmoid": torch.sigmoid, "silu": F.silu}


class LightNetMixer(nn.Module):
    """LightNet attention mixer over a 1-D sequence or an N-D token grid.

    Args:
        d_model: model width D.
        num_heads: heads H (D divisible by H); head dim d = D / H.
        causal: causal additive recurrence (linear_scan) instead of the global one-scan form.
        grid_ndim: number of grid axes m used by MD-LRPE (d divisible by m).
        use_lrpe: apply MD-LRPE to queries and keys.
        lrpe_base: base of the MD-LRPE frequencies.
        gate_rank: rank of the low-rank output gate W_u2 W_u1 (default: the head dim).
        gate_act: "sigmoid" (author's xmixers) or "silu" (flash-linear-attention).
        bias: bias of the q/k/v/o projections.
        norm_eps: eps of the output RMSNorm.
        backend: kernel backend for ``ssmkit.kernels.linear_scan`` (causal form). The causal form keeps one scan
            channel per state entry, i.e. an [B, L, H * d_k' * d_v] tensor (d_k' = 2 d with MD-LRPE); the global
            form needs only [B, H, d_k', d_v].

    Shapes:
        forward(x [B, L, D], grid=None, lengths=None) -> [B, L, D], L == prod(grid).

    Example:
        >>> mixer = LightNetMixer(16, num_heads=2)
        >>> mixer(torch.randn(2, 12, 16), grid=(3, 4)).shape
        torch.Size([2, 12, 16])
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int = 4,
        causal: bool = False,
        grid_ndim: int = 2,
        use_lrpe: bool = True,
        lrpe_base: float = 10000.0,
        gate_rank: int | None = None,
        gate_act: str = "sigmoid",
        bias: bool = False,
        norm_eps: float = 1e-5,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"LightNetMixer: d_model must be a positive int, found {d_model!r}")
        if not isinstance(num_heads, int) or num_heads < 1 or d_model % num_heads != 0:
            raise ValueError(f"LightNetMixer: num_heads must be a positive divisor of d_model={d_model}, "
                             f"found {num_heads!r}")
        if not isinstance(grid_ndim, int) or grid_ndim < 1:
            raise ValueError(f"LightNetMixer: grid_ndim must be a positive int, found {grid_ndim!r}")
        if gate_act not in _GATES:
            raise ValueError(f"LightNetMixer: gate_act must be one of {tuple(_GATES)}, found {gate_act!r}")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.causal = bool(causal)
        self.grid_ndim = grid_ndim
        self.gate_act = gate_act
        self.backend = backend
        rank = self.head_dim if gate_rank is None else int(gate_rank)

        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.output_gate = nn.Sequential(nn.Linear(d_model, rank, bias=bias), nn.Linear(rank, d_model, bias=bias))
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        self.o_proj = nn.Linear(d_model, d_model, bias=bias)
        self.lrpe = MDLRPE(self.head_dim, grid_ndim, lrpe_base) if use_lrpe else None

    def _check_input(self, x: torch.Tensor, grid, lengths) -> tuple[tuple[int, ...], torch.Tensor | None]:
        check_mixer_input("LightNetMixer", x, self.d_model)
        grid = resolve_grid("LightNetMixer", x.shape[1], grid, self.grid_ndim)
        lengths = check_lengths(lengths, x.shape[0], x.shape[1], x.device, "LightNetMixer")
        return grid, lengths

    def _global(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, coords, valid) -> torch.Tensor:
        """One global state: o_t = q_t^T softmax_tokens(K)^T V; q, k [B, L, H, d], v [B, L, H, d] (float32)."""
        if valid is not None:
            k = k.masked_fill(~valid[:, :, None, None], float("-inf"))  # padded tokens get zero weight
        k_tilde = torch.softmax(k, dim=1)  # [B, L, H, d] = delta_s / g_L
        if self.lrpe is not None:
            q, k_tilde = self.lrpe(q, coords), self.lrpe(k_tilde, coords)  # [B, L, H, 2d]
        state = torch.einsum("blhi,blhj->bhij", k_tilde, v)  # [B, H, d_k, d_v]
        return torch.einsum("blhi,bhij->blhj", q, state)  # [B, L, H, d_v]

    def _causal(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, coords, lengths) -> torch.Tensor:
        """Additive linear recurrence through linear_scan; q, k, v [B, L, H, d] (float32) -> [B, L, H, d]."""
        batch, seqlen, heads, dim_v = v.shape
        z = torch.logcumsumexp(k, dim=1)  # [B, L, H, d] = log g_t
        k_tilde = torch.exp(k - z)  # [B, L, H, d] = delta_t / g_t
        lam = torch.cat([torch.zeros_like(z[:, :1]), torch.exp(z[:, :-1] - z[:, 1:])], dim=1)  # g_{t-1} / g_t
        if self.lrpe is not None:
            q, k_tilde = self.lrpe(q, coords), self.lrpe(k_tilde, coords)  # [B, L, H, 2d]
            lam = torch.cat([lam, lam], dim=-1)  # [B, L, H, 2d]
        dim_k = k_tilde.shape[-1]
        a = lam[..., None].expand(-1, -1, -1, -1, dim_v).reshape(batch, seqlen, heads * dim_k * dim_v)
        b = (k_tilde[..., None] * v[..., None, :]).reshape(batch, seqlen, heads * dim_k * dim_v)
        state = linear_scan(a, b, lengths=lengths, backend=self.backend)  # [B, L, H*d_k*d_v]
        state = state.view(batch, seqlen, heads, dim_k, dim_v)  # s_t
        return torch.einsum("blhi,blhij->blhj", q, state)  # [B, L, H, d_v]

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None,
                lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Mix tokens with the additive linear recurrence (causal) or its global one-scan form.

        Args:
            x: tokens [B, L, D] in raster order of ``grid``.
            grid: grid shape with prod(grid) == L (None: a 1-D sequence).
            lengths: [B] valid prefix per row; padded tokens are ignored and their outputs are 0.

        Returns:
            [B, L, D].
        """
        grid, lengths = self._check_input(x, grid, lengths)
        batch, seqlen, _ = x.shape
        valid = None
        if lengths is not None:
            valid = torch.arange(seqlen, device=x.device)[None] < lengths[:, None]  # [B, L]
        coords = grid_coordinates(grid, x.device) if self.lrpe is not None else None  # [L, m]
        heads, dim = self.num_heads, self.head_dim
        q = F.silu(self.q_proj(x)).float().view(batch, seqlen, heads, dim)  # [B, L, H, d]
        k = self.k_proj(x).float().view(batch, seqlen, heads, dim)  # [B, L, H, d]
        v = self.v_proj(x).float().view(batch, seqlen, heads, dim)  # [B, L, H, d]
        if self.causal:
            o = self._causal(q, k, v, coords, lengths)  # [B, L, H, d]
        else:
            o = self._global(q, k, v, coords, valid)  # [B, L, H, d]
        o = o.reshape(batch, seqlen, self.d_model).to(x.dtype)  # [B, L, D]
        o = o * _GATES[self.gate_act](self.output_gate(x))  # [B, L, D]
        out = self.o_proj(self.norm(o))  # [B, L, D]
        return out if valid is None else out * valid[..., None]
