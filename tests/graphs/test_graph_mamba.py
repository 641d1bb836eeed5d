"""Graph-Mamba: against an independent re-implementation of the official GPS layer (bowang-lab/Graph-Mamba,
``Mamba_Hybrid_Degree_Noise`` with ``CustomGatedGCN``) in official state_dict layout; degree + noise orderings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data
from torch_geometric.utils import degree, to_dense_batch, to_undirected

from ssmkit.graphs.models.graph_mamba import GraphMamba, GraphMambaLayer


def _graph(num_nodes: int, seed: int) -> Data:
    g = torch.Generator().manual_seed(seed)
    src, dst = torch.randint(0, num_nodes, (2, 2 * num_nodes), generator=g)
    keep = src != dst
    return Data(x=torch.randn(num_nodes, 3, generator=g),
                edge_index=to_undirected(torch.stack([src[keep], dst[keep]]), num_nodes=num_nodes))


def _official_state_dict(layer: GraphMambaLayer) -> dict[str, torch.Tensor]:
    """Our layer's weights under the official GPSLayer names (local_model = GatedGCNLayer, self_attn = Mamba)."""
    rename = {"local.bn_node.module.": "local_model.bn_node_x.", "local.bn_edge.module.": "local_model.bn_edge_e.",
              "local.": "local_model.", "norm_local.module.": "norm1_local.", "mamba.": "self_attn.",
              "norm_attn.module.": "norm1_attn.", "ffn.0.": "ff_linear1.", "ffn.3.": "ff_linear2.",
              "norm_ffn.module.": "norm2."}
    out = {}
    for key, value in layer.state_dict().items():
        for old, new in rename.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value
    return out


def _bn(sd: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(x, None, None, sd[prefix + "weight"], sd[prefix + "bias"], training=True)


def _official_layer(sd: dict, mamba: torch.nn.Module, h, e, edge_index, batch, shuffle):
    """The official GPSLayer.forward (training branch, batch norm, dropout 0), written from its semantics."""
    lin = {k: (sd[f"local_model.{k}.weight"], sd[f"local_model.{k}.bias"]) for k in "ABCDE"}
    ax, bx, dx, ex = (F.linear(h, *lin[k]) for k in "ABDE")
    ce = F.linear(e, *lin["C"])
    src, dst = edge_index
    e_ij = dx[dst] + ex[src] + ce  # message(Dx_i, Ex_j, Ce) with i = target
    sigma = torch.sigmoid(e_ij)
    num = torch.zeros_like(h).index_add_(0, dst, sigma * bx[src])
    den = torch.zeros_like(h).index_add_(0, dst, sigma)
    x = ax + num / (den + 1e-6)
    h_local = h + F.relu(_bn(sd, "local_model.bn_node_x.", x))  # GatedGCN residual
    e_out = e + F.relu(_bn(sd, "local_model.bn_edge_e.", e_ij))
    h_local = _bn(sd, "norm1_local.", h_local)
    # Mamba_Hybrid_Degree (training): shuffle within the batch, then stable lexsort by (batch, degree).
    deg = degree(edge_index[0], h.shape[0]).to(torch.long)
    key_deg, key_batch = deg[shuffle], batch[shuffle]
    first = torch.argsort(key_deg, stable=True)
    order = first[torch.argsort(key_batch[first], stable=True)]
    perm = shuffle[order]
    h_dense, mask = to_dense_batch(h[perm], batch[perm])
    h_attn = mamba(h_dense)[mask][torch.argsort(perm)]  # no lengths: the official call
    h_attn = _bn(sd, "norm1_attn.", h + h_attn)
    out = h_local + h_attn
    ff = F.linear(F.relu(F.linear(out, sd["ff_linear1.weight"], sd["ff_linear1.bias"])), sd["ff_linear2.weight"],
                  sd["ff_linear2.bias"])
    return _bn(sd, "norm2.", out + ff), e_out, perm


def test_layer_matches_the_official_gps_layer_with_mamba_hybrid_degree_noise():
    torch.manual_seed(0)
    layer = GraphMambaLayer(8, dropout=0.0, d_state=4, d_conv=4, expand=1, update_edges=True, backend="auto")
    batch = Batch.from_data_list([_graph(6, 0), _graph(11, 1), _graph(3, 2)])
    h, e = torch.randn(batch.num_nodes, 8), torch.randn(batch.num_edges, 8)
    shuffle = torch.cat([torch.randperm(n) + start for n, start in zip([6, 11, 3], [0, 6, 17])])
    sd = _official_state_dict(layer)
    want_h, want_e, perm = _official_layer(sd, layer.mamba, h, e, batch.edge_index, batch.batch, shuffle)
    got_h, got_e = layer(h, e, batch.edge_index, batch.batch, [perm], 3)
    torch.testing.assert_close(got_h, want_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got_e, want_e, rtol=1e-4, atol=1e-5)


def test_orderings_sort_by_degree_with_random_ties_one_in_training_five_in_eval():
    torch.manual_seed(0)
    model = GraphMamba(3, 2, hidden_channels=8, num_layers=1, d_state=4)
    batch = Batch.from_data_list([_graph(12, 0), _graph(9, 1)])
    deg = degree(batch.edge_index[0], batch.num_nodes)
    assert len(model.orderings(deg, batch.batch, None)) == 1
    model.eval()
    perms = model.orderings(deg, batch.batch, torch.Generator().manual_seed(0))
    assert len(perms) == 5
    for perm in perms:
        assert torch.equal(batch.batch[perm], batch.batch)  # each graph stays in its rows
        for g in range(2):
            d = deg[perm][batch.batch[perm] == g]
            assert torch.all(d[1:] >= d[:-1])  # ascending degree, highest last
    assert len({tuple(p.tolist()) for p in perms}) > 1  # ties broken at random


def test_forward_shapes_gradients_and_deterministic_eval_average():
    torch.manual_seed(0)
    for task, rows in (("graph", 2), ("node", 17)):
        model = GraphMamba(3, 4, hidden_channels=8, num_layers=2, d_state=4, task=task, edge_dim=2)
        batch = Batch.from_data_list([_graph(8, 0), _graph(9, 1)])
        batch.edge_attr = torch.randn(batch.num_edges, 2)
        out = model(batch)
        assert out.shape == (rows, 4)
        out.square().sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        model.eval()
        with torch.no_grad():
            torch.testing.assert_close(model(batch), model(batch), rtol=0, atol=0)
