"""Bad input to every graph model raises a clear error before any work; edgeless graphs and isolated nodes work."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from ssmkit.core.registry import create_model
from ssmkit.graphs.layers.validation import read_graph

MODELS = ["gmn", "graph_mamba", "gcn", "gated_gcn", "gps"]
SMALL = {"hidden_channels": 8, "num_layers": 1}
EXTRA = {"gmn": {"d_state": 4}, "graph_mamba": {"d_state": 4, "eval_orderings": 2}, "gps": {"heads": 2}}


def _model(name: str, **kwargs) -> torch.nn.Module:
    return create_model(name, in_channels=3, out_channels=2, **SMALL, **EXTRA.get(name, {}), **kwargs)


def _graph(num_nodes: int = 5, seed: int = 0) -> Data:
    ring = torch.arange(num_nodes)
    edge_index = torch.stack([torch.cat([ring, (ring + 1) % num_nodes]), torch.cat([(ring + 1) % num_nodes, ring])])
    return Data(x=torch.randn(num_nodes, 3, generator=torch.Generator().manual_seed(seed)), edge_index=edge_index)


@pytest.mark.parametrize("name", MODELS)
def test_graph_without_edges_and_isolated_nodes_work(name):
    model = _model(name, task="node")
    edgeless = Data(x=torch.randn(4, 3), edge_index=torch.empty(2, 0, dtype=torch.long))
    isolated = _graph(5)
    isolated.x, isolated.num_nodes = torch.randn(7, 3), 7  # nodes 5 and 6 have no edge
    for data in (edgeless, isolated, Batch.from_data_list([edgeless, isolated])):
        out = model(data)
        assert out.shape == (data.num_nodes, 2) and torch.isfinite(out).all()
        out.sum().backward()


@pytest.mark.parametrize("name", MODELS)
def test_missing_features_raise_unless_constant_features(name):
    data = Data(edge_index=_graph(5).edge_index, num_nodes=5)
    with pytest.raises(ValueError, match=r"data\.x is missing.*constant_features=True"):
        _model(name)(data)
    model = _model(name, constant_features=True)
    assert model(data).shape == (1, 2)


@pytest.mark.parametrize("name", MODELS)
def test_unsorted_batch_vector_is_refused(name):
    data = Batch.from_data_list([_graph(4), _graph(5)])
    data.batch = data.batch.flip(0)
    with pytest.raises(ValueError, match=r"data\.batch must be sorted.*batch\[4\] = 1 > batch\[5\] = 0"):
        _model(name)(data)


@pytest.mark.parametrize("name", MODELS)
def test_edge_index_out_of_range_names_the_graph_and_the_index(name):
    data = Batch.from_data_list([_graph(4), _graph(5), _graph(6)])
    bad = data.edge_index.clone()
    first_edge_of_graph_2 = 8 + 10
    bad[1, first_edge_of_graph_2 + 1] = 99
    data.edge_index = bad
    with pytest.raises(ValueError, match=rf"edge_index\[1, {first_edge_of_graph_2 + 1}\] = 99 .*in graph 2\).*"
                                         r"15 nodes, valid indices are 0\.\.14"):
        _model(name)(data)
    data.edge_index = torch.cat([data.edge_index[:, :2], torch.tensor([[-1], [0]])], dim=1)
    with pytest.raises(ValueError, match=r"edge_index\[0, 2\] = -1"):
        _model(name)(data)


def test_edge_between_two_graphs_is_refused():
    data = Batch.from_data_list([_graph(4), _graph(5)])
    data.edge_index = torch.cat([data.edge_index, torch.tensor([[0], [6]])], dim=1)
    with pytest.raises(ValueError, match=r"joins node 0 of graph 0 to node 6 of graph 1"):
        read_graph(data, "test", 3)


@pytest.mark.parametrize("name", MODELS)
def test_wrong_features_edges_and_encodings_are_named(name):
    data = _graph(5)
    with pytest.raises(ValueError, match=r"data\.x must have shape \[5, 3\], found \[5, 4\]"):
        _model(name)(Data(x=torch.randn(5, 4), edge_index=data.edge_index))
    with pytest.raises(TypeError, match=r"data\.x must have a floating dtype"):
        _model(name)(Data(x=torch.ones(5, 3, dtype=torch.long), edge_index=data.edge_index))
    nan = data.x.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"data\.x has NaN or inf values in rows \[2\]"):
        _model(name)(Data(x=nan, edge_index=data.edge_index))
    with pytest.raises(TypeError, match="expected a torch_geometric.data.Data or Batch"):
        _model(name)(data.x)
    if name != "gcn":  # GCN reads no edge features
        with pytest.raises(ValueError, match=r"data\.edge_attr is missing; .*edge_dim=2"):
            _model(name, edge_dim=2)(data)
    with pytest.raises(ValueError, match=r"data\.laplacian_eigenvector_pe is missing.*AddLaplacianEigenvectorPE"):
        _model(name, pe_dim=2)(data)


def test_read_graph_checks_edge_attr_and_pe_shapes():
    data = _graph(5)
    data.edge_attr = torch.randn(3, 2)
    with pytest.raises(ValueError, match=r"data\.edge_attr must have shape \[10, 2\], found \[3, 2\]"):
        read_graph(data, "test", 3, edge_dim=2)
    data.random_walk_pe = torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"data\.random_walk_pe must have shape \[5, 3\], found \[5, 4\]"):
        read_graph(data, "test", 3, pe_dim=3, pe_type="random_walk")
    inputs = read_graph(data, "test", 3, pe_dim=4, pe_type="random_walk")
    assert inputs.pe.shape == (5, 4) and inputs.num_graphs == 1 and inputs.batch.tolist() == [0] * 5


@pytest.mark.parametrize("name", MODELS)
def test_bad_constructor_arguments_are_named(name):
    with pytest.raises(ValueError, match="task must be one of"):
        _model(name, task="edge")
    with pytest.raises(ValueError, match="dropout must be a float in"):
        _model(name, dropout=1.5)
    with pytest.raises(ValueError, match="pe_type must be one of"):
        _model(name, pe_type="spectral")


def test_model_specific_arguments_are_checked():
    with pytest.raises(ValueError, match="walk_length must be an int >= 0"):
        _model("gmn", walk_length=-1)
    with pytest.raises(ValueError, match="local_mpnn must be one of"):
        _model("gmn", local_mpnn="pna")
    with pytest.raises(ValueError, match="node_ordering must be one of"):
        _model("gmn", node_ordering="random")
    with pytest.raises(ValueError, match="eval_orderings must be an int >= 1"):
        create_model("graph_mamba", in_channels=3, out_channels=2, eval_orderings=0)
    with pytest.raises(ValueError, match="heads must be a positive int dividing hidden_channels=8"):
        create_model("gps", in_channels=3, out_channels=2, hidden_channels=8, heads=3)


def test_importing_the_domain_without_torch_geometric_says_what_to_install(monkeypatch):
    import importlib
    import sys

    monkeypatch.delitem(sys.modules, "ssmkit.graphs")
    monkeypatch.setitem(sys.modules, "torch_geometric", None)  # makes `import torch_geometric` fail
    with pytest.raises(ImportError, match=r"pip install 'ssmkit\[graphs\]'") as info:
        importlib.import_module("ssmkit.graphs")
    assert info.value.name == "torch_geometric"
