"""Graph benchmarks from local raw files only (nothing is ever downloaded), as one LightningDataModule.

Datasets (``dataset=``) and the files they need under ``data_dir`` (default ``$SSMKIT_GRAPH_DATA`` or
``../shared/data/graphs``; see that folder's README.md for sources and licences):

| dataset | task | raw files | split | metric |
|---|---|---|---|---|
| cora, citeseer | node | ``planetoid/ind.<name>.{x,tx,allx,y,ty,ally,graph,test.index}`` | public | accuracy |
| mutag, proteins, enzymes | graph | ``tu/<NAME>/<NAME>_{A,graph_indicator,graph_labels}.txt`` | 10-fold CV | accuracy |
| minesweeper, tolokers | node | ``heterophilous/<name>.npz`` | the 10 official splits | ROC-AUC |
| peptides-func | graph | ``lrgb/peptidesfunc/{train,val,test}.pt`` (LRGB tuples) | official | AP |
| synthetic_graph, synthetic_node | graph / node | none (generated, seeded) | random | accuracy |

Raw files are checked first (a missing one raises ``FileNotFoundError`` naming every missing file and its source),
then linked into ``cache_dir`` (default ``~/.cache/ssmkit/graphs``, never the repository), where the
torch_geometric dataset classes (``TUDataset``, ``HeterophilousGraphDataset``, ``LRGBDataset``) find them and keep
their processed copies, so their download code never runs. Planetoid's pickles hold ``scipy.sparse`` matrices and
scipy is not a dependency, so they are read here with the semantics of torch_geometric's ``read_planetoid_data``
(public split: 20 labels per class for training, 500 validation and 1000 test nodes).

TU cross-validation: graphs are shuffled per class (seed ``split_seed``) and dealt round-robin into ``num_folds``
folds, so every fold has the class proportions of the whole set; fold ``fold`` is the test set, fold
``(fold + 1) % num_folds`` the validation set, the rest the training set.
A positional encoding, when asked for (``pe_type``, ``pe_dim``), is a node attribute the graph models read:
``laplacian_eigenvector_pe`` [N, pe_dim] or ``random_walk_pe`` [N, pe_dim]; ``in_channels`` counts node features only.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.transforms import AddRandomWalkPE
from torch_geometric.utils import coalesce, get_laplacian, remove_self_loops, to_undirected

from ssmkit.core.datamodule import SplitDataModule

# dataset -> (family, name used by the files / torch_geometric, task, metric)
DATASETS = {
    "cora": ("planetoid", "cora", "node", "accuracy"),
    "citeseer": ("planetoid", "citeseer", "node", "accuracy"),
    "mutag": ("tu", "MUTAG", "graph", "accuracy"),
    "proteins": ("tu", "PROTEINS", "graph", "accuracy"),
    "enzymes": ("tu", "ENZYMES", "graph", "accuracy"),
    "minesweeper": ("heterophilous", "minesweeper", "node", "auroc"),
    "tolokers": ("heterophilous", "tolokers", "node", "auroc"),
    "peptides-func": ("lrgb", "peptides-func", "graph", "ap"),
    "synthetic_graph": ("synthetic", "synthetic_graph", "graph", "accuracy"),
    "synthetic_node": ("synthetic", "synthetic_node", "node", "accuracy"),
}
SOURCES = {
    "planetoid": "kimiyoung/planetoid:data/ (MIT; see graphs/planetoid in the shared data README.md)",
    "tu": "the TUDataset zip of the same name (bknyaz/graph_nn:data/<NAME>.zip, unzipped; Morris et al. 2020)",
    "heterophilous": "yandex-research/heterophilous-graphs:data/<name>.npz (MIT; Platonov et al. 2023)",
    "lrgb": "LRGB peptidesfunc.zip (Zenodo 6975830 / the torch_geometric LRGBDataset URL), unzipped; "
            "the raw csv.gz + split pickle form needs RDKit, which is not installed",
}
PE_TYPES = ("none", "laplacian", "random_walk")
PLANETOID_SUFFIXES = ("x", "tx", "allx", "y", "ty", "ally", "graph", "test.index")
NUM_HETEROPHILOUS_SPLITS = 10


def raw_files(dataset: str, data_dir: str | Path) -> list[Path]:
    """The raw files ``dataset`` needs under ``data_dir`` (synthetic datasets need none)."""
    family, name = DATASETS[dataset][:2]
    root = Path(data_dir)
    if family == "planetoid":
        return [root / "planetoid" / f"ind.{name}.{suffix}" for suffix in PLANETOID_SUFFIXES]
    if family == "tu":
        return [root / "tu" / name / f"{name}_{part}.txt" for part in ("A", "graph_indicator", "graph_labels")]
    if family == "heterophilous":
        return [root / "heterophilous" / f"{name}.npz"]
    if family == "lrgb":
        return [root / "lrgb" / "peptidesfunc" / f"{split}.pt" for split in ("train", "val", "test")]
    return []


def check_raw_files(dataset: str, data_dir: str | Path) -> None:
    """Raise ``FileNotFoundError`` listing every missing raw file of ``dataset`` and where it comes from."""
    missing = [str(p) for p in raw_files(dataset, data_dir) if not p.is_file()]
    if missing:
        source = SOURCES[DATASETS[dataset][0]]
        raise FileNotFoundError(f"dataset {dataset!r}: {len(missing)} raw file(s) missing under data_dir "
                                f"{str(data_dir)!r}: {missing}. Source: {source}. Nothing is downloaded.")


def _link_raw(files: list[Path], raw_dir: Path) -> None:
    """Symlink ``files`` into ``raw_dir`` (replacing stale links) for a torch_geometric dataset class."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    for src in files:
        dst = raw_dir / src.name
        if dst.is_symlink() or dst.exists():
            if dst.resolve() == src.resolve():
                continue
            dst.unlink()
        dst.symlink_to(src.resolve())


