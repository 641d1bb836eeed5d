"""Multi-dimensional relative positional encodings of LightNet (arXiv 2405.21022): MD-LRPE and MD-TPE.

Both work on a token grid ``grid = (n_0, ..., n_{m-1})`` stored in raster order (see ``ssmkit.core.scan_order``); a
token's coordinates are ``p = (p_0, ..., p_{m-1})``.

MD-LRPE (multi-dimensional linearized relative positional encoding), applied to queries and keys of each head. The
head dim d is split into m equal chunks, one per grid axis; channel c of chunk a turns by the angle
``theta_c * p_a`` and the "cosine" form doubles the dim::

    lrpe(x, p) = [x * cos(Theta p), x * sin(Theta p)]           # [..., d] -> [..., 2d]
    lrpe(q, p) . lrpe(k, p') = sum_c q_c k_c cos(theta_c (p_a(c) - p'_a(c)))

so query-key products depend on positions only through the offset ``p - p'`` (relative), for every axis at once.
``theta`` follows RoPE's geometric frequencies ``base^(-j / (d/m))``, j = 0..d/m-1, the same for every axis.

MD-TPE (multi-dimensional Toeplitz positional encoding), applied once to the token embeddings. Along each axis a it
mixes the tokens of every line parallel to that axis with a per-head Toeplitz (decaying) kernel and the results of
all axes are summed::

    t_a(x)_p = (q_h . k_h) * sum_{p' on the line of p along a} lambda_h ** |p_a - p'_a| * x_{p'}   (per head h)
    mdtpe(x) = x + sum_a o_proj_a(group_rms_norm_a(t_a(x)))

with learned vectors q, k, a per-head decay ``lambda_h = sigmoid(log_decay_h)`` and, in the causal form, only
``p'_a <= p_a``. Each axis is a first-order recurrence ``h_t = lambda h_{t-1} + x_t`` and runs on
``ssmkit.kernels.linear_scan`` (a forward and a reverse scan for the non-causal form), so its cost is linear in L.
The structure (learned q, k, decay, group RMS norm, output projection, per-axis sum) follows the author's reference
implementation (Doraemonzzz/xmixers ``Tpe`` / ``MdTpe``); adding the result to x is this module's choice.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmkit.kernels import linear_scan

__all__ = ["MDLRPE", "MDTPE", "GroupRMSNorm", "grid_coordinates"]


def grid_coordinates(grid: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """Coordinates of every raster position of ``grid``.

    Args:
        grid: grid shape (n_0, ..., n_{m-1}).
        device: device of the result.

    Returns:
        LongTensor [L, m], L = prod(grid); row t holds the coordinates of raster position t.
    """
    if not isinstance(grid, (tuple, list)) or not grid or not all(isinstance(n, int) and n >= 1 for n in grid):
        raise ValueError(f"grid must be a non-empty tuple of positive ints, found {grid!r}")
    index = torch.arange(math.prod(grid), device=device)
    return torch.stack(torch.unravel_index(index, tuple(grid)), dim=-1)  # [L, m]


class MDLRPE(nn.Module):
    """Multi-dimensional linearized relative positional encoding ("cosine" form, doubles the head dim).

    Args:
        head_dim: per-head feature size d (divisible by ``ndim``).
        ndim: number of grid axes m.
        base: base of the geometric frequencies.

    Shapes:
        forward(x [B, L, H, d], coords [L, m]) -> [B, L, H, 2d].
    """

    def __init__(self, head_dim: int, ndim: int = 2, base: float = 10000.0) -> None:
        super().__init__()
        if not isinstance(ndim, int) or ndim < 1:
            raise ValueError(f"MDLRPE: ndim must be a positive int, found {ndim!r}")
        if not isinstance(head_dim, int) or head_dim < ndim or head_dim % ndim != 0:
            raise ValueError(f"MDLRPE: head_dim must be a positive multiple of ndim={ndim}, found {head_dim!r}")
        self.head_dim = head_dim
        self.ndim = ndim
        chunk = head_dim // ndim
        theta = base ** (-torch.arange(chunk, dtype=torch.float32) / chunk)  # [d/m]
        self.register_buffer("theta", theta, persistent=False)

    def angles(self, coords: torch.Tensor) -> torch.Tensor:
        """Angle of every channel at every position: [L, m] -> [L, d] (chunk a uses the a-th coordinate)."""
        if coords.dim() != 2 or coords.shape[1] != self.ndim:
            raise ValueError(f"MDLRPE: coords must have shape [L, {self.ndim}], found {list(coords.shape)}")
        angle = coords.to(self.theta.dtype)[:, :, None] * self.theta  # [L, m, d/m]
        return angle.reshape(coords.shape[0], self.head_dim)  # [L, d]

    def forward(self, x: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Encode positions into x.

        Args:
            x: [B, L, H, d].
            coords: integer coordinates [L, m] (``grid_coordinates``).

        Returns:
            [B, L, H, 2d]: ``[x cos, x sin]`` of the per-channel angles.
        """
        if x.dim() != 4 or x.shape[-1] != self.head_dim or x.shape[1] != coords.shape[0]:
            raise ValueError(f"MDLRPE: x must have shape [B, {coords.shape[0]}, H, {self.head_dim}], "
                             f"found {list(x.shape)}")
        angle = self.angles(coords)[None, :, None, :]  # [1, L, 1, d]
        return torch.cat([x * torch.cos(angle).to(x.dtype), x * torch.sin(angle).to(x.dtype)], dim=-1)


