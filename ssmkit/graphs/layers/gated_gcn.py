"""GatedGCN layer with edge features (Bresson & Laurent, "Residual Gated Graph ConvNets", arXiv 1711.07553).

torch_geometric's ``ResGatedGraphConv`` has no edge-feature input or output and no gate normalization, so the layer
is written here in GraphGPS's form (rampasek/GraphGPS ``GatedGCNLayer``, used by Graph-Mamba as its local model).
For an edge j -> i with features e_ij (all widths D):

    ê_ij  = D x_i + E x_j + C e_ij                                   # [E, D]
    σ_ij  = sigmoid(ê_ij)
    x_i'  = A x_i + Σ_j σ_ij ⊙ B x_j / (Σ_j σ_ij + 1e-6)           # [N, D]
    x'    = x + dropout(relu(BN(x_i')))     e' = e + dropout(relu(BN(ê)))     (residual=True)

Nodes without incoming edges get ``A x_i``; a graph without edges is fine. The BatchNorms accept a single row or no
row (``torch_geometric.nn.BatchNorm(allow_single_element=True)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import BatchNorm
from torch_geometric.utils import scatter

from ssmkit.core.drop import dropout

__all__ = ["GatedGCNLayer"]


class GatedGCNLayer(nn.Module):
    """One GatedGCN layer on node and edge features of width ``dim``.

    Args:
        dim: width D of node and edge features.
        dropout: dropout after the activations.
        residual: add the input to the output (node and edge).
        update_edges: compute and return the new edge features. The last layer of a stack sets False (its edge
            output would be unused, leaving the edge BatchNorm without a gradient).
    """

    def __init__(self, dim: int, dropout: float = 0.0, residual: bool = True, update_edges: bool = True) -> None:
        super().__init__()
        self.dim, self.dropout, self.residual, self.update_edges = dim, dropout, residual, update_edges
        self.A = nn.Linear(dim, dim)
        self.B = nn.Linear(dim, dim)
        self.C = nn.Linear(dim, dim)
        self.D = nn.Linear(dim, dim)
        self.E = nn.Linear(dim, dim)
        self.bn_node = BatchNorm(dim, allow_single_element=True)
        self.bn_edge = BatchNorm(dim, allow_single_element=True) if update_edges else None

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> tuple[Tensor, Tensor]:
        """Update node and edge features.

        Args:
            x: [N, D] node features.
            edge_index: [2, E] (source j, target i) pairs.
            edge_attr: [E, D] edge features.

        Returns:
            (x' [N, D], e' [E, D]); e' is ``edge_attr`` unchanged when ``update_edges`` is False.
        """
        src, dst = edge_index
        e_hat = self.D(x)[dst] + self.E(x)[src] + self.C(edge_attr)  # [E, D]
        gate = torch.sigmoid(e_hat)  # [E, D]
        numerator = scatter(gate * self.B(x)[src], dst, dim=0, dim_size=x.shape[0], reduce="sum")  # [N, D]
        denominator = scatter(gate, dst, dim=0, dim_size=x.shape[0], reduce="sum")  # [N, D]
        h = self.A(x) + numerator / (denominator + 1e-6)  # [N, D]
        h = dropout(F.relu(self.bn_node(h)), self.dropout, training=self.training)  # [N, D]
        h = x + h if self.residual else h
        if not self.update_edges:
            return h, edge_attr
        e = dropout(F.relu(self.bn_edge(e_hat)), self.dropout, training=self.training)  # [E, D]
        return h, (edge_attr + e if self.residual else e)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dropout={self.dropout}, residual={self.residual}, update_edges={self.update_edges}"
