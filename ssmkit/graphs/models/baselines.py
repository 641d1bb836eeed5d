"""Message-passing and graph-transformer baselines: GCN, GatedGCN and GPS (torch_geometric layers).

All three share the graph-model interface of ``ssmkit.graphs.models`` (input encoder -> ``num_layers`` layers ->
task head), with width D and E edges:

- GCN (Kipf & Welling, ICLR 2017), LRGB baseline form: h = h + Dropout(ReLU(BN(GCNConv(h)))). GCNConv takes no edge
  features, so ``edge_dim`` is accepted for the common interface and ``data.edge_attr`` is not read.
- GatedGCN (Bresson & Laurent 2017): a stack of ``layers.gated_gcn.GatedGCNLayer`` (edge features, residual, BN).
- GPS (Rampášek et al., NeurIPS 2022): ``torch_geometric.nn.GPSConv(D, GINEConv(MLP), heads, attn_type=
  "multihead")``: local GINE + full multi-head attention over each graph's nodes, summed, then an MLP, with batch
  norms. Attention is quadratic in the number of nodes of a graph.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data
from torch_geometric.nn import BatchNorm, GCNConv, GINEConv, GPSConv

from ssmkit.core.drop import dropout
from ssmkit.core.registry import register_model

from ..layers.encoders import EdgeEncoder, NodeEncoder, TaskHead, check_model_args, example_input
from ..layers.gated_gcn import GatedGCNLayer
from ..layers.validation import read_graph

__all__ = ["GCN", "GPS", "GatedGCN"]


class _Baseline(nn.Module):
    """Shared constructor part: argument checks, attributes of the interface, node encoder and head."""

    def __init__(self, owner: str, in_channels: int, out_channels: int, hidden_channels: int, num_layers: int,
                 task: str, edge_dim: int | None, dropout: float, pe_dim: int, pe_type: str,
                 constant_features: bool) -> None:
        super().__init__()
        check_model_args(owner, in_channels, out_channels, hidden_channels, num_layers, task, edge_dim, dropout,
                         pe_dim, pe_type)
        self.owner = owner
        self.in_channels, self.out_channels, self.task, self.edge_dim = in_channels, out_channels, task, edge_dim
        self.pe_dim, self.pe_type, self.constant_features, self.dropout = pe_dim, pe_type, constant_features, dropout
        self.node_encoder = NodeEncoder(in_channels, hidden_channels, pe_dim, pe_type, dropout)
        self.head = TaskHead(hidden_channels, out_channels, task)

    def read(self, data: Data, edge_dim: int | None):
        return read_graph(data, self.owner, self.in_channels, edge_dim, self.pe_dim, self.pe_type,
                          self.constant_features)


class GCN(_Baseline):
    """GCN with residual connections and batch norm (module docstring). Arguments: see ``ssmkit.graphs.models``."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 64, num_layers: int = 4,
                 task: str = "graph", edge_dim: int | None = None, dropout: float = 0.0, pe_dim: int = 0,
                 pe_type: str = "laplacian", constant_features: bool = False) -> None:
        super().__init__("GCN", in_channels, out_channels, hidden_channels, num_layers, task, edge_dim, dropout,
                         pe_dim, pe_type, constant_features)
        self.convs = nn.ModuleList(GCNConv(hidden_channels, hidden_channels) for _ in range(num_layers))
        self.norms = nn.ModuleList(BatchNorm(hidden_channels, allow_single_element=True) for _ in range(num_layers))

    def forward(self, data: Data) -> Tensor:
        """data: Data / Batch -> [G, out_channels] (graph) or [N, out_channels] (node)."""
        g = self.read(data, None)
        h = self.node_encoder(g.x, g.pe)  # [N, D]
        for conv, norm in zip(self.convs, self.norms):
            h = h + dropout(F.relu(norm(conv(h, g.edge_index))), self.dropout, training=self.training)  # [N, D]
        return self.head(h, g.batch, g.num_graphs)


