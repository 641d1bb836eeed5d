"""Graph models (plain nn.Modules, registered in ``ssmkit``'s model registry under domain "graphs").

| name | file | what |
|---|---|---|
| ``gmn`` | ``gmn.py`` | GMN (Behrouz & Hashemi, KDD 2024): random-walk subgraph tokens, bidirectional Mamba |
| ``graph_mamba`` | ``graph_mamba.py`` | Graph-Mamba (Wang et al. 2024): GatedGCN + Mamba, degree+noise order |
| ``gcn``, ``gated_gcn``, ``gps`` | ``baselines.py`` | GCN, GatedGCN, GPS (GPSConv, GINE + multi-head attention) |

Interface shared by every graph model (agreed with ``ssmkit/graphs/module.py`` / ``data.py``):

- Built by its registered builder, ``create_model(name, in_channels=..., out_channels=..., **kwargs)``, with the
  keyword arguments ``in_channels: int, out_channels: int, hidden_channels: int, num_layers: int,
  task: "graph" | "node" = "graph", edge_dim: int | None = None, dropout: float = 0.0, pe_dim: int = 0,
  pe_type: "laplacian" | "random_walk" = "laplacian", constant_features: bool = False`` plus model-specific ones
  (see each class). The same names are attributes of the built model.
- ``forward(data: Data | Batch) -> Tensor``: logits [num_graphs, out_channels] for task="graph" (mean pooling over
  each graph's nodes), [num_nodes, out_channels] for task="node".
- Reads ``data.x`` [N, in_channels] float, ``data.edge_index`` [2, E], ``data.batch`` (sorted; absent = one graph),
  ``data.edge_attr`` [E, edge_dim] when ``edge_dim`` is set, and with ``pe_dim > 0`` ``data.laplacian_eigenvector_pe``
  or ``data.random_walk_pe`` [N, pe_dim] (the attributes written by ``torch_geometric.transforms.
  AddLaplacianEigenvectorPE`` / ``AddRandomWalkPE``), concatenated to x before the input projection.
- Missing ``data.x`` raises unless ``constant_features=True`` (then ones). Bad input (unsorted batch, edge index out
  of range or across graphs, wrong shapes / dtypes, NaN) raises a ValueError / TypeError before any work
  (``ssmkit/graphs/layers/validation.py``). Graphs without edges and isolated nodes work.
- Registry example input: ``{"data": batch}``, a tiny ``Batch`` of graphs of different sizes
  (``ssmkit/graphs/layers/encoders.py:example_input``).
"""

from .baselines import GCN, GPS, GatedGCN
from .gmn import GMN
from .graph_mamba import GraphMamba

__all__ = ["GCN", "GMN", "GPS", "GatedGCN", "GraphMamba"]