class _Sparse:
    """Stand-in for a pickled ``scipy.sparse`` CSR matrix: keeps its state, densifies with numpy."""

    def __setstate__(self, state: dict) -> None:
        self.state = state

    def dense(self) -> np.ndarray:
        s = self.state
        rows, cols = s["_shape"]
        out = np.zeros((rows, cols), dtype=np.float32)
        row_of = np.repeat(np.arange(rows), np.diff(s["indptr"]))  # [nnz]
        out[row_of, s["indices"]] = s["data"]
        return out


class _PlanetoidUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.startswith("scipy.sparse"):
            return _Sparse
        return super().find_class(module, name)


def _read_planetoid_file(path: Path) -> torch.Tensor | dict:
    if path.name.endswith("test.index"):
        return torch.tensor([int(line) for line in path.read_text().split()], dtype=torch.long)
    with open(path, "rb") as f:
        obj = _PlanetoidUnpickler(f, encoding="latin1").load()
    if isinstance(obj, _Sparse):
        return torch.from_numpy(obj.dense())
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.astype(np.float32))
    return obj  # the adjacency dict


def read_planetoid(data_dir: str | Path, name: str) -> Data:
    """One Planetoid graph with the public split masks (torch_geometric ``read_planetoid_data`` semantics)."""
    x, tx, allx, y, ty, ally, graph, test_index = (_read_planetoid_file(p) for p in
                                                   raw_files(name, data_dir))
    sorted_test = test_index.sort().values
    if name == "citeseer":
        # CiteSeer has isolated test nodes without features: zero rows fill the gaps in the test index range
        span = int(test_index.max() - test_index.min()) + 1
        tx_ext, ty_ext = torch.zeros(span, tx.shape[1]), torch.zeros(span, ty.shape[1])
        tx_ext[sorted_test - test_index.min()] = tx
        ty_ext[sorted_test - test_index.min()] = ty
        tx, ty = tx_ext, ty_ext
    features = torch.cat([allx, tx])  # [N, F]
    features[test_index] = features[sorted_test]
    labels = torch.cat([ally, ty]).argmax(dim=1)  # [N]
    labels[test_index] = labels[sorted_test]
    n = labels.shape[0]
    rows = [src for src, targets in graph.items() for _ in targets]
    cols = [dst for targets in graph.values() for dst in targets]
    edge_index, _ = remove_self_loops(torch.tensor([rows, cols], dtype=torch.long))
    edge_index = coalesce(edge_index, num_nodes=n, sort_by_row=False)  # [2, E]
    masks = torch.zeros(3, n, dtype=torch.bool)
    masks[0, : y.shape[0]] = True
    masks[1, y.shape[0]: y.shape[0] + 500] = True
    masks[2, test_index] = True
    return Data(x=features, edge_index=edge_index, y=labels, train_mask=masks[0, :, None],
                val_mask=masks[1, :, None], test_mask=masks[2, :, None])