class GatedGCN(_Baseline):
    """Stack of GatedGCN layers with edge features (module docstring). Arguments: see ``ssmkit.graphs.models``."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 64, num_layers: int = 4,
                 task: str = "graph", edge_dim: int | None = None, dropout: float = 0.0, pe_dim: int = 0,
                 pe_type: str = "laplacian", constant_features: bool = False) -> None:
        super().__init__("GatedGCN", in_channels, out_channels, hidden_channels, num_layers, task, edge_dim, dropout,
                         pe_dim, pe_type, constant_features)
        self.edge_encoder = EdgeEncoder(edge_dim, hidden_channels)
        self.layers = nn.ModuleList(
            GatedGCNLayer(hidden_channels, dropout=dropout, residual=True, update_edges=i < num_layers - 1)
            for i in range(num_layers))

    def forward(self, data: Data) -> Tensor:
        """data: Data / Batch -> [G, out_channels] (graph) or [N, out_channels] (node)."""
        g = self.read(data, self.edge_dim)
        h = self.node_encoder(g.x, g.pe)  # [N, D]
        e = self.edge_encoder(g.edge_attr, g.edge_index.shape[1])  # [E, D]
        for layer in self.layers:
            h, e = layer(h, g.edge_index, e)  # [N, D], [E, D]
        return self.head(h, g.batch, g.num_graphs)


class GPS(_Baseline):
    """GraphGPS with GINE + multi-head attention (``torch_geometric.nn.GPSConv``).

    Args:
        heads: attention heads (must divide ``hidden_channels``).
        attn_dropout: dropout on the attention weights.
        Other arguments: see ``ssmkit.graphs.models``.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int = 64, num_layers: int = 4,
                 task: str = "graph", edge_dim: int | None = None, dropout: float = 0.0, heads: int = 4,
                 attn_dropout: float = 0.0, pe_dim: int = 0, pe_type: str = "laplacian",
                 constant_features: bool = False) -> None:
        super().__init__("GPS", in_channels, out_channels, hidden_channels, num_layers, task, edge_dim, dropout,
                         pe_dim, pe_type, constant_features)
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 or hidden_channels % heads:
            raise ValueError(f"GPS: heads must be a positive int dividing hidden_channels={hidden_channels}, "
                             f"found {heads!r}")
        self.edge_encoder = EdgeEncoder(edge_dim, hidden_channels)
        self.layers = nn.ModuleList(
            GPSConv(hidden_channels, GINEConv(nn.Sequential(nn.Linear(hidden_channels, hidden_channels), nn.ReLU(),
                                                            nn.Linear(hidden_channels, hidden_channels))),
                    heads=heads, dropout=dropout, attn_type="multihead", attn_kwargs={"dropout": attn_dropout})
            for _ in range(num_layers))

    def forward(self, data: Data) -> Tensor:
        """data: Data / Batch -> [G, out_channels] (graph) or [N, out_channels] (node)."""
        g = self.read(data, self.edge_dim)
        h = self.node_encoder(g.x, g.pe)  # [N, D]
        e = self.edge_encoder(g.edge_attr, g.edge_index.shape[1])  # [E, D]
        for layer in self.layers:
            h = layer(h, g.edge_index, g.batch, edge_attr=e)  # [N, D]
        return self.head(h, g.batch, g.num_graphs)


_TEST = {"in_channels": 3, "out_channels": 2, "hidden_channels": 16, "num_layers": 2, "edge_dim": 2}


@register_model(domain="graphs", example_input=example_input, test_overrides=_TEST)
def gcn(in_channels: int, out_channels: int, **kwargs) -> GCN:
    """GCN (Kipf & Welling 2017) with residuals and batch norm; baseline."""
    return GCN(in_channels, out_channels, **kwargs)


@register_model(domain="graphs", example_input=example_input, test_overrides=_TEST)
def gated_gcn(in_channels: int, out_channels: int, **kwargs) -> GatedGCN:
    """GatedGCN (Bresson & Laurent 2017) with edge features; baseline."""
    return GatedGCN(in_channels, out_channels, **kwargs)


@register_model(domain="graphs", example_input=example_input, test_overrides={**_TEST, "heads": 2})
def gps(in_channels: int, out_channels: int, **kwargs) -> GPS:
    """GPS (Rampášek et al. 2022): GPSConv with GINE and full multi-head attention; baseline."""
    return GPS(in_channels, out_channels, **kwargs)
