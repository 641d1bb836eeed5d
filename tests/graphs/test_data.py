"""GraphDataModule on small generated raw files of every format: no download, splits, folds, PE, bad input."""

from __future__ import annotations

import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.datasets import HeterophilousGraphDataset, LRGBDataset, TUDataset

from ssmkit.graphs.data import GraphDataModule, laplacian_pe, stratified_folds, synthetic_graph


@pytest.fixture(autouse=True)
def no_download(monkeypatch):
    def refuse(self):
        raise AssertionError(f"{type(self).__name__} tried to download")

    for cls in (TUDataset, HeterophilousGraphDataset, LRGBDataset):
        monkeypatch.setattr(cls, "download", refuse)


def write_tu(root: Path, name: str, sizes: list[int], labels: list[int]) -> None:
    """TU raw files (1-based ids): a path graph per entry of ``sizes``, node labels 1..3, graph labels."""
    folder = root / "tu" / name
    folder.mkdir(parents=True)
    edges, indicator, offset = [], [], 0
    for g, n in enumerate(sizes):
        for i in range(n - 1):
            edges += [(offset + i + 1, offset + i + 2), (offset + i + 2, offset + i + 1)]
        indicator += [g + 1] * n
        offset += n
    (folder / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (folder / f"{name}_graph_indicator.txt").write_text("".join(f"{g}\n" for g in indicator))
    (folder / f"{name}_graph_labels.txt").write_text("".join(f"{y}\n" for y in labels))
    (folder / f"{name}_node_labels.txt").write_text("".join(f"{i % 3}\n" for i in range(offset)))


class csr_matrix:  # noqa: N801 - pickled under scipy's class name
    """Pickles like a scipy CSR matrix (module name patched to scipy.sparse.csr below)."""

    def __init__(self, dense: np.ndarray):
        rows, cols = np.nonzero(dense)
        self.__dict__.update(_shape=dense.shape, data=dense[rows, cols].astype(np.float32),
                             indices=cols.astype(np.int32), indptr=np.searchsorted(rows, np.arange(dense.shape[0] + 1))
                             .astype(np.int32), format="csr")


def dump_planetoid(path: Path, obj) -> None:
    raw = pickle.dumps(obj, protocol=2)
    path.write_bytes(raw.replace(f"c{__name__}\ncsr_matrix\n".encode(), b"cscipy.sparse.csr\ncsr_matrix\n"))


def write_planetoid(root: Path, name: str = "cora") -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A 10-node Planetoid set: 2 labelled train nodes, allx = nodes 0..5, test nodes 8, 6, 9, 7 (unsorted)."""
    folder = root / "planetoid"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    features = (rng.random((10, 5)) < 0.5).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 10)]
    test_index = [8, 6, 9, 7]
    graph = defaultdict(list, {0: [1, 1, 0], 1: [0, 2], 2: [1], 3: [4], 4: [3], 6: [7], 7: [6], 8: [9], 9: [8]})
    # row i of tx / ty belongs to node test_index[i] (the order of the test.index file)
    files = {"x": csr_matrix(features[:2]), "y": labels[:2], "allx": csr_matrix(features[:6]), "ally": labels[:6],
             "tx": csr_matrix(features[test_index]), "ty": labels[test_index], "graph": graph}
    for suffix, obj in files.items():
        dump_planetoid(folder / f"ind.{name}.{suffix}", obj)
    (folder / f"ind.{name}.test.index").write_text("".join(f"{i}\n" for i in test_index))
    return features, labels, test_index


def test_tu_folds_are_stratified_disjoint_and_never_download(tmp_path):
    # 40 path graphs of 3..42 nodes: the node count identifies a graph; 30 of class 1, 10 of class -1
    write_tu(tmp_path, "MUTAG", list(range(3, 43)), [1 if i < 30 else -1 for i in range(40)])
    kw = dict(data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), num_folds=5, use_edge_attr=False)
    modules = [GraphDataModule("mutag", fold=f, **kw) for f in range(5)]
    dm = modules[0]
    assert (dm.task, dm.metric, dm.in_channels, dm.out_channels, dm.edge_dim) == ("graph", "accuracy", 3, 2, None)
    ids = [{split: {g.num_nodes for g in graphs} for split, graphs in m.splits.items()} for m in modules]
    for f, split_ids in enumerate(ids):
        assert set.union(*split_ids.values()) == set(range(3, 43)) and sum(map(len, split_ids.values())) == 40
        assert split_ids["val"] == ids[(f + 1) % 5]["test"]  # validation fold = the next test fold
        for split in ("val", "test"):  # 30 / 10 per class -> 6 / 2 per fold
            assert sorted(int(g.y) for g in modules[f].splits[split]) == [0, 0, 1, 1, 1, 1, 1, 1]
    assert set.union(*(i["test"] for i in ids)) == set(range(3, 43))  # every graph is tested exactly once
    batch = next(iter(dm.train_dataloader()))
    assert batch.num_graphs == 24 and batch.y.shape == (24,) and batch.x.shape[1] == 3


def test_stratified_folds_partition_every_class():
    labels = torch.tensor([0] * 23 + [1] * 7 + [2] * 10)
    folds = stratified_folds(labels, 5, seed=3)
    for c, count in ((0, 23), (1, 7), (2, 10)):
        per_fold = torch.bincount(folds[labels == c], minlength=5)
        assert per_fold.sum() == count and per_fold.max() - per_fold.min() <= 1
    assert not torch.equal(folds, stratified_folds(labels, 5, seed=4))
    assert torch.equal(folds, stratified_folds(labels, 5, seed=3))


def test_heterophilous_npz_is_symmetrized_and_the_split_column_is_chosen(tmp_path):
    folder = tmp_path / "heterophilous"
    folder.mkdir()
    rng = np.random.default_rng(0)
    masks = rng.random((3, 10, 12)) < 0.5  # [3, splits, N]
    np.savez(folder / "minesweeper.npz", node_features=rng.standard_normal((12, 4)).astype(np.float32),
             node_labels=rng.integers(0, 2, 12), edges=np.array([[0, 1], [1, 2], [5, 7]]), train_masks=masks[0],
             val_masks=masks[1], test_masks=masks[2])
    dm = GraphDataModule("minesweeper", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), split=7)
    data = dm.splits["train"][0]
    assert (dm.task, dm.metric, dm.out_channels, dm.in_channels) == ("node", "auroc", 2, 4)
    assert sorted(map(tuple, data.edge_index.t().tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1), (5, 7), (7, 5)]
    for i, key in enumerate(("train_mask", "val_mask", "test_mask")):
        assert torch.equal(data[key], torch.from_numpy(masks[i, 7]))


def test_planetoid_matches_pyg_semantics(tmp_path):
    features, labels, test_index = write_planetoid(tmp_path)
    dm = GraphDataModule("cora", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    data = dm.splits["train"][0]
    # every node gets its own features and label back (PyG: x[test_index] = x[sorted_test_index])
    torch.testing.assert_close(data.x, torch.from_numpy(features))
    assert torch.equal(data.y, torch.from_numpy(labels.argmax(1)))
    assert data.train_mask.nonzero().flatten().tolist() == [0, 1]
    assert data.val_mask.nonzero().flatten().tolist() == list(range(2, 10))  # 500 nodes after the train nodes
    assert data.test_mask.nonzero().flatten().tolist() == sorted(test_index)
    # duplicates and the self loop 0 -> 0 removed; the adjacency lists are kept as written (both directions here)
    assert sorted(map(tuple, data.edge_index.t().tolist())) == [(0, 1), (1, 0), (1, 2), (2, 1), (3, 4), (4, 3),
                                                                (6, 7), (7, 6), (8, 9), (9, 8)]


def test_lrgb_tuples(tmp_path):
    folder = tmp_path / "lrgb" / "peptidesfunc"
    folder.mkdir(parents=True)
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        graphs = [(torch.randint(0, 5, (6, 9)), torch.randint(0, 3, (10, 3)), torch.randint(0, 6, (2, 10)),
                   torch.randint(0, 2, (1, 10)).float()) for _ in range(count)]
        torch.save(graphs, folder / f"{split}.pt")
    dm = GraphDataModule("peptides-func", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), batch_size=4)
    assert (dm.task, dm.metric, dm.in_channels, dm.out_channels, dm.edge_dim) == ("graph", "ap", 9, 10, 3)
    batch = next(iter(dm.train_dataloader()))
    assert batch.y.shape == (4, 10) and batch.x.dtype == torch.float32 and batch.edge_attr.shape == (40, 3)


def test_missing_raw_files_are_listed_with_their_source(tmp_path):
    write_tu(tmp_path, "PROTEINS", [3, 4], [1, 2])
    (tmp_path / "tu" / "PROTEINS" / "PROTEINS_graph_labels.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 raw file\(s\) missing.*PROTEINS_graph_labels.txt.*TUDataset"):
        GraphDataModule("proteins", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"3 raw file\(s\).*val.pt.*Zenodo"):
        GraphDataModule("peptides-func", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError, match=r"8 raw file\(s\).*ind.citeseer.allx.*kimiyoung/planetoid"):
        GraphDataModule("citeseer", data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(dataset="qm9"), "dataset must be one of"),
    (dict(dataset="synthetic_node", split=10), r"split: expected an index in \[0, 10\)"),
    (dict(dataset="synthetic_graph", split=1), r"split: expected an index in \[0, 1\)"),
    (dict(dataset="synthetic_graph", fold=10), "fold: expected 0 <= fold < num_folds"),
    (dict(dataset="synthetic_graph", pe_type="laplacian"), "pe_dim: expected 0 with pe_type 'none'"),
    (dict(dataset="synthetic_graph", pe_type="spectral", pe_dim=4), "pe_type must be one of"),
    (dict(dataset="synthetic_graph", batch_size=0), "batch_size: expected a positive int"),
], ids=["name", "split", "single-split", "fold", "pe-dim", "pe-type", "batch"])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GraphDataModule(**kwargs)


def test_positional_encodings():
    dm = GraphDataModule("synthetic_node", pe_type="random_walk", pe_dim=3)
    data = dm.splits["train"][0]
    assert data.random_walk_pe.shape == (300, 3) and dm.pe_dim == 3
    torch.testing.assert_close(data.random_walk_pe[:, 0], torch.zeros(300))  # no self loops: no 1-step return
    # Laplacian PE: eigenvectors of the symmetric normalized Laplacian for its smallest non-zero eigenvalues
    graph = synthetic_graph(30, 4.0, 2, 2, seed=1)
    pe = laplacian_pe(graph, 4).double()  # [N, 4]
    n = graph.num_nodes
    adj = torch.zeros(n, n, dtype=torch.float64)
    adj[graph.edge_index[0], graph.edge_index[1]] = 1.0
    d = adj.sum(1).clamp(min=1).rsqrt()
    lap = torch.eye(n, dtype=torch.float64) - d[:, None] * adj * d[None]
    values = torch.linalg.eigvalsh(lap)[1:5]
    torch.testing.assert_close(lap @ pe, pe * values, atol=1e-5, rtol=0)
    torch.testing.assert_close(pe.T @ pe, torch.eye(4, dtype=torch.float64), atol=1e-5, rtol=0)
    small = laplacian_pe(synthetic_graph(3, 2.0, 2, 2), 5)
    assert small.shape == (3, 5) and torch.all(small[:, 2:] == 0)
