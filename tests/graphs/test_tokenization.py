"""Random walks, GMN subgraph tokens (hierarchical order, induced subgraphs), node orderings and packing."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.utils import to_undirected

from ssmkit.graphs.layers.tokenization import (
    csr_adjacency,
    node_order,
    node_scores,
    pack_nodes,
    pagerank,
    random_walks,
    sample_subgraph_tokens,
    unpack_nodes,
)


def _graph() -> tuple[torch.Tensor, int]:
    """7 nodes: a path 0-1-2-3, a triangle 3-4-5 and node 6 isolated."""
    edges = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 3]])
    return to_undirected(edges, num_nodes=7), 7


def _hops(edge_index: torch.Tensor, num_nodes: int, source: int) -> list[int]:
    """BFS distance from source (-1 when unreachable)."""
    dist = [-1] * num_nodes
    dist[source], frontier = 0, [source]
    while frontier:
        nxt = []
        for u in frontier:
            for v in edge_index[1, edge_index[0] == u].tolist():
                if dist[v] < 0:
                    dist[v] = dist[u] + 1
                    nxt.append(v)
        frontier = nxt
    return dist


def test_random_walks_follow_edges_and_stay_on_isolated_nodes():
    edge_index, n = _graph()
    rowptr, col = csr_adjacency(edge_index, n)
    edges = set(map(tuple, edge_index.t().tolist()))
    walks = random_walks(rowptr, col, torch.arange(n).repeat(20), 4, torch.Generator().manual_seed(0))
    assert walks.shape == (7 * 20, 5) and torch.equal(walks[:, 0], torch.arange(n).repeat(20))
    for walk in walks.tolist():
        for a, b in zip(walk[:-1], walk[1:]):
            assert (a, b) in edges or (a == b == 6), f"step {a} -> {b} is not an edge"


def test_random_walks_pick_neighbours_uniformly():
    edge_index = to_undirected(torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4]]), num_nodes=5)
    rowptr, col = csr_adjacency(edge_index, 5)
    walks = random_walks(rowptr, col, torch.zeros(4000, dtype=torch.long), 1, torch.Generator().manual_seed(1))
    freq = torch.bincount(walks[:, 1], minlength=5)[1:].float() / 4000
    assert torch.all((freq > 0.2) & (freq < 0.3)), freq


def test_subgraph_tokens_hierarchical_order_sets_and_induced_subgraphs():
    edge_index, n = _graph()
    m, walks, s = 3, 2, 2
    tokens = sample_subgraph_tokens(edge_index, n, m, walks, s, torch.Generator().manual_seed(0))
    assert tokens.nodes.shape == (n, m * s + 1, 1 + m * walks)
    edges = set(map(tuple, edge_index.t().tolist()))
    for v in range(n):
        dist = _hops(edge_index, n, v)
        for t in range(m * s + 1):
            hop = m - t // s if t < m * s else 0  # larger walk lengths first, the node's own token last
            members = [u for u in tokens.nodes[v, t].tolist() if u >= 0]
            assert v in members and len(set(members)) == len(members) <= 1 + hop * walks
            assert all(0 <= dist[u] <= hop for u in members), (v, t, members)
            if t == m * s:
                assert members == [v]
            for a, ua in enumerate(tokens.nodes[v, t].tolist()):
                for b, ub in enumerate(tokens.nodes[v, t].tolist()):
                    expected = ua >= 0 and ub >= 0 and (ua, ub) in edges
                    assert bool(tokens.adjacency[v, t, a, b]) == expected
    assert torch.all(tokens.nodes[6, :, 0] == 6) and torch.all(tokens.nodes[6, :, 1:] == -1)  # isolated node


def test_subgraph_tokens_reach_the_full_walk_length():
    """On a long path, some length-m̂ token of node 0 holds the node at distance m̂ (walks really go m̂ steps)."""
    path = to_undirected(torch.stack([torch.arange(9), torch.arange(1, 10)]), num_nodes=10)
    tokens = sample_subgraph_tokens(path, 10, 3, 4, 3, torch.Generator().manual_seed(0))
    assert (tokens.nodes[0, :3] == 3).any() and not (tokens.nodes[0] > 3).any()


def test_subgraph_tokens_without_edges_and_with_walk_length_zero():
    empty = torch.empty(2, 0, dtype=torch.long)
    tokens = sample_subgraph_tokens(empty, 4, 2, 2, 2)
    assert torch.equal(tokens.nodes[:, :, 0], torch.arange(4)[:, None].expand(4, 5)) and not tokens.adjacency.any()
    edge_index, n = _graph()
    only_nodes = sample_subgraph_tokens(edge_index, n, 0, 3, 3)
    assert only_nodes.nodes.shape == (n, 1, 1) and torch.equal(only_nodes.nodes[:, 0, 0], torch.arange(n))


def test_subgraph_tokens_are_reproducible_with_a_seed():
    edge_index, n = _graph()
    first = sample_subgraph_tokens(edge_index, n, 2, 2, 2, torch.Generator().manual_seed(3)).nodes
    second = sample_subgraph_tokens(edge_index, n, 2, 2, 2, torch.Generator().manual_seed(3)).nodes
    assert torch.equal(first, second)


def test_pagerank_matches_dense_power_iteration_and_ranks_the_hub_last():
    edge_index = to_undirected(torch.tensor([[0, 0, 0, 0, 1], [1, 2, 3, 4, 2]]), num_nodes=5)
    adjacency = torch.zeros(5, 5)
    adjacency[edge_index[0], edge_index[1]] = 1.0
    transition = adjacency / adjacency.sum(1, keepdim=True)  # row-stochastic
    rank = torch.full((5,), 0.2)
    for _ in range(200):
        rank = 0.15 / 5 + 0.85 * transition.t() @ rank
    torch.testing.assert_close(pagerank(edge_index, 5, iterations=200), rank)
    perm = node_order(node_scores(edge_index, 5, "pagerank"), torch.zeros(5, dtype=torch.long))
    assert int(perm[-1]) == 0
    with pytest.raises(ValueError, match="'degree' or 'pagerank'"):
        node_scores(edge_index, 5, "betweenness")


def test_node_order_sorts_each_graph_by_score_with_stable_ties_and_pack_roundtrip():
    batch = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    score = torch.tensor([2.0, 1.0, 2.0, 0.0, 3.0, 0.0, 1.0])
    perm = node_order(score, batch)
    assert perm.tolist() == [1, 0, 2, 3, 5, 6, 4]
    h = torch.randn(7, 4)
    dense, mask, lengths = pack_nodes(h, batch, perm, 3)  # graph 2 has no node
    assert dense.shape == (3, 4, 4) and lengths.tolist() == [3, 4, 1] and mask.sum().item() == 7
    torch.testing.assert_close(dense[0, :3], h[[1, 0, 2]])
    torch.testing.assert_close(unpack_nodes(dense, mask, perm), h)
