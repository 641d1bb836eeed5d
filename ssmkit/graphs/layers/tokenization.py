"""Graph -> token sequences: random-walk subgraph tokens (GMN), node orderings, and [B, L, D] packing.

Subgraph tokens (GMN, Behrouz & Hashemi 2024, §4.1). For node v, walk length m̂ = 1..m and repetition j = 1..s,
sample M random walks of length m̂ from v; the token T_m̂^j(v) is the set of visited nodes (the union of the M walks),
seen through its induced subgraph G[T]. The sequence of v is ordered hierarchically, larger m̂ first, so the node's
own token (m̂ = 0, T_0 = {v}) is last:

    T_m^1 .. T_m^s,  T_{m-1}^1 .. T_{m-1}^s,  ...,  T_1^1 .. T_1^s,  {v}          (L = m * s + 1 tokens)

The s tokens of one m̂ are i.i.d. samples, so their order is already random (the paper shuffles them).
A walk at a node without out-neighbours stays there (isolated nodes get tokens {v}). Everything is vectorized
over all nodes (one gather per walk step over a CSR adjacency); no ``torch_cluster`` is needed.

Node orderings (GMN §4.3, Graph-Mamba): sort the nodes of each graph by a score ascending (degree or PageRank), so
the most important node comes last; ``pack_nodes`` puts each graph's nodes in that order into a right-padded
[G, L_max, D] tensor with ``lengths`` and ``unpack_nodes`` brings the result back to node order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.utils import degree, scatter, to_dense_batch

__all__ = [
    "SubgraphTokens", "csr_adjacency", "node_order", "node_scores", "pack_nodes", "pagerank", "random_walks",
    "sample_subgraph_tokens", "unpack_nodes",
]


@dataclass(frozen=True)
class SubgraphTokens:
    """Random-walk subgraph tokens of every node.

    Attributes:
        nodes: [N, L, K] int64 node ids of each token (a set, each id at most once), -1 in unused slots;
            K = 1 + m * M (the largest possible token), L = m * s + 1 (the last token is {v}).
        adjacency: [N, L, K, K] bool, ``adjacency[v, t, a, b]`` is True when edge (nodes[a] -> nodes[b]) exists:
            the induced subgraph of each token.
    """

    nodes: Tensor
    adjacency: Tensor

    @property
    def valid(self) -> Tensor:
        """[N, L, K] True where a slot holds a node."""
        return self.nodes >= 0


def csr_adjacency(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """CSR form of the out-neighbours: ``col[rowptr[v]:rowptr[v + 1]]`` are the targets of v's edges.

    Returns:
        (rowptr [N + 1] int64, col [E] int64).
    """
    order = torch.argsort(edge_index[0] * num_nodes + edge_index[1])
    src, col = edge_index[0, order], edge_index[1, order]  # [E], [E]
    counts = torch.bincount(src, minlength=num_nodes)  # [N]
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=edge_index.device)
    rowptr[1:] = torch.cumsum(counts, 0)
    return rowptr, col


def random_walks(rowptr: Tensor, col: Tensor, start: Tensor, length: int,
                 generator: torch.Generator | None = None) -> Tensor:
    """Uniform random walks (a node without out-neighbours stays in place).

    Args:
        rowptr, col: CSR adjacency (``csr_adjacency``).
        start: [W] start nodes.
        length: number of steps m̂ >= 0.
        generator: random generator (None: torch's default).

    Returns:
        [W, length + 1] visited nodes, column 0 = start.
    """
    steps = [start]
    current = start
    for _ in range(length):
        if col.numel() == 0:
            steps.append(current)
            continue
        first, count = rowptr[current], rowptr[current + 1] - rowptr[current]  # [W], [W]
        # rand in [0, 1) times count gives an index in [0, count - 1]; count = 0 is masked below.
        pick = (torch.rand(current.shape, generator=generator, device=current.device) * count).long()  # [W]
        nxt = col[(first + pick).clamp(max=col.numel() - 1)]  # [W]
        current = torch.where(count > 0, nxt, current)  # [W]
        steps.append(current)
    return torch.stack(steps, dim=1)


def _unique_rows(nodes: Tensor, width: int, sentinel: int) -> Tensor:
    """Each row's distinct values first (sorted), then -1; cut or padded to ``width`` columns. nodes: [R, C]."""
    values, _ = torch.sort(nodes, dim=1)  # [R, C]
    duplicate = torch.zeros_like(values, dtype=torch.bool)
    duplicate[:, 1:] = values[:, 1:] == values[:, :-1]
    values, _ = torch.sort(values.masked_fill(duplicate, sentinel), dim=1)  # [R, C]
    if values.shape[1] < width:
        pad = values.new_full((values.shape[0], width - values.shape[1]), sentinel)
        values = torch.cat([values, pad], dim=1)
    values = values[:, :width]  # [R, width]
    return values.masked_fill(values == sentinel, -1)


def sample_subgraph_tokens(edge_index: Tensor, num_nodes: int, walk_length: int, num_walks: int, repeats: int,
                           generator: torch.Generator | None = None) -> SubgraphTokens:
    """GMN neighborhood sampling for every node (see the module docstring).

    Args:
        edge_index: [2, E] directed edges (store both directions for an undirected graph).
        num_nodes: N.
        walk_length: m >= 0 (0: node tokens only, L = 1).
        num_walks: M >= 1 walks per token.
        repeats: s >= 1 tokens per walk length.
        generator: random generator (None: torch's default).

    Returns:
        ``SubgraphTokens`` with nodes [N, m * s + 1, 1 + m * M].
    """
    device = edge_index.device
    width = 1 + walk_length * num_walks
    starts = torch.arange(num_nodes, device=device)  # [N]
    rowptr, col = csr_adjacency(edge_index, num_nodes)
    tokens = []
    for hop in range(walk_length, 0, -1):
        walk_starts = starts.repeat_interleave(repeats * num_walks)  # [N * s * M]
        walks = random_walks(rowptr, col, walk_starts, hop, generator)  # [N * s * M, hop + 1]
        visited = walks.reshape(num_nodes * repeats, num_walks * (hop + 1))  # [N * s, M * (hop + 1)]
        tokens.append(_unique_rows(visited, width, num_nodes).reshape(num_nodes, repeats, width))
    own = torch.full((num_nodes, 1, width), -1, dtype=torch.long, device=device)
    own[:, 0, 0] = starts
    nodes = torch.cat([*tokens, own], dim=1)  # [N, L, K]
    return SubgraphTokens(nodes=nodes, adjacency=_induced_adjacency(nodes, edge_index, num_nodes))


def _induced_adjacency(nodes: Tensor, edge_index: Tensor, num_nodes: int) -> Tensor:
    """[N, L, K, K] bool: slot pair (a, b) of a token is an edge of the graph (lookup in the sorted edge keys)."""
    keys = torch.sort(edge_index[0] * num_nodes + edge_index[1]).values  # [E]
    valid = nodes >= 0  # [N, L, K]
    ids = nodes.clamp(min=0)
    pairs = ids[..., :, None] * num_nodes + ids[..., None, :]  # [N, L, K, K]
    if keys.numel() == 0:
        return torch.zeros_like(pairs, dtype=torch.bool)
    found = torch.searchsorted(keys, pairs).clamp(max=keys.numel() - 1)  # [N, L, K, K]
    return (keys[found] == pairs) & valid[..., :, None] & valid[..., None, :]


def pagerank(edge_index: Tensor, num_nodes: int, damping: float = 0.85, iterations: int = 30) -> Tensor:
    """PageRank by power iteration, r = (1 - d) / N + d * Σ_{j -> i} r_j / outdeg(j) (dangling mass dropped).

    Graphs of a batch are disjoint, so each graph's scores are its own PageRank up to one factor per graph and the
    order inside a graph is the one of the graph alone.

    Returns:
        [N] float scores.
    """
    src, dst = edge_index
    out_degree = degree(src, num_nodes).clamp(min=1)  # [N]
    rank = torch.full((num_nodes,), 1.0 / max(num_nodes, 1), device=edge_index.device)  # [N]
    for _ in range(iterations):
        rank = (1 - damping) / max(num_nodes, 1) + damping * scatter(
            (rank / out_degree)[src], dst, dim=0, dim_size=num_nodes, reduce="sum")
    return rank


def node_scores(edge_index: Tensor, num_nodes: int, kind: str) -> Tensor:
    """Importance score of every node for the ordering: ``"degree"`` (out-degree) or ``"pagerank"``. Returns [N]."""
    if kind == "degree":
        return degree(edge_index[0], num_nodes)
    if kind == "pagerank":
        return pagerank(edge_index, num_nodes)
    raise ValueError(f"node ordering must be 'degree' or 'pagerank', found {kind!r}")


def node_order(score: Tensor, batch: Tensor, noise: Tensor | None = None) -> Tensor:
    """Permutation that groups nodes by graph and sorts each graph's nodes by ``score + noise`` ascending.

    Ties keep node order (stable sort). Args: score [N], batch [N] sorted, noise [N] or None. Returns perm [N].
    """
    key = score if noise is None else score + noise  # [N]
    by_score = torch.argsort(key, stable=True)  # [N]
    return by_score[torch.argsort(batch[by_score], stable=True)]


def pack_nodes(h: Tensor, batch: Tensor, perm: Tensor, num_graphs: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded per-graph sequences in ``perm`` order.

    Args:
        h: [N, D] node features.   batch: [N] sorted graph ids.   perm: [N] from ``node_order``.
        num_graphs: G.

    Returns:
        (dense [G, L_max, D] with zeros in padding, mask [G, L_max] True on nodes, lengths [G] >= 1).
    """
    dense, mask = to_dense_batch(h[perm], batch[perm], batch_size=num_graphs)  # [G, L, D], [G, L]
    lengths = mask.sum(dim=1).clamp(min=1)  # [G] (a graph without nodes gets one padded step, never read)
    return dense, mask, lengths


def unpack_nodes(dense: Tensor, mask: Tensor, perm: Tensor) -> Tensor:
    """Inverse of ``pack_nodes``: [G, L_max, D] -> [N, D] in the original node order."""
    out = dense[mask]  # [N, D] in perm order
    return out[torch.argsort(perm)]
