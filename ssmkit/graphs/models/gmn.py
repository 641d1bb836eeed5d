"""GMN: "Graph Mamba: Towards Learning on Graphs with State Space Models" (Behrouz & Hashemi, KDD 2024,
arXiv 2402.08678).

The authors released no code (GraphMamba/GMN holds a README and a figure), so this follows the paper text: §4.1-4.3,
Algorithms 1-2 and Figure 1. Equations and the choices made here (E = edges, D = hidden width):

1. Tokenization (§4.1, ``layers/tokenization.py``). For node v, m̂ = 1..m and j = 1..s: M random walks of length m̂
   from v; token T_m̂^j(v) = the union of their visited nodes, i.e. the induced subgraph G[T]. m = 0 gives node
   tokens only. Walks are re-sampled at every training forward (fresh samples per step); in eval mode a generator
   seeded with ``eval_seed`` makes the forward deterministic.
2. Token ordering. Subgraph tokens: the paper's implicit hierarchical order reversed, larger m̂ first, the node's own
   token last: x^{ms}, ..., x^1, x_v (§4.1: "we use the reverse of initial order"); the s samples of one m̂ are i.i.d.
   so they are already in random order. Node tokens (§4.3): each graph's nodes sorted by degree (the paper's
   experiments) or PageRank, ascending, ties kept in node-index order; the most important node is scanned last.
3. PE/SE (optional, eq. 6): x_v <- x_v || p_v with p = ``data.laplacian_eigenvector_pe`` or ``data.random_walk_pe``
   (torch_geometric ``AddLaplacianEigenvectorPE`` / ``AddRandomWalkPE``), then a linear map to D.
4. Local encoding of a token (eq. 7, φ): the paper allows an MPNN or RWF; here φ is one GIN step on the induced
   subgraph with a sum readout: φ(T) = W_2 Σ_{u∈T} ReLU(W_1 x_u + b_1 + Σ_{w∈T, w->u ∈ E} W_1 x_w) + b_2.
   Edge features are not used inside φ (they enter through the local MPNN of step 6).
5. Bidirectional Mamba over each node's token sequence (eq. 9-10, Algorithm 2): ``subgraph_layers`` pre-norm
   blocks (LayerNorm -> ``core.BiMamba``, residual) over [N, m s + 1, D]; the output at the last position (the
   node's own token) is the node encoding. Deviation: ``core.BiMamba`` is Vim's v2 layout, whose two directions share
   the input projection and the gate (Algorithm 2 gives each direction its own W_input and gate); the backward scan
   runs through the kernel's ``reverse=`` instead of a reversed copy, which is the same function.
6. Last layers (§4.2 "Last Layer(s)", Algorithm 1 line 18: Y = BiMamba(Y) + Ψ(G, X)), ``num_layers`` times, in
   GPS form (§4.3: with m = 0 GMN is GPS with the Transformer replaced by bidirectional Mamba)::

       h_seq   = BN(h + Dropout(BiMamba(LayerNorm(h)) over each graph's ordered nodes))   # lengths: no padding leak
       h_local = GatedGCN(h, e) (residual + BN inside) or BN(h + Dropout(GINE(h, e)))  or absent (GMN-)
       h       = h_seq + h_local;   h = BN(h + FFN(h)),  FFN = Linear(D, 2D) -> ReLU -> Dropout -> Linear -> Dropout

   BatchNorm, as GPS: per-channel statistics over the nodes keep nodes apart even when the input features are tiny
   (row-normalized bag-of-words); with LayerNorms in its place GMN did not learn Cora at all in 40 epochs. Its
   running statistics lag a short full-batch training, though (40 epochs on Cora, lr 0.01: 0.66 validation
   accuracy with batch statistics, 0.10 with the running ones), so such runs need enough epochs or a lower rate.
   Graphs of a batch are packed right-padded into [G, N_max, D] and BiMamba gets ``lengths``, so padding reaches
   neither direction.
7. Head: task="node": MLP per node; task="graph": mean over the graph's nodes, then MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.data import Data
from torch_geometric.nn import BatchNorm, GINEConv

from ssmkit.core.block import Backbone
from ssmkit.core.drop import Dropout
from ssmkit.core.mixers import BiMamba
from ssmkit.core.registry import register_model

from ..layers.encoders import EdgeEncoder, NodeEncoder, TaskHead, check_model_args, example_input
from ..layers.gated_gcn import GatedGCNLayer
from ..layers.tokenization import (
    SubgraphTokens,
    node_order,
    node_scores,
    pack_nodes,
    sample_subgraph_tokens,
    unpack_nodes,
)
from ..layers.validation import read_graph

__all__ = ["GMN", "GMNLayer", "SubgraphTokenEncoder"]

LOCAL_MPNNS = ("gatedgcn", "gine", "none")
ORDERINGS = ("degree", "pagerank")


class SubgraphTokenEncoder(nn.Module):
    """φ: one GIN step on each token's induced subgraph, sum readout, linear (module docstring, step 4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin_in = nn.Linear(dim, dim)
        self.lin_out = nn.Linear(dim, dim)

    def project(self, h: Tensor) -> Tensor:
        """W_1 x for every node (done once, before the tokens of chunks of nodes gather it): [N, D]."""
        return F.linear(h, self.lin_in.weight)

    def forward(self, p: Tensor, tokens: SubgraphTokens) -> Tensor:
        """p: [N_all, D] from ``project``, tokens.nodes [n, L, K] (ids into p) -> token vectors [n, L, D]."""
        valid = tokens.valid[..., None].to(p.dtype)  # [n, L, K, 1]
        slots = p[tokens.nodes.clamp(min=0)] * valid  # [n, L, K, D]
        # adjacency[a, b] marks the edge a -> b, so node b sums over the a with adjacency[a, b].
        messages = tokens.adjacency.transpose(-1, -2).to(p.dtype) @ slots  # [n, L, K, D]
        pooled = (F.relu(slots + messages + self.lin_in.bias) * valid).sum(dim=2)  # [n, L, D]
        return self.lin_out(pooled)  # [n, L, D]


