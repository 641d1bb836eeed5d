"""Scan orders: permutations, inverses, continuity of snake orders, PlainMamba's four orders and direction ids."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.core.scan_order import (
    ORDER_NAMES,
    PLAINMAMBA_ORDERS,
    build_scan_orders,
    direction_ids,
    inverse_order,
    is_continuous,
    num_directions,
    scan_order,
)

GRIDS = [(1,), (5,), (1, 4), (4, 1), (2, 3), (3, 3), (3, 4), (4, 4), (2, 3, 2), (3, 2, 4)]


def _plainmamba_walk(H: int, W: int) -> tuple[list[list[int]], list[list[int]]]:
    """PlainMamba's four orders and arrival directions, simulated as a walk (0 start, 1 right, 2 left, 3 up, 4 down)."""
    moves = {(0, 1): 1, (0, -1): 2, (-1, 0): 3, (1, 0): 4}

    def walk(cells):
        order = [i * W + j for i, j in cells]
        dirs = [0] + [moves[(b[0] - a[0], b[1] - a[1])] for a, b in zip(cells[:-1], cells[1:])]
        return order, dirs

    rows = [[(i, j) for j in (range(W) if i % 2 == 0 else range(W - 1, -1, -1))] for i in range(H)]
    o1 = [c for row in rows for c in row]
    # order 2 starts on the bottom row: at the right end going left when H is odd, else at the left end going right
    o2_cells, j_right = [], H % 2 == 0
    for i in range(H - 1, -1, -1):
        o2_cells += [(i, j) for j in (range(W) if j_right else range(W - 1, -1, -1))]
        j_right = not j_right
    cols = [[(i, j) for i in (range(H) if j % 2 == 0 else range(H - 1, -1, -1))] for j in range(W)]
    o3 = [c for col in cols for c in col]
    # order 4 starts on the last column: at the bottom going up when W is odd, else at the top going down
    o4_cells, i_down = [], W % 2 == 0
    for j in range(W - 1, -1, -1):
        o4_cells += [(i, j) for i in (range(H) if i_down else range(H - 1, -1, -1))]
        i_down = not i_down
    results = [walk(cells) for cells in (o1, o2_cells, o3, o4_cells)]
    return [r[0] for r in results], [r[1] for r in results]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name", ORDER_NAMES)
def test_every_order_is_a_permutation_and_inverse_undoes_it(name, grid):
    order = scan_order(name, grid)
    length = math.prod(grid)
    assert order.dtype == torch.int64 and order.shape == (length,)
    assert sorted(order.tolist()) == list(range(length))
    inv = inverse_order(order)
    x = torch.randn(2, length, 3)
    assert torch.equal(x[:, order][:, inv], x)
    assert torch.equal(order[inv], torch.arange(length))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name", [n for n in ORDER_NAMES if n.startswith("snake")])
def test_snake_orders_are_continuous(name, grid):
    order = scan_order(name, grid)
    coords = torch.stack(torch.unravel_index(order, grid), dim=-1)  # [L, m]
    steps = (coords[1:] - coords[:-1]).abs().sum(-1)  # Manhattan distance of each move
    assert bool((steps == 1).all())
    assert is_continuous(order, grid)


def test_raster_on_a_2d_grid_is_not_continuous_and_has_no_direction_ids():
    assert not is_continuous(scan_order("raster", (3, 4)), (3, 4))
    with pytest.raises(ValueError, match="continuous"):
        direction_ids("raster", (3, 4))


