"""Pieces every graph model shares: argument checks, input / edge encoders, the task head, the registry example.

- ``NodeEncoder``: Dropout(x) [N, in_channels] (concatenated with the PE/SE [N, pe_dim] when asked, as GraphGPS and
  GMN do) -> Linear -> [N, hidden]. The input dropout (the model's ``dropout``) is the GCN paper's; without it the
  residual models overfit small node-classification splits. Laplacian eigenvectors get a random sign flip per
  eigenvector while training (their sign is arbitrary).
- ``EdgeEncoder``: edge_attr [E, edge_dim] -> Linear -> [E, hidden], or a learned constant edge vector when the
  model takes no edge features (GatedGCN / GINE need one).
- ``TaskHead``: node task: MLP on every node; graph task: mean over each graph's nodes, then the MLP.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import global_mean_pool

from ssmkit.core.drop import Dropout

from .validation import PE_ATTRIBUTES

__all__ = ["EdgeEncoder", "NodeEncoder", "TaskHead", "check_model_args", "example_input"]

TASKS = ("graph", "node")


def _positive_int(owner: str, name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an int >= {minimum}, found {value!r}")


def check_model_args(owner: str, in_channels: int, out_channels: int, hidden_channels: int, num_layers: int,
                     task: str, edge_dim: int | None, dropout: float, pe_dim: int, pe_type: str) -> None:
    """Raise a ValueError naming the argument unless the shared graph-model arguments are valid."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("hidden_channels", hidden_channels), ("num_layers", num_layers)):
        _positive_int(owner, name, value)
    if task not in TASKS:
        raise ValueError(f"{owner}: task must be one of {TASKS}, found {task!r}")
    if edge_dim is not None:
        _positive_int(owner, "edge_dim", edge_dim)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}: dropout must be a float in [0, 1), found {dropout!r}")
    _positive_int(owner, "pe_dim", pe_dim, minimum=0)
    if pe_type not in PE_ATTRIBUTES:
        raise ValueError(f"{owner}: pe_type must be one of {sorted(PE_ATTRIBUTES)}, found {pe_type!r}")


class NodeEncoder(nn.Module):
    """[N, in_channels] (+ [N, pe_dim]) -> [N, hidden]; ``dropout`` applies to x (the GCN paper's input dropout)."""

    def __init__(self, in_channels: int, hidden: int, pe_dim: int = 0, pe_type: str = "laplacian",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.pe_dim, self.pe_type = pe_dim, pe_type
        self.dropout = Dropout(dropout)
        self.proj = nn.Linear(in_channels + pe_dim, hidden)

    def forward(self, x: Tensor, pe: Tensor | None = None) -> Tensor:
        """x: [N, in_channels], pe: [N, pe_dim] or None -> [N, hidden]."""
        x = self.dropout(x)  # [N, in_channels]
        if self.pe_dim:
            if self.training and self.pe_type == "laplacian":
                sign = torch.randint(0, 2, (1, self.pe_dim), device=pe.device).to(pe.dtype) * 2 - 1  # [1, P]
                pe = pe * sign  # [N, P]
            x = torch.cat([x, pe], dim=-1)  # [N, in + P]
        return self.proj(x)


class EdgeEncoder(nn.Module):
    """[E, edge_dim] -> [E, hidden]; with ``edge_dim=None`` every edge gets one learned vector."""

    def __init__(self, edge_dim: int | None, hidden: int) -> None:
        super().__init__()
        self.edge_dim = edge_dim
        if edge_dim is None:
            self.embedding = nn.Parameter(torch.zeros(1, hidden))
            nn.init.normal_(self.embedding, std=0.02)
        else:
            self.proj = nn.Linear(edge_dim, hidden)

    def forward(self, edge_attr: Tensor | None, num_edges: int) -> Tensor:
        """edge_attr: [E, edge_dim] or None -> [E, hidden]."""
        if self.edge_dim is None:
            return self.embedding.expand(num_edges, -1)
        return self.proj(edge_attr)


class TaskHead(nn.Module):
    """Node task: MLP per node -> [N, out]; graph task: mean pooling per graph, then MLP -> [G, out]."""

    def __init__(self, hidden: int, out_channels: int, task: str) -> None:
        super().__init__()
        self.task = task
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, out_channels))

    def forward(self, h: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        """h: [N, hidden], batch: [N] -> [N, out] or [G, out]."""
        if self.task == "graph":
            h = global_mean_pool(h, batch, size=num_graphs)  # [G, hidden]
        return self.mlp(h)


def _tiny_graph(num_nodes: int, model: nn.Module, generator: torch.Generator) -> Data:
    """A ring with two chords and one isolated node, with the features the model reads."""
    ring = torch.arange(num_nodes - 1)
    src = torch.cat([ring, torch.tensor([0, 1])])
    dst = torch.cat([(ring + 1) % (num_nodes - 1), torch.tensor([num_nodes // 2, num_nodes - 2])])
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])  # [2, E], undirected
    data = Data(x=torch.randn(num_nodes, model.in_channels, generator=generator), edge_index=edge_index)
    if model.edge_dim is not None:
        data.edge_attr = torch.randn(edge_index.shape[1], model.edge_dim, generator=generator)
    if model.pe_dim:
        setattr(data, PE_ATTRIBUTES[model.pe_type], torch.randn(num_nodes, model.pe_dim, generator=generator))
    return data


def example_input(model: nn.Module, batch_size: int) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Registry example (``ssmkit/core/registry.py``): a Batch of ``batch_size`` tiny graphs of different sizes.

    Returns:
        ``({"data": batch}, (batch_size, out_channels))`` for task="graph", ``(num_nodes, out_channels)`` for "node".
    """
    generator = torch.Generator().manual_seed(0)
    batch = Batch.from_data_list([_tiny_graph(6 + 3 * i, model, generator) for i in range(batch_size)])
    rows = batch_size if model.task == "graph" else batch.num_nodes
    return {"data": batch}, (rows, model.out_channels)
