"""Scan orders for N-D token grids: index permutations, their inverses, and per-step direction ids.

Tokens of a grid with shape ``grid = (n_0, ..., n_{m-1})`` are stored in raster (row-major) order: the token at
coordinates ``(i_0, ..., i_{m-1})`` sits at position ``sum_a i_a * prod(n_{a+1:})`` (for 2-D: ``i * W + j``).

An *order* is a LongTensor ``o`` of shape [L] with ``x_scan = x[:, o]``: step ``t`` of the scan visits raster
position ``o[t]``. Its *inverse* ``inv`` (``inv[o[t]] = t``) brings scan outputs back: ``y = y_scan[:, inv]``.

Named orders (``h`` = last axis fastest, ``v`` = first axis fastest; for 2-D, ``h`` runs along rows, ``v`` along
columns):

====================  ===========================================================================================
``raster``            row-major order (the identity)
``raster_rev``        ``raster`` reversed
``transpose``         column-major order (first axis fastest)
``transpose_rev``     ``transpose`` reversed
``snake_h``           boustrophedon with the last axis fastest: every other line is walked backwards, so consecutive
                      steps are grid neighbours (PlainMamba's order 1: row 0 left->right, row 1 right->left, ...)
``snake_h_rev``       ``snake_h`` reversed (PlainMamba's order 2, starting on the last row)
``snake_v``           boustrophedon with the first axis fastest (PlainMamba's order 3: column 0 top->bottom, ...)
``snake_v_rev``       ``snake_v`` reversed (PlainMamba's order 4, starting on the last column)
====================  ===========================================================================================

``PLAINMAMBA_ORDERS`` lists PlainMamba's four orders in its own sequence (o1, o2, o3, o4).

Direction ids (PlainMamba's "direction-aware updating") are given per scan step: ``dirs[t]`` is the direction of the
move that *arrives* at step ``t`` (``dirs[0] = 0``, "start"). For a move along axis ``a`` let ``r = m - 1 - a`` (the
axis counted from the last one). The last axis (``r = 0``) has ids 1 (+1, "right") and 2 (-1, "left"); every other
axis has ``2r + 1`` (-1) and ``2r + 2`` (+1). For 2-D this is exactly PlainMamba's table
``0 start, 1 right, 2 left, 3 up, 4 down``; an m-D grid uses ``1 + 2m`` ids. Direction ids exist only for orders whose
consecutive steps are grid neighbours (the snake orders, and every order of a 1-D grid).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = [
    "ORDER_NAMES",
    "PLAINMAMBA_ORDERS",
    "ScanOrders",
    "build_scan_orders",
    "direction_ids",
    "inverse_order",
    "is_continuous",
    "num_directions",
    "scan_order",
]

ORDER_NAMES = (
    "raster",
    "raster_rev",
    "transpose",
    "transpose_rev",
    "snake_h",
    "snake_h_rev",
    "snake_v",
    "snake_v_rev",
)
PLAINMAMBA_ORDERS = ("snake_h", "snake_h_rev", "snake_v", "snake_v_rev")


def _check_grid(grid) -> tuple[int, ...]:
    """Validate a grid shape and return it as a tuple of positive ints."""
    if isinstance(grid, torch.Size):
        grid = tuple(grid)
    if not isinstance(grid, (tuple, list)) or len(grid) == 0:
        raise TypeError(f"grid must be a non-empty tuple of positive ints such as (H, W), found {grid!r}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid):
        raise ValueError(f"grid must contain positive ints, found {tuple(grid)!r}")
    return tuple(grid)


def _snake(shape: tuple[int, ...]) -> torch.Tensor:
    """Boustrophedon over ``shape`` (last axis fastest), as raster indices of ``shape``; [prod(shape)]."""
    if len(shape) == 1:
        return torch.arange(shape[0])
    inner = _snake(shape[1:])  # [M] raster indices of the sub-grid shape[1:]
    size = inner.numel()
    # slab i walks the inner snake forwards for even i and backwards for odd i, so slab i+1 starts beside the end of i
    slabs = [i * size + (inner if i % 2 == 0 else inner.flip(0)) for i in range(shape[0])]
    return torch.cat(slabs)


def _axes_reversed(grid: tuple[int, ...], order_of_reversed: torch.Tensor) -> torch.Tensor:
    """Map an order computed on the axis-reversed grid back to raster indices of ``grid``."""
    reversed_grid = grid[::-1]
    coords = torch.stack(torch.unravel_index(order_of_reversed, reversed_grid), dim=-1)  # [L, m] in reversed axes
    coords = coords.flip(-1)  # [L, m] in the axes of grid
    strides = torch.tensor([math.prod(grid[a + 1:]) for a in range(len(grid))])  # [m]
    return (coords * strides).sum(-1)  # [L]


@functools.lru_cache(maxsize=256)
def _scan_order_cached(name: str, grid: tuple[int, ...]) -> torch.Tensor:
    length = math.prod(grid)
    base, rev = (name[:-4], True) if name.endswith("_rev") else (name, False)
    if base == "raster":
        order = torch.arange(length)
    elif base == "transpose":
        order = _axes_reversed(grid, torch.arange(length))
    elif base == "snake_h":
        order = _snake(grid)
    else:  # snake_v
        order = _axes_reversed(grid, _snake(grid[::-1]))
    return order.flip(0) if rev else order


def scan_order(name: str, grid: tuple[int, ...]) -> torch.Tensor:
    """Index permutation of a named scan order.

    Args:
        name: one of ``ORDER_NAMES``.
        grid: grid shape ``(n_0, ..., n_{m-1})``; L = prod(grid).

    Returns:
        LongTensor [L] on the CPU: step t of the scan visits raster position ``order[t]``.

    Example:
        >>> scan_order("snake_h", (2, 3)).tolist()
        [0, 1, 2, 5, 4, 3]
    """
    grid = _check_grid(grid)
    if name not in ORDER_NAMES:
        raise ValueError(f"scan order name must be one of {ORDER_NAMES}, found {name!r}")
    return _scan_order_cached(name, grid).clone()


def inverse_order(order: torch.Tensor) -> torch.Tensor:
    """Inverse permutation: ``inv[order[t]] = t``, so ``x[..., order, :][..., inv, :] == x``.

    Args:
        order: LongTensor [..., L] holding a permutation of 0..L-1 in its last dim.

    Returns:
        LongTensor with the shape of ``order``.
    """
    if not isinstance(order, torch.Tensor) or order.dtype != torch.int64 or order.dim() < 1:
        found = f"{order.dtype} tensor of shape {list(order.shape)}" if isinstance(order, torch.Tensor) else order
        raise TypeError(f"order must be a LongTensor [..., L], found {found!r}")
    steps = torch.arange(order.shape[-1], device=order.device).expand_as(order)  # [..., L]
    return torch.empty_like(order).scatter_(-1, order, steps)


def num_directions(ndim: int) -> int:
    """Number of direction ids of an ``ndim``-D grid: 1 ("start") + 2 per axis (5 for 2-D, as in PlainMamba)."""
    return 1 + 2 * ndim


def _step_directions(order: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor | None:
    """Direction ids per step, or None when some step is not a move to a grid neighbour."""
    ndim = len(grid)
    coords = torch.stack(torch.unravel_index(order, grid), dim=-1)  # [L, m]
    moves = coords[1:] - coords[:-1]  # [L-1, m]
    if moves.numel() and not bool((moves.abs().sum(-1) == 1).all()):
        return None
    axis = moves.abs().argmax(-1)  # [L-1]
    sign = moves.gather(-1, axis[:, None]).squeeze(-1)  # [L-1] in {-1, +1}
    r = ndim - 1 - axis  # [L-1] axis counted from the last one
    positive_first = r == 0  # the last axis lists +1 ("right") first, PlainMamba's table
    offset = torch.where(positive_first, (sign < 0).long(), (sign > 0).long())  # [L-1]
    ids = 2 * r + 1 + offset  # [L-1]
    return torch.cat([torch.zeros(1, dtype=torch.long), ids])  # [L]


def is_continuous(order: torch.Tensor, grid: tuple[int, ...]) -> bool:
    """True when every consecutive pair of steps of ``order`` are grid neighbours (a continuous scan)."""
    grid = _check_grid(grid)
    return _step_directions(order.cpu(), grid) is not None


def direction_ids(order: torch.Tensor | str, grid: tuple[int, ...]) -> torch.Tensor:
    """Direction of the move that arrives at each scan step (see the module docstring for the id table).

    Args:
        order: a LongTensor [L] or the name of an order.
        grid: grid shape; L = prod(grid).

    Returns:
        LongTensor [L] in scan order (``dirs[t]`` belongs to step t, i.e. to raster position ``order[t]``);
        ``dirs[0] == 0``.

    Raises:
        ValueError: when some step of the order jumps (it is not continuous, e.g. ``raster`` on a 2-D grid).
    """
    grid = _check_grid(grid)
    if isinstance(order, str):
        order = scan_order(order, grid)
    if order.shape != (math.prod(grid),):
        raise ValueError(f"order must have shape [{math.prod(grid)}] for grid {grid}, found {list(order.shape)}")
    dirs = _step_directions(order.cpu(), grid)
    if dirs is None:
        raise ValueError(f"direction ids need a continuous order (consecutive steps are grid neighbours); the given "
                         f"order on grid {grid} jumps between non-neighbours (use a snake_* order)")
    return dirs


@dataclass(frozen=True)
class ScanOrders:
    """K scan orders of one grid, stacked.

    Attributes:
        names: the K order names.
        grid: the grid shape.
        orders: LongTensor [K, L]; ``orders[k, t]`` is the raster position visited at step t of scan k.
        inverses: LongTensor [K, L]; ``inverses[k]`` undoes ``orders[k]``.
        directions: LongTensor [K, L] of per-step direction ids, or None unless requested.
    """

    names: tuple[str, ...]
    grid: tuple[int, ...]
    orders: torch.Tensor
    inverses: torch.Tensor
    directions: torch.Tensor | None

    @property
    def num_orders(self) -> int:
        """K, the number of stacked orders."""
        return len(self.names)

    def to(self, device: torch.device | str) -> ScanOrders:
        """The same orders with every tensor on ``device``."""
        dirs = None if self.directions is None else self.directions.to(device)
        return ScanOrders(self.names, self.grid, self.orders.to(device), self.inverses.to(device), dirs)


@functools.lru_cache(maxsize=128)
def _build_cached(names: tuple[str, ...], grid: tuple[int, ...], with_directions: bool) -> ScanOrders:
    orders = torch.stack([scan_order(n, grid) for n in names])  # [K, L]
    dirs = torch.stack([direction_ids(o, grid) for o in orders]) if with_directions else None  # [K, L]
    return ScanOrders(names, grid, orders, inverse_order(orders), dirs)


def build_scan_orders(names, grid: tuple[int, ...], with_directions: bool = False) -> ScanOrders:
    """Stack K named orders of ``grid`` with their inverses (and direction ids). Results are cached per grid.

    Args:
        names: sequence of K names from ``ORDER_NAMES``.
        grid: grid shape.
        with_directions: also compute per-step direction ids (every order must then be continuous).

    Returns:
        ScanOrders with CPU tensors (call ``.to(device)``).

    Example:
        >>> so = build_scan_orders(PLAINMAMBA_ORDERS, (3, 4), with_directions=True)
        >>> so.orders.shape, so.directions.shape
        (torch.Size([4, 12]), torch.Size([4, 12]))
    """
    if isinstance(names, str) or not isinstance(names, (tuple, list)) or len(names) == 0:
        raise TypeError(f"names must be a non-empty sequence of order names from {ORDER_NAMES}, found {names!r}")
    for name in names:
        if name not in ORDER_NAMES:
            raise ValueError(f"scan order name must be one of {ORDER_NAMES}, found {name!r}")
    return _build_cached(tuple(names), _check_grid(grid), bool(with_directions))


def resolve_grid(owner: str, seqlen: int, grid, grid_ndim: int) -> tuple[int, ...]:
    """The token grid of a [B, L, D] input: ``grid`` checked against L, or a 1-D grid (1, ..., 1, L) when None.

    Raises:
        ValueError: ``grid`` is not a tuple of ``grid_ndim`` ints or its product is not L (message names both).
    """
    if grid is None:
        return (1,) * (grid_ndim - 1) + (seqlen,)
    if isinstance(grid, torch.Size):
        grid = tuple(grid)
    if not isinstance(grid, (tuple, list)) or len(grid) != grid_ndim:
        raise ValueError(f"{owner}: grid must be a tuple of {grid_ndim} ints (grid_ndim), found {grid!r}")
    grid = tuple(int(n) for n in grid)
    if math.prod(grid) != seqlen:
        raise ValueError(f"{owner}: prod(grid) must equal L={seqlen}, found grid {grid} (prod {math.prod(grid)})")
    return grid