class GINELocal(nn.Module):
    """GPS-style GINE branch: BN(h + Dropout(GINE(h, e)))."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.conv = GINEConv(nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim)))
        self.dropout = Dropout(dropout)
        self.norm = BatchNorm(dim, allow_single_element=True)

    def forward(self, h: Tensor, edge_index: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
        """h: [N, D], e: [E, D] -> (h' [N, D], e unchanged)."""
        return self.norm(h + self.dropout(self.conv(h, edge_index, e))), e


class GMNLayer(nn.Module):
    """Node-level layer: bidirectional Mamba over each graph's ordered nodes + local MPNN, then FFN (step 6)."""

    def __init__(self, dim: int, local_mpnn: str, dropout: float, d_state: int, d_conv: int, expand: float,
                 update_edges: bool, backend: str) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.mixer = BiMamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
        self.norm_seq = BatchNorm(dim, allow_single_element=True)
        if local_mpnn == "gatedgcn":
            self.local = GatedGCNLayer(dim, dropout=dropout, residual=True, update_edges=update_edges)
        elif local_mpnn == "gine":
            self.local = GINELocal(dim, dropout)
        else:
            self.local = None
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), Dropout(dropout), nn.Linear(2 * dim, dim),
                                 Dropout(dropout))
        self.norm_ffn = BatchNorm(dim, allow_single_element=True)
        self.dropout = Dropout(dropout)

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor, batch: Tensor, perm: Tensor,
                num_graphs: int) -> tuple[Tensor, Tensor]:
        """h: [N, D], e: [E, D], perm: [N] node order -> (h' [N, D], e' [E, D])."""
        dense, mask, lengths = pack_nodes(self.norm_in(h), batch, perm, num_graphs)  # [G, L, D], [G, L], [G]
        h_seq = unpack_nodes(self.mixer(dense, lengths=lengths), mask, perm)  # [N, D]
        out = self.norm_seq(h + self.dropout(h_seq))  # [N, D]
        if self.local is not None:
            h_local, e = self.local(h, edge_index, e)  # [N, D], [E, D]
            out = out + h_local
        return self.norm_ffn(out + self.ffn(out)), e


