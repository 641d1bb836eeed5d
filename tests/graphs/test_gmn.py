"""GMN: shapes and gradients, the token encoder against a per-token loop, padding never leaks into either scan
direction, permutation sanity under node ordering, chunked subgraph stage, eval determinism."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import AddRandomWalkPE
from torch_geometric.utils import to_undirected

from ssmkit.core.mixers import BiMamba
from ssmkit.graphs.layers.tokenization import node_order, node_scores, pack_nodes, sample_subgraph_tokens
from ssmkit.graphs.models.gmn import GMN, SubgraphTokenEncoder

SMALL = {"hidden_channels": 8, "num_layers": 2, "d_state": 4}


def _graph(num_nodes: int, seed: int, edge_dim: int | None = None) -> Data:
    g = torch.Generator().manual_seed(seed)
    src, dst = torch.randint(0, num_nodes, (2, 2 * num_nodes), generator=g)
    keep = src != dst
    edge_index = to_undirected(torch.stack([src[keep], dst[keep]]), num_nodes=num_nodes)
    data = Data(x=torch.randn(num_nodes, 3, generator=g), edge_index=edge_index)
    if edge_dim:
        data.edge_attr = torch.randn(edge_index.shape[1], edge_dim, generator=g)
    return data


@pytest.mark.parametrize(("task", "local_mpnn", "ordering"), [("graph", "gatedgcn", "degree"),
                                                              ("node", "gine", "pagerank"), ("node", "none", "degree")])
def test_forward_backward_shapes_and_every_parameter_gets_a_gradient(task, local_mpnn, ordering):
    torch.manual_seed(0)
    model = GMN(3, 4, task=task, edge_dim=2, local_mpnn=local_mpnn, node_ordering=ordering, pe_dim=3,
                pe_type="random_walk", **SMALL)
    rwse = AddRandomWalkPE(walk_length=3)  # writes data.random_walk_pe [N, 3], the attribute GMN reads
    batch = Batch.from_data_list([rwse(_graph(7, 0, 2)), rwse(_graph(11, 1, 2))])
    out = model(batch)
    assert out.shape == ((2, 4) if task == "graph" else (18, 4)) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_token_encoder_matches_a_per_token_gin_loop():
    """φ(T) = W2 Σ_{u∈T} ReLU(W1 x_u + b1 + Σ_{w∈T, w->u} W1 x_w) + b2, token by token, on the induced subgraph."""
    torch.manual_seed(0)
    data = _graph(9, 3)
    encoder = SubgraphTokenEncoder(5)
    h = torch.randn(9, 5)
    tokens = sample_subgraph_tokens(data.edge_index, 9, 2, 3, 2, torch.Generator().manual_seed(0))
    out = encoder(encoder.project(h), tokens)  # [N, L, D]
    edges = set(map(tuple, data.edge_index.t().tolist()))
    w1, b1, w2, b2 = encoder.lin_in.weight, encoder.lin_in.bias, encoder.lin_out.weight, encoder.lin_out.bias
    for v in range(9):
        for t in range(tokens.nodes.shape[1]):
            members = [u for u in tokens.nodes[v, t].tolist() if u >= 0]
            total = torch.zeros(5)
            for u in members:
                pre = w1 @ h[u] + b1 + sum((w1 @ h[w] for w in members if (w, u) in edges), torch.zeros(5))
                total = total + torch.relu(pre)
            torch.testing.assert_close(out[v, t], w2 @ total + b2, rtol=1e-5, atol=1e-5)


def test_padding_never_leaks_into_either_direction_of_the_node_scan():
    """Garbage in the padded positions of the packed node sequences leaves BiMamba's valid outputs unchanged."""
    torch.manual_seed(0)
    batch = Batch.from_data_list([_graph(5, 0), _graph(12, 1), _graph(8, 2)])
    h = torch.randn(batch.num_nodes, 8)
    perm = node_order(node_scores(batch.edge_index, batch.num_nodes, "degree"), batch.batch)
    dense, mask, lengths = pack_nodes(h, batch.batch, perm, 3)
    mixer = BiMamba(8, d_state=4)
    garbage = dense.masked_fill(~mask[:, :, None], 0.0) + 1e3 * torch.randn_like(dense) * (~mask[:, :, None])
    torch.testing.assert_close(mixer(garbage, lengths=lengths)[mask], mixer(dense, lengths=lengths)[mask])
    # Without lengths the backward direction would read the garbage: the test can fail.
    assert not torch.allclose(mixer(garbage)[mask], mixer(dense)[mask])


@pytest.mark.parametrize("task", ["graph", "node"])
def test_each_graph_of_a_batch_gives_what_it_gives_alone(task):
    """Short graphs are right-padded next to long ones; with m = 0 (deterministic) outputs equal single-graph ones."""
    torch.manual_seed(0)
    model = GMN(3, 2, task=task, walk_length=0, **SMALL).eval()
    graphs = [_graph(4, 0), _graph(13, 1), _graph(7, 2)]
    with torch.no_grad():
        together = model(Batch.from_data_list(graphs))
        alone = [model(graph) for graph in graphs]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-4, atol=1e-5)


def test_relabeling_nodes_consistently_with_the_ordering_permutes_the_outputs():
    """Node ordering is by degree with ties in index order; relabel nodes by their sorted position (a permutation that
    keeps every tie's order) and the node outputs follow the permutation."""
    torch.manual_seed(0)
    model = GMN(3, 2, task="node", walk_length=0, edge_dim=2, **SMALL).eval()
    data = _graph(10, 4, edge_dim=2)
    perm = node_order(node_scores(data.edge_index, 10, "degree"), torch.zeros(10, dtype=torch.long))
    new_id = torch.empty_like(perm)
    new_id[perm] = torch.arange(10)
    relabeled = Data(x=data.x[perm], edge_index=new_id[data.edge_index], edge_attr=data.edge_attr)
    with torch.no_grad():
        torch.testing.assert_close(model(relabeled), model(data)[perm], rtol=1e-4, atol=1e-5)


def test_chunked_subgraph_stage_equals_one_chunk_in_outputs_and_gradients():
    graph = _graph(15, 5)
    results = []
    for chunk in (4, 1000):
        torch.manual_seed(0)
        model = GMN(3, 2, task="node", subgraph_chunk_size=chunk, **SMALL)
        torch.manual_seed(1)  # same random walks
        out = model(graph)
        out.square().sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[0][0], results[1][0])
    for name, grad in results[0][1].items():
        torch.testing.assert_close(grad, results[1][1][name], msg=lambda m, n=name: f"grad of {n}: {m}")


def test_walks_are_resampled_in_training_and_fixed_in_eval():
    torch.manual_seed(0)
    model = GMN(3, 2, task="node", **SMALL)
    graph = _graph(12, 6)
    first, second = model(graph), model(graph)
    assert not torch.allclose(first, second)  # fresh random walks per training step
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(graph), model(graph), rtol=0, atol=0)