def stratified_folds(labels: torch.Tensor, num_folds: int, seed: int) -> torch.Tensor:
    """Fold id in ``[0, num_folds)`` of every graph, class proportions kept per fold.

    Args:
        labels: [G] integer class of each graph.
        num_folds: number of folds (fold sizes differ by at most one graph per class).
        seed: shuffling seed.

    Returns:
        [G] long fold ids.
    """
    generator = torch.Generator().manual_seed(seed)
    order = torch.cat([
        idx[torch.randperm(idx.numel(), generator=generator)]
        for idx in (torch.nonzero(labels == c).flatten() for c in labels.unique(sorted=True))
    ])  # [G], graphs grouped by class, shuffled within each class
    folds = torch.empty_like(labels, dtype=torch.long)
    folds[order] = torch.arange(labels.numel()) % num_folds
    return folds


def synthetic_graph(num_nodes: int, avg_degree: float, in_channels: int, num_classes: int,
                    seed: int = 0) -> Data:
    """A random undirected graph whose node labels follow the features of the node and its neighbours.

    Edges: ``num_nodes * avg_degree / 2`` uniformly random pairs, symmetrized. Labels: argmax of a fixed random
    projection of (own features + mean of neighbour features), so message passing helps.

    Returns:
        ``Data(x [N, in_channels], edge_index [2, E], y [N])``.
    """
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, in_channels, generator=generator)  # [N, F]
    pairs = torch.randint(num_nodes, (2, int(num_nodes * avg_degree / 2)), generator=generator)  # [2, E/2]
    edge_index, _ = remove_self_loops(to_undirected(pairs, num_nodes=num_nodes))  # [2, E]
    degree = torch.bincount(edge_index[0], minlength=num_nodes).clamp(min=1)[:, None]  # [N, 1]
    neighbours = torch.zeros_like(x).index_add_(0, edge_index[0], x[edge_index[1]]) / degree  # [N, F]
    projection = torch.randn(in_channels, num_classes, generator=generator)  # [F, C]
    y = ((x + neighbours) @ projection).argmax(dim=1)  # [N]
    return Data(x=x, edge_index=edge_index, y=y)


def laplacian_pe(data: Data, k: int) -> torch.Tensor:
    """Eigenvectors of the k smallest non-trivial eigenvalues of the symmetric normalized Laplacian.

    Dense ``torch.linalg.eigh`` (the k + 1 smallest, the first dropped, as torch_geometric's
    ``AddLaplacianEigenvectorPE``); graphs with at most k nodes are padded with zero columns.

    Returns:
        [N, k] float32.
    """
    n = data.num_nodes
    if n > 20_000:
        raise ValueError(f"pe_type: the dense Laplacian PE is limited to 20000 nodes, found a graph with {n}; "
                         "use 'random_walk' for graphs this large")
    index, weight = get_laplacian(data.edge_index, normalization="sym", num_nodes=n)
    lap = torch.zeros(n, n, dtype=torch.float64)
    lap.index_put_((index[0], index[1]), weight.double(), accumulate=True)  # [N, N]
    _, vectors = torch.linalg.eigh(lap)  # [N, N], columns by ascending eigenvalue
    pe = torch.zeros(n, k, dtype=torch.float32)
    pe[:, : min(k, n - 1)] = vectors[:, 1: k + 1].float()
    return pe


