"""Checks of a graph model's input (a torch_geometric ``Data`` or ``Batch``), done before any work.

``read_graph`` returns the tensors every graph model needs (``GraphInputs``) or raises a ``TypeError`` /
``ValueError`` that names the attribute, the expected and the found value. What it accepts:

- a graph without edges (``edge_index`` of shape [2, 0]) and isolated nodes;
- no ``data.x`` only when the model was built with ``constant_features=True`` (then x = ones [N, in_channels]);
- a ``batch`` vector that is sorted (non-decreasing), as ``Batch.from_data_list`` / the PyG ``DataLoader`` make it;
- ``edge_index`` entries in [0, N) whose two ends lie in the same graph of the batch (the error names the graph and
  the bad index).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

__all__ = ["PE_ATTRIBUTES", "GraphInputs", "read_graph"]

# Attribute names written by torch_geometric.transforms.AddLaplacianEigenvectorPE / AddRandomWalkPE.
PE_ATTRIBUTES = {"laplacian": "laplacian_eigenvector_pe", "random_walk": "random_walk_pe"}


@dataclass(frozen=True)
class GraphInputs:
    """Checked tensors of one (batched) graph input.

    Attributes:
        x: [N, in_channels] float node features.
        edge_index: [2, E] int64 (source, target) pairs.
        edge_attr: [E, edge_dim] float edge features, or None when the model takes none.
        batch: [N] int64 sorted graph id of every node.
        num_graphs: number of graphs G.
        pe: [N, pe_dim] float positional / structural encoding, or None.
    """

    x: Tensor
    edge_index: Tensor
    edge_attr: Tensor | None
    batch: Tensor
    num_graphs: int
    pe: Tensor | None


def _graph_of_edge(data: Data, edge: int) -> int:
    """Graph id of edge ``edge`` in a Batch (from its edge slices), 0 for a single graph."""
    slices = getattr(data, "_slice_dict", None)
    if isinstance(slices, dict) and "edge_index" in slices:
        return int(torch.searchsorted(torch.as_tensor(slices["edge_index"]), torch.tensor(edge), right=True)) - 1
    return 0


def _check_batch(owner: str, batch: Tensor | None, num_nodes: int, device: torch.device) -> tuple[Tensor, int]:
    if batch is None:
        return torch.zeros(num_nodes, dtype=torch.long, device=device), 1
    if not isinstance(batch, Tensor) or batch.dim() != 1 or batch.numel() != num_nodes:
        found = list(batch.shape) if isinstance(batch, Tensor) else type(batch).__name__
        raise ValueError(f"{owner}: data.batch must be a tensor [{num_nodes}] (one graph id per node), found {found}")
    if batch.dtype.is_floating_point or batch.dtype == torch.bool:
        raise TypeError(f"{owner}: data.batch must hold integer graph ids, found dtype {batch.dtype}")
    batch = batch.long()
    if num_nodes == 0:
        return batch, 0
    if int(batch.min()) < 0:
        raise ValueError(f"{owner}: data.batch must hold graph ids >= 0, found {int(batch.min())}")
    drops = (batch[1:] < batch[:-1]).nonzero()
    if drops.numel():
        i = int(drops[0, 0])
        raise ValueError(f"{owner}: data.batch must be sorted (non-decreasing, the nodes of each graph contiguous), "
                         f"found batch[{i}] = {int(batch[i])} > batch[{i + 1}] = {int(batch[i + 1])}; build batches "
                         f"with torch_geometric.data.Batch.from_data_list or torch_geometric.loader.DataLoader")
    return batch, int(batch[-1]) + 1


def _check_edges(owner: str, data: Data, edge_index: Tensor, num_nodes: int, batch: Tensor) -> Tensor:
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        found = list(edge_index.shape) if isinstance(edge_index, Tensor) else type(edge_index).__name__
        raise ValueError(f"{owner}: data.edge_index must be a tensor [2, E], found {found}")
    if edge_index.dtype.is_floating_point or edge_index.dtype == torch.bool:
        raise TypeError(f"{owner}: data.edge_index must hold integer node indices, found dtype {edge_index.dtype}")
    edge_index = edge_index.long()
    if edge_index.numel() == 0:
        return edge_index
    bad = ((edge_index < 0) | (edge_index >= num_nodes)).nonzero()
    if bad.numel():
        row, edge = int(bad[0, 0]), int(bad[0, 1])
        graph = _graph_of_edge(data, edge)
        end = "source" if row == 0 else "target"
        raise ValueError(f"{owner}: data.edge_index[{row}, {edge}] = {int(edge_index[row, edge])} (the {end} of edge "
                         f"{edge}, in graph {graph}) is out of range: the input has {num_nodes} nodes, valid indices "
                         f"are 0..{num_nodes - 1}")
    cross = (batch[edge_index[0]] != batch[edge_index[1]]).nonzero()
    if cross.numel():
        edge = int(cross[0, 0])
        src, dst = int(edge_index[0, edge]), int(edge_index[1, edge])
        raise ValueError(f"{owner}: data.edge_index[:, {edge}] = ({src}, {dst}) joins node {src} of graph "
                         f"{int(batch[src])} to node {dst} of graph {int(batch[dst])}; edges must stay inside a graph")
    return edge_index


def _check_float(owner: str, name: str, value: object, rows: int, cols: int, hint: str = "") -> Tensor:
    if value is None:
        raise ValueError(f"{owner}: {name} is missing (a float tensor [{rows}, {cols}] is expected){hint}")
    if not isinstance(value, Tensor):
        raise TypeError(f"{owner}: {name} must be a float tensor [{rows}, {cols}], found {type(value).__name__}{hint}")
    if value.dim() == 1 and cols == 1:
        value = value[:, None]
    if value.dim() != 2 or value.shape[0] != rows or value.shape[1] != cols:
        raise ValueError(f"{owner}: {name} must have shape [{rows}, {cols}], found {list(value.shape)}{hint}")
    if not value.is_floating_point():
        raise TypeError(f"{owner}: {name} must have a floating dtype, found {value.dtype} (convert it, e.g. "
                        f"{name} = {name}.float(), or embed integer categories before the model)")
    finite = torch.isfinite(value).all(dim=1)
    if not bool(finite.all()):
        rows_bad = (~finite).nonzero()[:5, 0].tolist()
        raise ValueError(f"{owner}: {name} has NaN or inf values in rows {rows_bad} (first 5 shown)")
    return value


def read_graph(
    data: Data, owner: str, in_channels: int, edge_dim: int | None = None, pe_dim: int = 0,
    pe_type: str = "laplacian", constant_features: bool = False,
) -> GraphInputs:
    """Check a ``Data`` / ``Batch`` and return its tensors.

    Args:
        data: one graph or a batch of graphs.
        owner: model name for the error messages.
        in_channels: expected width of ``data.x``.
        edge_dim: expected width of ``data.edge_attr``; None: edge features are not read.
        pe_dim: width of the positional / structural encoding to read (0: none).
        pe_type: ``"laplacian"`` (``data.laplacian_eigenvector_pe``) or ``"random_walk"`` (``data.random_walk_pe``).
        constant_features: when ``data.x`` is missing, use ones [N, in_channels] instead of raising.

    Returns:
        ``GraphInputs``.
    """
    if not isinstance(data, Data):
        raise TypeError(f"{owner}: expected a torch_geometric.data.Data or Batch, found {type(data).__name__}")
    x = data.x
    if x is None:
        if not constant_features:
            raise ValueError(f"{owner}: data.x is missing (node features [N, {in_channels}] expected); add node "
                             f"features, or build the model with constant_features=True to use ones")
        num_nodes = data.num_nodes
        if num_nodes is None:
            raise ValueError(f"{owner}: data.x is missing and data.num_nodes is not set, so the number of nodes is "
                             f"unknown; set data.num_nodes")
        device = data.edge_index.device if isinstance(data.edge_index, Tensor) else torch.device("cpu")
        x = torch.ones(num_nodes, in_channels, device=device)
    num_nodes = x.shape[0] if isinstance(x, Tensor) and x.dim() >= 1 else 0
    x = _check_float(owner, "data.x", x, num_nodes, in_channels)
    batch, num_graphs = _check_batch(owner, data.batch, num_nodes, x.device)
    if isinstance(data, Batch):
        # A Batch knows its graph count, including trailing graphs without nodes.
        num_graphs = max(num_graphs, int(data.num_graphs))
    edge_index = data.edge_index
    if edge_index is None:
        raise ValueError(f"{owner}: data.edge_index is missing; a graph without edges needs an empty tensor "
                         f"torch.empty(2, 0, dtype=torch.long)")
    edge_index = _check_edges(owner, data, edge_index, num_nodes, batch)
    edge_attr = None
    if edge_dim is not None:
        if data.edge_attr is None:
            raise ValueError(f"{owner}: data.edge_attr is missing; the model was built with edge_dim={edge_dim} "
                             f"(edge features [E, {edge_dim}] expected); build it with edge_dim=None to use none")
        edge_attr = _check_float(owner, "data.edge_attr", data.edge_attr, edge_index.shape[1], edge_dim)
    pe = None
    if pe_dim:
        if pe_type not in PE_ATTRIBUTES:
            raise ValueError(f"{owner}: pe_type must be one of {sorted(PE_ATTRIBUTES)}, found {pe_type!r}")
        name = PE_ATTRIBUTES[pe_type]
        hint = (f" (the model was built with pe_dim={pe_dim}, pe_type={pe_type!r}; add it with torch_geometric."
                f"transforms.{'AddLaplacianEigenvectorPE' if pe_type == 'laplacian' else 'AddRandomWalkPE'})")
        pe = _check_float(owner, f"data.{name}", getattr(data, name, None), num_nodes, pe_dim, hint)
    return GraphInputs(x=x, edge_index=edge_index, edge_attr=edge_attr, batch=batch, num_graphs=num_graphs, pe=pe)
