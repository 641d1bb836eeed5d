"""GCN, GatedGCN, GPS baselines: shapes, permutation equivariance / invariance, GatedGCN against its equations."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GPSConv
from torch_geometric.utils import to_undirected

from ssmkit.core.registry import create_model
from ssmkit.graphs.layers.gated_gcn import GatedGCNLayer

BASELINES = {"gcn": {}, "gated_gcn": {}, "gps": {"heads": 2}}


def _graph(num_nodes: int, seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    src, dst = torch.randint(0, num_nodes, (2, 2 * num_nodes), generator=g)
    keep = src != dst
    edge_index = to_undirected(torch.stack([src[keep], dst[keep]]), num_nodes=num_nodes)
    return Data(x=torch.randn(num_nodes, 3, generator=g), edge_index=edge_index,
                edge_attr=torch.randn(edge_index.shape[1], 2, generator=g))


def _model(name: str, task: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, in_channels=3, out_channels=4, hidden_channels=8, num_layers=2, task=task, edge_dim=2,
                        **BASELINES[name])


@pytest.mark.parametrize("name", list(BASELINES))
def test_shapes_and_gradients(name):
    batch = Batch.from_data_list([_graph(7, 0), _graph(10, 1)])
    for task, rows in (("graph", 2), ("node", 17)):
        model = _model(name, task)
        out = model(batch)
        assert out.shape == (rows, 4) and torch.isfinite(out).all()
        out.square().sum().backward()
        assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", list(BASELINES))
def test_permutation_equivariance_for_nodes_and_invariance_for_graphs(name):
    data = _graph(12, 2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    new_id = torch.empty_like(perm)
    new_id[perm] = torch.arange(12)
    permuted = Data(x=data.x[perm], edge_index=new_id[data.edge_index], edge_attr=data.edge_attr)
    for task in ("node", "graph"):
        model = _model(name, task).eval()
        with torch.no_grad():
            out, out_perm = model(data), model(permuted)
        want = out[perm] if task == "node" else out
        torch.testing.assert_close(out_perm, want, rtol=1e-4, atol=1e-5)


def test_gps_uses_torch_geometric_gpsconv_with_multihead_attention():
    model = _model("gps", "graph")
    assert all(isinstance(layer, GPSConv) and isinstance(layer.attn, torch.nn.MultiheadAttention)
               for layer in model.layers)


def test_gated_gcn_layer_matches_its_equations_node_by_node():
    """x_i' = x_i + ReLU(BN(A x_i + Σ_j σ_ij ⊙ B x_j / (Σ_j σ_ij + 1e-6))), σ_ij = sigmoid(D x_i + E x_j + C e_ij)."""
    torch.manual_seed(0)
    layer = GatedGCNLayer(5).eval()  # eval: BN is the identity affine map at init running stats
    data = _graph(6, 3)
    x, e = torch.randn(6, 5), torch.randn(data.num_edges, 5)
    got_x, got_e = layer(x, data.edge_index, e)
    scale = 1 / (1 + 1e-5) ** 0.5  # BN with running mean 0, var 1
    for i in range(6):
        total, norm = torch.zeros(5), torch.zeros(5)
        for k in range(data.num_edges):
            j, target = data.edge_index[:, k].tolist()
            if target != i:
                continue
            e_hat = layer.D(x[i]) + layer.E(x[j]) + layer.C(e[k])
            total, norm = total + torch.sigmoid(e_hat) * layer.B(x[j]), norm + torch.sigmoid(e_hat)
            torch.testing.assert_close(got_e[k], e[k] + torch.relu(e_hat * scale), rtol=1e-5, atol=1e-5)
        want = x[i] + torch.relu((layer.A(x[i]) + total / (norm + 1e-6)) * scale)
        torch.testing.assert_close(got_x[i], want, rtol=1e-5, atol=1e-5)