class GMN(nn.Module):
    """Graph Mamba Network (see the module docstring for the equations).

    Args:
        in_channels: node feature width.
        out_channels: outputs per graph (task="graph") or per node (task="node").
        hidden_channels: width D.
        num_layers: node-level layers (step 6).
        task: ``"graph"`` or ``"node"``.
        edge_dim: edge feature width, None for none.
        dropout: dropout in the node-level layers.
        walk_length: m, the longest random walk (0: node tokenization only).
        num_walks: M, walks per subgraph token.
        num_repeats: s, tokens per walk length.
        subgraph_layers: bidirectional Mamba blocks over each node's token sequence (step 5).
        node_ordering: ``"degree"`` or ``"pagerank"`` (step 2).
        local_mpnn: ``"gatedgcn"``, ``"gine"`` or ``"none"`` (GMN- without MPNN).
        pe_dim: width of the PE/SE to read (0: none).
        pe_type: ``"laplacian"`` or ``"random_walk"``.
        constant_features: use ones when ``data.x`` is missing instead of raising.
        d_state, d_conv, expand: BiMamba sizes.
        eval_seed: seed of the random walks in eval mode.
        subgraph_chunk_size: nodes per chunk of the subgraph stage (memory bound, see ``encode_subgraphs``).
        backend: scan kernel backend.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int = 64, num_layers: int = 2,
        task: str = "graph", edge_dim: int | None = None, dropout: float = 0.0, walk_length: int = 2,
        num_walks: int = 2, num_repeats: int = 2, subgraph_layers: int = 1, node_ordering: str = "degree",
        local_mpnn: str = "gatedgcn", pe_dim: int = 0, pe_type: str = "laplacian", constant_features: bool = False,
        d_state: int = 16, d_conv: int = 4, expand: float = 2, eval_seed: int = 0, subgraph_chunk_size: int = 4096,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        check_model_args("GMN", in_channels, out_channels, hidden_channels, num_layers, task, edge_dim, dropout,
                         pe_dim, pe_type)
        for name, value, low in (("walk_length", walk_length, 0), ("num_walks", num_walks, 1),
                                 ("num_repeats", num_repeats, 1), ("subgraph_layers", subgraph_layers, 1),
                                 ("subgraph_chunk_size", subgraph_chunk_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"GMN: {name} must be an int >= {low}, found {value!r}")
        if node_ordering not in ORDERINGS:
            raise ValueError(f"GMN: node_ordering must be one of {ORDERINGS}, found {node_ordering!r}")
        if local_mpnn not in LOCAL_MPNNS:
            raise ValueError(f"GMN: local_mpnn must be one of {LOCAL_MPNNS}, found {local_mpnn!r}")
        self.in_channels, self.out_channels, self.task, self.edge_dim = in_channels, out_channels, task, edge_dim
        self.pe_dim, self.pe_type, self.constant_features = pe_dim, pe_type, constant_features
        self.walk_length, self.num_walks, self.num_repeats = walk_length, num_walks, num_repeats
        self.node_ordering, self.eval_seed, self.subgraph_chunk_size = node_ordering, eval_seed, subgraph_chunk_size
        dim = hidden_channels
        self.node_encoder = NodeEncoder(in_channels, dim, pe_dim, pe_type, dropout)
        self.edge_encoder = EdgeEncoder(edge_dim, dim) if local_mpnn != "none" else None
        self.token_encoder = SubgraphTokenEncoder(dim)
        self.subgraph_encoder = Backbone(dim, subgraph_layers, norm="layer", mixer_factory=lambda i: BiMamba(
            dim, d_state=d_state, d_conv=d_conv, expand=expand, layer_idx=i, backend=backend))
        self.layers = nn.ModuleList(
            GMNLayer(dim, local_mpnn, dropout, d_state, d_conv, expand, update_edges=i < num_layers - 1,
                     backend=backend) for i in range(num_layers))
        self.head = TaskHead(dim, out_channels, task)

    def sample_tokens(self, edge_index: Tensor, num_nodes: int) -> SubgraphTokens:
        """Subgraph tokens: fresh walks in training, walks seeded with ``eval_seed`` in eval mode."""
        generator = None
        if not self.training:
            generator = torch.Generator(device=edge_index.device).manual_seed(self.eval_seed)
        return sample_subgraph_tokens(edge_index, num_nodes, self.walk_length, self.num_walks, self.num_repeats,
                                      generator)

    def encode_subgraphs(self, h: Tensor, tokens: SubgraphTokens) -> Tensor:
        """Steps 4-5: token vectors, bidirectional Mamba over each node's sequence, output at the node's own token.

        Nodes are independent here, so they run in chunks of ``subgraph_chunk_size``; with more than one chunk and
        gradients on, each chunk is recomputed in backward (activation checkpointing), which bounds the memory of
        this stage by one chunk. h: [N, D] -> [N, D].
        """
        p = self.token_encoder.project(h)  # [N, D]
        size = self.subgraph_chunk_size
        recompute = h.shape[0] > size and torch.is_grad_enabled()
        outs = []
        for start in range(0, h.shape[0], size):
            nodes, adjacency = tokens.nodes[start:start + size], tokens.adjacency[start:start + size]
            if recompute:
                outs.append(checkpoint(self._encode_chunk, p, nodes, adjacency, use_reentrant=False))
            else:
                outs.append(self._encode_chunk(p, nodes, adjacency))
        return torch.cat(outs) if outs else p

    def _encode_chunk(self, p: Tensor, nodes: Tensor, adjacency: Tensor) -> Tensor:
        tokens = self.token_encoder(p, SubgraphTokens(nodes=nodes, adjacency=adjacency))  # [n, L, D]
        return self.subgraph_encoder(tokens)[:, -1]  # [n, D], the node's own token is last

    def forward(self, data: Data) -> Tensor:
        """data: Data / Batch with x [N, in_channels] -> [G, out_channels] (graph) or [N, out_channels] (node)."""
        g = read_graph(data, "GMN", self.in_channels, self.edge_dim, self.pe_dim, self.pe_type,
                       self.constant_features)
        num_nodes = g.x.shape[0]
        h = self.node_encoder(g.x, g.pe)  # [N, D]
        e = self.edge_encoder(g.edge_attr, g.edge_index.shape[1]) if self.edge_encoder is not None else None  # [E, D]
        h = self.encode_subgraphs(h, self.sample_tokens(g.edge_index, num_nodes))  # [N, D]
        perm = node_order(node_scores(g.edge_index, num_nodes, self.node_ordering), g.batch)  # [N]
        for layer in self.layers:
            h, e = layer(h, e, g.edge_index, g.batch, perm, g.num_graphs)  # [N, D], [E, D]
        return self.head(h, g.batch, g.num_graphs)


_TEST = {"in_channels": 3, "out_channels": 2, "hidden_channels": 16, "num_layers": 2, "edge_dim": 2, "d_state": 4,
         "pe_dim": 2}


@register_model(domain="graphs", example_input=example_input, test_overrides=_TEST)
def gmn(in_channels: int, out_channels: int, **kwargs) -> GMN:
    """GMN (Behrouz & Hashemi, KDD 2024): random-walk subgraph tokens, bidirectional Mamba, local GatedGCN."""
    return GMN(in_channels, out_channels, **kwargs)
