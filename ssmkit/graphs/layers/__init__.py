"""Graph layers shared by the graph models: input checks, GatedGCN, tokenization / ordering, encoders and heads."""

from .gated_gcn import GatedGCNLayer
from .tokenization import SubgraphTokens, node_order, pack_nodes, sample_subgraph_tokens, unpack_nodes
from .validation import GraphInputs, read_graph

__all__ = [
    "GatedGCNLayer", "GraphInputs", "SubgraphTokens", "node_order", "pack_nodes", "read_graph",
    "sample_subgraph_tokens", "unpack_nodes",
]