def test_small_grids_by_hand():
    # 2 x 3 grid, raster indices  0 1 2 / 3 4 5
    assert scan_order("raster", (2, 3)).tolist() == [0, 1, 2, 3, 4, 5]
    assert scan_order("raster_rev", (2, 3)).tolist() == [5, 4, 3, 2, 1, 0]
    assert scan_order("transpose", (2, 3)).tolist() == [0, 3, 1, 4, 2, 5]
    assert scan_order("snake_h", (2, 3)).tolist() == [0, 1, 2, 5, 4, 3]
    assert scan_order("snake_h_rev", (2, 3)).tolist() == [3, 4, 5, 2, 1, 0]
    assert scan_order("snake_v", (2, 3)).tolist() == [0, 3, 4, 1, 2, 5]
    assert scan_order("snake_v_rev", (2, 3)).tolist() == [5, 2, 1, 4, 3, 0]
    # arrival directions: 0 start, 1 right, 2 left, 3 up, 4 down
    assert direction_ids("snake_h", (2, 3)).tolist() == [0, 1, 1, 4, 2, 2]
    assert direction_ids("snake_h_rev", (2, 3)).tolist() == [0, 1, 1, 3, 2, 2]
    assert direction_ids("snake_v", (2, 3)).tolist() == [0, 4, 1, 3, 1, 4]
    assert direction_ids("snake_v_rev", (2, 3)).tolist() == [0, 3, 2, 4, 2, 3]
    # 3 x 3: odd height, so the reversed row snake starts at the bottom-right corner going left
    assert scan_order("snake_h_rev", (3, 3)).tolist() == [8, 7, 6, 3, 4, 5, 2, 1, 0]
    # 1-D sequences: raster moves right, its reverse moves left
    assert direction_ids("raster", (4,)).tolist() == [0, 1, 1, 1]
    assert direction_ids("raster_rev", (4,)).tolist() == [0, 2, 2, 2]


@pytest.mark.parametrize("grid", [(1, 1), (1, 5), (4, 1), (2, 2), (3, 3), (3, 4), (4, 3), (5, 6), (6, 5)])
def test_plainmamba_orders_and_directions_match_its_walk(grid):
    expected_orders, expected_dirs = _plainmamba_walk(*grid)
    so = build_scan_orders(PLAINMAMBA_ORDERS, grid, with_directions=True)
    assert so.orders.tolist() == expected_orders
    assert so.directions.tolist() == expected_dirs
    assert torch.equal(so.orders[1], so.orders[0].flip(0))  # o2 is o1 reversed, o4 is o3 reversed
    assert torch.equal(so.orders[3], so.orders[2].flip(0))


def test_direction_ids_of_3d_snakes_use_all_axes():
    grid = (2, 3, 2)
    ids = torch.cat([direction_ids(n, grid) for n in ("snake_h", "snake_v", "snake_h_rev", "snake_v_rev")])
    assert int(ids.max()) < num_directions(3) == 7
    assert set(ids.tolist()) == set(range(7))


def test_build_scan_orders_stacks_orders_inverses_and_directions():
    so = build_scan_orders(("snake_h", "snake_v"), (3, 4), with_directions=True)
    assert so.orders.shape == so.inverses.shape == so.directions.shape == (2, 12)
    assert so.num_orders == 2
    for k, name in enumerate(so.names):
        assert torch.equal(so.orders[k], scan_order(name, (3, 4)))
        assert torch.equal(so.orders[k][so.inverses[k]], torch.arange(12))
    assert build_scan_orders(("raster",), (3, 4)).directions is None


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: scan_order("zigzag", (2, 2)), "zigzag"),
        (lambda: scan_order("raster", (2, 0)), "positive"),
        (lambda: scan_order("raster", ()), "grid"),
        (lambda: build_scan_orders("snake_h", (2, 2)), "sequence"),
        (lambda: build_scan_orders(("snake_h", "bad"), (2, 2)), "bad"),
        (lambda: build_scan_orders(("raster",), (2, 2), with_directions=True), "continuous"),
        (lambda: direction_ids(torch.arange(5), (2, 2)), r"\[4\]"),
        (lambda: inverse_order(torch.tensor([0.0, 1.0])), "LongTensor"),
    ],
)
def test_bad_input_raises_clear_errors(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