class GroupRMSNorm(nn.Module):
    """RMS norm over each of ``num_groups`` equal channel groups, with one learned scale per channel.

    Shapes:
        forward(x [..., D]) -> [..., D].
    """

    def __init__(self, dim: int, num_groups: int, eps: float = 1e-5) -> None:
        super().__init__()
        if dim % num_groups != 0:
            raise ValueError(f"GroupRMSNorm: num_groups must divide dim={dim}, found {num_groups}")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each channel group to unit RMS, then scale."""
        grouped = x.float().unflatten(-1, (self.num_groups, -1))  # [..., G, D/G]
        grouped = grouped * torch.rsqrt(grouped.square().mean(-1, keepdim=True) + self.eps)
        return (grouped.flatten(-2) * self.weight).to(x.dtype)  # [..., D]


class MDTPE(nn.Module):
    """Multi-dimensional Toeplitz positional encoding: per-axis decaying Toeplitz mixing, summed, added to x.

    Args:
        dim: model width D.
        num_heads: heads H (D divisible by H); each head has its own decay.
        ndim: number of grid axes m (one Toeplitz mixer per axis).
        causal: only look back along each axis (p'_a <= p_a).
        eps: eps of the group RMS norms.
        backend: kernel backend for ``ssmkit.kernels.linear_scan``.

    Shapes:
        forward(x [B, L, D], grid=None) -> [B, L, D], L == prod(grid) (grid None: a 1-D sequence).
    """

    def __init__(self, dim: int, num_heads: int, ndim: int = 2, causal: bool = False, eps: float = 1e-5,
                 backend: str = "auto") -> None:
        super().__init__()
        if not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads != 0:
            raise ValueError(f"MDTPE: num_heads must be a positive divisor of dim={dim}, found {num_heads!r}")
        if not isinstance(ndim, int) or ndim < 1:
            raise ValueError(f"MDTPE: ndim must be a positive int, found {ndim!r}")
        self.dim = dim
        self.num_heads = num_heads
        self.ndim = ndim
        self.causal = bool(causal)
        self.backend = backend
        head_dim = dim // num_heads
        self.q = nn.Parameter(torch.randn(ndim, dim) / head_dim ** 0.5)
        self.k = nn.Parameter(torch.randn(ndim, dim) / head_dim ** 0.5)
        self.log_decay = nn.Parameter(torch.randn(ndim, num_heads))
        self.norms = nn.ModuleList(GroupRMSNorm(dim, num_heads, eps) for _ in range(ndim))
        self.o_projs = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(ndim))

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-axis, per-head Toeplitz scale ``q_h . k_h`` and decay ``sigmoid(log_decay)``; both [m, H]."""
        qk = (self.q * self.k).unflatten(-1, (self.num_heads, -1)).sum(-1)  # [m, H]
        return qk, torch.sigmoid(self.log_decay)

    def _axis(self, x: torch.Tensor, grid: tuple[int, ...], axis: int, scale: torch.Tensor,
              decay: torch.Tensor) -> torch.Tensor:
        """Toeplitz mixing along one axis; x [B, L, D] -> [B, L, D]."""
        batch, seqlen, dim = x.shape
        head_dim = dim // self.num_heads
        lines = x.reshape(batch, *grid, dim).movedim(axis + 1, -2)  # [B, ..., n_a, D]
        moved_shape = lines.shape
        lines = lines.reshape(-1, grid[axis], dim)  # [B * L / n_a, n_a, D]
        a = decay.repeat_interleave(head_dim).to(lines.dtype).expand_as(lines).contiguous()  # [*, n_a, D]
        h = linear_scan(a, lines, backend=self.backend)  # [*, n_a, D] sum over p' <= p
        if not self.causal:
            h = h + linear_scan(a, lines, reverse=True, backend=self.backend) - lines  # add p' > p
        h = h * scale.repeat_interleave(head_dim).to(h.dtype)  # [*, n_a, D]
        return h.reshape(moved_shape).movedim(-2, axis + 1).reshape(batch, seqlen, dim)  # [B, L, D]

    def forward(self, x: torch.Tensor, grid: tuple[int, ...] | None = None) -> torch.Tensor:
        """Add the multi-dimensional Toeplitz positional term to x.

        Args:
            x: [B, L, D] tokens in raster order of ``grid``.
            grid: grid shape of m axes (None: (1, ..., 1, L)).

        Returns:
            [B, L, D].
        """
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.dim:
            found = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"MDTPE: x must have shape [B, L, {self.dim}], found {found}")
        if grid is None:
            grid = (1,) * (self.ndim - 1) + (x.shape[1],)
        grid = tuple(int(n) for n in grid)
        if len(grid) != self.ndim or math.prod(grid) != x.shape[1]:
            raise ValueError(f"MDTPE: grid must have {self.ndim} axes with prod(grid) == L={x.shape[1]}, "
                             f"found {grid}")
        scale, decay = self.coefficients()  # [m, H] each
        out = x
        for axis in range(self.ndim):
            mixed = self._axis(x, grid, axis, scale[axis], decay[axis])  # [B, L, D]
            out = out + self.o_projs[axis](self.norms[axis](mixed))  # [B, L, D]
        return out