class GraphDataModule(SplitDataModule):
    """Loaders, splits and metadata of one graph benchmark (see the module docstring for datasets and files).

    The metadata the model needs is set in ``__init__`` (the dataset is read there), for the CLI's links:
    ``in_channels``, ``out_channels``, ``edge_dim`` (None without edge features), ``task`` ("graph" | "node"),
    ``metric`` ("accuracy" | "auroc" | "ap"), ``pe_type`` and ``pe_dim`` (0 without a positional encoding).

    Args:
        dataset: a key of ``DATASETS``.
        data_dir: folder with the raw files (default ``$SSMKIT_GRAPH_DATA`` or ``../shared/data/graphs``).
        cache_dir: where torch_geometric keeps links and processed copies (default ``~/.cache/ssmkit/graphs``).
        fold: test fold of the TU cross-validation, in ``[0, num_folds)``.
        num_folds: number of TU folds.
        split_seed: seed of the TU folds and of the synthetic data.
        split: index of the heterophilous split, in ``[0, 10)``; 0 for the single-split datasets.
        batch_size: graphs per batch (graph tasks); node tasks are full-batch.
        use_node_attr: TU: append the continuous node attributes (PROTEINS, ENZYMES) to the one-hot labels.
        use_edge_attr: keep edge features (TU edge labels, LRGB bond features); otherwise ``edge_dim`` is None.
        normalize_features: row-normalize node features (the GCN recipe for Planetoid).
        pe_type: "none", "laplacian" (``laplacian_eigenvector_pe``: eigenvectors) or "random_walk"
            (``random_walk_pe``: return probabilities of 1..pe_dim steps, torch_geometric ``AddRandomWalkPE``).
        pe_dim: width of the positional encoding (positive unless ``pe_type`` is "none").
        num_workers: DataLoader workers.
    """

    def __init__(self, dataset: str = "synthetic_graph", data_dir: str | None = None, cache_dir: str | None = None,
                 fold: int = 0, num_folds: int = 10, split_seed: int = 0, split: int = 0, batch_size: int = 32,
                 use_node_attr: bool = True, use_edge_attr: bool = True, normalize_features: bool = False,
                 pe_type: str = "none", pe_dim: int = 0, num_workers: int = 0):
        super().__init__()
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {sorted(DATASETS)}, found {dataset!r}")
        family, _, task, metric = DATASETS[dataset]
        n_splits = NUM_HETEROPHILOUS_SPLITS if family == "heterophilous" or dataset == "synthetic_node" else 1
        if not 0 <= split < n_splits:
            raise ValueError(f"split: expected an index in [0, {n_splits}) for {dataset!r}, found {split}")
        if num_folds < 2 or not 0 <= fold < num_folds:
            raise ValueError(f"fold: expected 0 <= fold < num_folds with num_folds >= 2, found fold={fold}, "
                             f"num_folds={num_folds}")
        if batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, found {batch_size}")
        if pe_type not in PE_TYPES:
            raise ValueError(f"pe_type must be one of {PE_TYPES}, found {pe_type!r}")
        if (pe_type == "none") != (pe_dim == 0) or pe_dim < 0:
            raise ValueError(f"pe_dim: expected 0 with pe_type 'none' and a positive int otherwise, found pe_dim="
                             f"{pe_dim} with pe_type {pe_type!r}")
        self.save_hyperparameters()
        self.data_dir = Path(data_dir or os.environ.get("SSMKIT_GRAPH_DATA", "../shared/data/graphs"))
        # one cache per data folder, so processed copies of another folder's files are never reused
        key = hashlib.sha1(str(self.data_dir.resolve()).encode()).hexdigest()[:10]
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "ssmkit" / "graphs") / key
        self.task, self.metric, self.pe_type, self.pe_dim = task, metric, pe_type, pe_dim
        check_raw_files(dataset, self.data_dir)
        self.splits = self._load()
        first = self.splits["train"][0]
        self.in_channels = int(first.x.shape[1])
        self.edge_dim = int(first.edge_attr.shape[1]) if first.edge_attr is not None else None
        self.out_channels = self._num_outputs()

    def _num_outputs(self) -> int:
        if self.metric == "ap":
            return int(self.splits["train"][0].y.shape[-1])
        labels = torch.cat([d.y.flatten() for split in self.splits.values() for d in split])
        return int(labels.max()) + 1

    def _prepare(self, data: Data) -> Data:
        """Feature dtype, optional edge features / normalization / positional encodings of one graph."""
        hp = self.hparams
        data.x = data.x.float()
        if not hp.use_edge_attr or data.edge_attr is None:
            data.edge_attr = None
        else:
            data.edge_attr = data.edge_attr.float()
        if hp.normalize_features:
            data.x = data.x / data.x.sum(dim=1, keepdim=True).clamp(min=1)
        if hp.pe_type == "laplacian":
            data.laplacian_eigenvector_pe = laplacian_pe(data, hp.pe_dim)
        elif hp.pe_type == "random_walk":
            data = AddRandomWalkPE(hp.pe_dim, attr_name="random_walk_pe")(data)
        return data

    def _load(self) -> dict[str, list[Data]]:
        """Read the dataset and return its train / val / test lists (one graph each for node tasks)."""
        hp = self.hparams
        family, name = DATASETS[hp.dataset][:2]
        if family == "tu":
            return self._load_tu(name)
        if family == "lrgb":
            from torch_geometric.datasets import LRGBDataset

            _link_raw(raw_files(hp.dataset, self.data_dir), self.cache_dir / "lrgb" / name / "raw")
            return {split: [self._prepare(d) for d in LRGBDataset(str(self.cache_dir / "lrgb"), name, split=split)]
                    for split in ("train", "val", "test")}
        if family == "synthetic" and name == "synthetic_graph":
            graphs = [self._prepare(self._synthetic_labelled_graph(i)) for i in range(64)]
            return {"train": graphs[:40], "val": graphs[40:52], "test": graphs[52:]}
        if family == "planetoid":
            data = read_planetoid(self.data_dir, name)
        elif family == "heterophilous":
            from torch_geometric.datasets import HeterophilousGraphDataset

            _link_raw(raw_files(hp.dataset, self.data_dir), self.cache_dir / "heterophilous" / name / "raw")
            data = HeterophilousGraphDataset(str(self.cache_dir / "heterophilous"), name)[0]
        else:
            data = synthetic_graph(300, 6.0, 8, 3, seed=hp.split_seed)
            order = torch.randperm(300, generator=torch.Generator().manual_seed(hp.split_seed + 1))
            masks = torch.zeros(3, 300, NUM_HETEROPHILOUS_SPLITS, dtype=torch.bool)
            for s in range(NUM_HETEROPHILOUS_SPLITS):
                perm = order.roll(30 * s)
                masks[0, perm[:180], s], masks[1, perm[180:240], s], masks[2, perm[240:], s] = True, True, True
            data.train_mask, data.val_mask, data.test_mask = masks
        for key in ("train_mask", "val_mask", "test_mask"):
            data[key] = data[key][:, hp.split]  # [N]
        data = self._prepare(data)
        return {"train": [data], "val": [data], "test": [data]}

    def _synthetic_labelled_graph(self, index: int) -> Data:
        """Synthetic graph classification: the label is the majority node label of a small random graph."""
        graph = synthetic_graph(12 + index % 9, 3.0, 8, 2, seed=self.hparams.split_seed * 1000 + index)
        graph.y = torch.bincount(graph.y, minlength=2).argmax().view(1)  # [1]
        return graph

    def _load_tu(self, name: str) -> dict[str, list[Data]]:
        from torch_geometric.datasets import TUDataset

        hp = self.hparams
        folder = self.data_dir / "tu" / name
        _link_raw(sorted(folder.glob(f"{name}_*.txt")), self.cache_dir / "tu" / name / "raw")
        dataset = TUDataset(str(self.cache_dir / "tu"), name, use_node_attr=hp.use_node_attr, use_edge_attr=True)
        graphs = [self._prepare(d) for d in dataset]
        folds = stratified_folds(torch.cat([g.y for g in graphs]), hp.num_folds, hp.split_seed)
        val_fold = (hp.fold + 1) % hp.num_folds
        return {
            "train": [g for g, f in zip(graphs, folds.tolist()) if f not in (hp.fold, val_fold)],
            "val": [g for g, f in zip(graphs, folds.tolist()) if f == val_fold],
            "test": [g for g, f in zip(graphs, folds.tolist()) if f == hp.fold],
        }

    def _loader(self, split: str, train: bool) -> DataLoader:
        batch_size = self.hparams.batch_size if self.task == "graph" else 1
        return DataLoader(self.splits[split], batch_size=batch_size, shuffle=train and self.task == "graph",
                          num_workers=self.hparams.num_workers)

