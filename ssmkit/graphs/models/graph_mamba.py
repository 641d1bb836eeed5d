"""Graph-Mamba: "Graph-Mamba: Towards Long-Range Graph Sequence Modeling with Selective State Spaces"
(Wang, Tsepa, Ma, Wang; arXiv 2402.00789), code bowang-lab/Graph-Mamba (GraphGPS-based).

Faithful to its GPS layer with ``global_model_type="Mamba_Hybrid_Degree_Noise"`` (graphgps/layer/gps_layer.py) and
the ``CustomGatedGCN`` local model with batch norm, in [N, D] node layout (E = edges):

    h_local = BN(GatedGCN(h, e))                       # GatedGCN with residual + BN inside, then the layer's BN
    order   = per graph, nodes sorted by degree + U[0, 1) ascending (highest degree last, random ties)
    h_attn  = Mamba(each graph's nodes in that order)   # unidirectional, d_state 16, d_conv 4, expand 1
    h_attn  = BN(h + Dropout(h_attn))
    h       = h_local + h_attn;   h = BN(h + FFN(h)),  FFN = Linear(D, 2D) -> ReLU -> Dropout -> Linear -> Dropout

Each layer draws its own ordering. Training: one noisy ordering per layer. Evaluation: the Mamba output is averaged
over 5 noisy orderings (``eval_orderings``). The official code draws those from the global RNG; here they come from a
generator seeded with ``eval_seed`` so that evaluation is deterministic. The degree is the out-degree
(``degree(edge_index[0])``, as the official code). The official code shuffles the nodes and then sorts stably by the
integer degree; adding U[0, 1) noise to the degree and sorting gives the same distribution of orderings.
Padding: each graph's nodes are packed right-padded into [G, N_max, D] and the Mamba gets ``lengths``.
Input encoding (a linear map of x, optionally concatenated with a PE/SE) and the head (mean pooling + MLP for graph
tasks) follow ``layers/encoders.py``; the official configs use dataset-specific encoders (atom / bond encoders,
LapPE DeepSet) instead.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import BatchNorm

from ssmkit.core.drop import Dropout
from ssmkit.core.mixers import Mamba
from ssmkit.core.registry import register_model

from ..layers.encoders import EdgeEncoder, NodeEncoder, TaskHead, check_model_args, example_input
from ..layers.gated_gcn import GatedGCNLayer
from ..layers.tokenization import node_order, node_scores, pack_nodes, unpack_nodes
from ..layers.validation import read_graph

__all__ = ["GraphMamba", "GraphMambaLayer"]


class GraphMambaLayer(nn.Module):
    """GatedGCN + Mamba over degree-ordered nodes, summed, then FFN (module docstring)."""

    def __init__(self, dim: int, dropout: float, d_state: int, d_conv: int, expand: float, update_edges: bool,
                 backend: str) -> None:
        super().__init__()
        self.local = GatedGCNLayer(dim, dropout=dropout, residual=True, update_edges=update_edges)
        self.norm_local = BatchNorm(dim, allow_single_element=True)
        self.mamba = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
        self.norm_attn = BatchNorm(dim, allow_single_element=True)
        self.dropout = Dropout(dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), Dropout(dropout), nn.Linear(2 * dim, dim),
                                 Dropout(dropout))
        self.norm_ffn = BatchNorm(dim, allow_single_element=True)

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor, batch: Tensor, perms: list[Tensor],
                num_graphs: int) -> tuple[Tensor, Tensor]:
        """h: [N, D], e: [E, D], perms: node orderings ([N] each; outputs averaged) -> (h' [N, D], e' [E, D])."""
        h_local, e = self.local(h, edge_index, e)  # [N, D], [E, D]
        h_local = self.norm_local(h_local)
        outputs = []
        for perm in perms:
            dense, mask, lengths = pack_nodes(h, batch, perm, num_graphs)  # [G, L, D], [G, L], [G]
            outputs.append(unpack_nodes(self.mamba(dense, lengths=lengths), mask, perm))  # [N, D]
        h_attn = self.norm_attn(h + self.dropout(sum(outputs) / len(outputs)))  # [N, D]
        out = h_local + h_attn  # [N, D]
        return self.norm_ffn(out + self.ffn(out)), e


class GraphMamba(nn.Module):
    """Graph-Mamba (GatedGCN + Mamba hybrid layers, degree + noise ordering).

    Args:
        in_channels: node feature width.
        out_channels: outputs per graph (task="graph") or per node (task="node").
        hidden_channels: width D (the official Peptides configs use 96).
        num_layers: hybrid layers.
        task: ``"graph"`` or ``"node"``.
        edge_dim: edge feature width, None for none (a learned constant edge vector then).
        dropout: dropout of the GatedGCN, the Mamba branch and the FFN.
        d_state, d_conv, expand: Mamba sizes (official: 16, 4, 1).
        eval_orderings: noisy orderings averaged at evaluation (official: 5).
        pe_dim: width of the PE/SE to read (0: none).
        pe_type: ``"laplacian"`` or ``"random_walk"``.
        constant_features: use ones when ``data.x`` is missing instead of raising.
        eval_seed: seed of the evaluation orderings.
        backend: scan kernel backend.
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden_channels: int = 96, num_layers: int = 3,
        task: str = "graph", edge_dim: int | None = None, dropout: float = 0.0, d_state: int = 16, d_conv: int = 4,
        expand: float = 1, eval_orderings: int = 5, pe_dim: int = 0, pe_type: str = "laplacian",
        constant_features: bool = False, eval_seed: int = 0, backend: str = "auto",
    ) -> None:
        super().__init__()
        check_model_args("GraphMamba", in_channels, out_channels, hidden_channels, num_layers, task, edge_dim,
                         dropout, pe_dim, pe_type)
        if isinstance(eval_orderings, bool) or not isinstance(eval_orderings, int) or eval_orderings < 1:
            raise ValueError(f"GraphMamba: eval_orderings must be an int >= 1, found {eval_orderings!r}")
        self.in_channels, self.out_channels, self.task, self.edge_dim = in_channels, out_channels, task, edge_dim
        self.pe_dim, self.pe_type, self.constant_features = pe_dim, pe_type, constant_features
        self.eval_orderings, self.eval_seed = eval_orderings, eval_seed
        dim = hidden_channels
        self.node_encoder = NodeEncoder(in_channels, dim, pe_dim, pe_type, dropout)
        self.edge_encoder = EdgeEncoder(edge_dim, dim)
        self.layers = nn.ModuleList(
            GraphMambaLayer(dim, dropout, d_state, d_conv, expand, update_edges=i < num_layers - 1, backend=backend)
            for i in range(num_layers))
        self.head = TaskHead(dim, out_channels, task)

    def orderings(self, deg: Tensor, batch: Tensor, generator: torch.Generator | None) -> list[Tensor]:
        """Degree + U[0, 1) orderings: one in training, ``eval_orderings`` in eval mode. Returns perms [N] each."""
        count = 1 if self.training else self.eval_orderings
        noise = [torch.rand(deg.shape, generator=generator, device=deg.device) for _ in range(count)]
        return [node_order(deg, batch, n) for n in noise]

    def forward(self, data: Data) -> Tensor:
        """data: Data / Batch with x [N, in_channels] -> [G, out_channels] (graph) or [N, out_channels] (node)."""
        g = read_graph(data, "GraphMamba", self.in_channels, self.edge_dim, self.pe_dim, self.pe_type,
                       self.constant_features)
        generator = None
        if not self.training:
            generator = torch.Generator(device=g.x.device).manual_seed(self.eval_seed)
        deg = node_scores(g.edge_index, g.x.shape[0], "degree")  # [N]
        h = self.node_encoder(g.x, g.pe)  # [N, D]
        e = self.edge_encoder(g.edge_attr, g.edge_index.shape[1])  # [E, D]
        for layer in self.layers:
            h, e = layer(h, e, g.edge_index, g.batch, self.orderings(deg, g.batch, generator), g.num_graphs)
        return self.head(h, g.batch, g.num_graphs)


_TEST = {"in_channels": 3, "out_channels": 2, "hidden_channels": 16, "num_layers": 2, "edge_dim": 2, "d_state": 4,
         "eval_orderings": 2}


@register_model(domain="graphs", example_input=example_input, test_overrides=_TEST)
def graph_mamba(in_channels: int, out_channels: int, **kwargs) -> GraphMamba:
    """Graph-Mamba (Wang et al. 2024): GatedGCN + Mamba over degree+noise-ordered nodes, 5-ordering average at eval."""
    return GraphMamba(in_channels, out_channels, **kwargs)
