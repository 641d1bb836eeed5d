"""GraphClassifier / NodeClassifier: metrics over whole splits against independent formulas, losses, optimizers."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from ssmkit.graphs.module import GraphClassifier, NodeClassifier

SMALL = {"hidden_channels": 8, "num_layers": 1}


def rank_auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mann-Whitney AUROC: the probability that a positive outscores a negative (ties count one half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None]).float().sum() + 0.5 * (pos[:, None] == neg[None]).float().sum()
    return float(greater / (pos.numel() * neg.numel()))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the positives of the precision at each positive's rank (no ties in the scores)."""
    order = scores.argsort(descending=True)
    hits = labels[order].float()
    precision = hits.cumsum(0) / torch.arange(1, hits.numel() + 1)
    return float((precision * hits).sum() / hits.sum())


def test_node_accuracy_is_scored_on_the_split_mask_only():
    model = NodeClassifier("gcn", SMALL, in_channels=3, out_channels=4, task="node", metric="accuracy")
    data = Data(x=torch.randn(9, 3), edge_index=torch.tensor([[0, 1, 2], [1, 2, 0]]), y=torch.randint(0, 4, (9,)),
                train_mask=torch.arange(9) < 3, val_mask=(torch.arange(9) >= 3) & (torch.arange(9) < 6),
                test_mask=torch.arange(9) >= 6)
    batch = Batch.from_data_list([data])
    model.eval()
    logits, target = model._logits_and_target(batch, "test")
    assert logits.shape == (3, 4) and torch.equal(target, data.y[6:])
    model.metrics["test"].update(logits, target)
    expected = (logits.argmax(1) == target).float().mean()
    torch.testing.assert_close(model.metrics["test"].compute(), expected)


@pytest.mark.parametrize("model_name", ["gcn", "gated_gcn", "gps"])
def test_batch_norm_stats_evaluate_with_the_statistics_of_the_graph_seen(model_name):
    """norm_stats='batch': no running buffers anywhere (GPSConv's own norms too); eval equals train mode without
    dropout on the same full graph (models whose train-mode forward has no other randomness); 'running' keeps the
    buffers."""
    from torch_geometric.nn import BatchNorm

    kwargs = {**SMALL, "dropout": 0.0}
    torch.manual_seed(0)
    model = NodeClassifier(model_name, kwargs, in_channels=3, out_channels=4, task="node", norm_stats="batch")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.running_mean is None and not m.track_running_stats for m in norms)
    assert not any("running_" in key for key in model.state_dict())
    data = Data(x=torch.randn(12, 3) * 5 + 2, edge_index=torch.randint(0, 12, (2, 30)), y=torch.randint(0, 4, (12,)))
    batch = Batch.from_data_list([data])
    model.train()
    torch.manual_seed(1)
    train_out = model(batch)
    model.eval()
    torch.manual_seed(1)
    torch.testing.assert_close(model(batch), train_out)
    running = NodeClassifier(model_name, kwargs, in_channels=3, out_channels=4, task="node")
    assert any(isinstance(m, BatchNorm) for m in running.modules())
    assert any("running_mean" in key for key in running.state_dict())


def test_batch_norm_stats_reach_every_norm_of_gmn():
    model = NodeClassifier("gmn", SMALL, in_channels=3, out_channels=4, task="node", norm_stats="batch")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len(norms) >= 2 and all(m.running_var is None for m in norms)


def test_binary_auroc_uses_class_one_probability_over_all_batches():
    model = GraphClassifier("gcn", SMALL, in_channels=2, out_channels=2, task="graph", metric="auroc")
    torch.manual_seed(0)
    logits, labels = torch.randn(40, 2), torch.randint(0, 2, (40,))
    for part in range(4):  # four batches, one global AUROC
        chunk = slice(10 * part, 10 * part + 10)
        model.metrics["val"].update(logits[chunk].softmax(-1)[:, 1], labels[chunk])
    expected = rank_auroc(logits.softmax(-1)[:, 1], labels)
    assert float(model.metrics["val"].compute()) == pytest.approx(expected, abs=1e-6)


def test_multilabel_ap_is_the_macro_mean_of_per_label_ap():
    model = GraphClassifier("gcn", SMALL, in_channels=2, out_channels=3, task="graph", metric="ap")
    torch.manual_seed(1)
    logits, labels = torch.randn(30, 3), torch.randint(0, 2, (30, 3))
    labels[0] = 1  # every label has a positive
    model.metrics["test"].update(logits, labels)
    expected = sum(average_precision(logits[:, j], labels[:, j]) for j in range(3)) / 3
    assert float(model.metrics["test"].compute()) == pytest.approx(expected, abs=1e-6)
    target = labels.float()
    torch.testing.assert_close(model._loss(logits, labels),
                               -(target * logits.sigmoid().log() + (1 - target) * (1 - logits.sigmoid()).log()).mean())


def test_training_step_on_a_graph_batch_backpropagates():
    model = GraphClassifier("gated_gcn", SMALL, in_channels=3, out_channels=2, task="graph", edge_dim=2)
    graphs = [Data(x=torch.randn(n, 3), edge_index=torch.tensor([[0, 1], [1, 0]]), edge_attr=torch.randn(2, 2),
                   y=torch.tensor([n % 2])) for n in (3, 4, 5)]
    loss = model.training_step(Batch.from_data_list(graphs), 0)
    loss.backward()
    assert loss.ndim == 0 and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_pe_settings_reach_the_model_only_when_used():
    model = GraphClassifier("gcn", SMALL, in_channels=3, out_channels=2, task="graph", pe_type="random_walk",
                            pe_dim=5)
    assert (model.model.pe_dim, model.model.pe_type) == (5, "random_walk")
    assert GraphClassifier("gcn", SMALL, in_channels=3, out_channels=2, task="graph").model.pe_dim == 0


def test_cosine_warmup_and_plateau_schedules():
    model = GraphClassifier("gcn", SMALL, in_channels=3, out_channels=2, task="graph", lr=1e-2, optimizer="adamw",
                            weight_decay=0.01, lr_schedule="cosine", warmup_epochs=2)
    model.trainer = type("T", (), {"max_epochs": 6})()
    config = model.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.01
    lrs = []
    for _ in range(6):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == pytest.approx(1e-5) and lrs[2] == pytest.approx(1e-2) and lrs[5] < lrs[3] < lrs[2]
    plateau = GraphClassifier("gcn", SMALL, in_channels=3, out_channels=2, task="graph", lr_schedule="plateau")
    config = plateau.configure_optimizers()
    assert config["lr_scheduler"]["monitor"] == "val/loss"
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.ReduceLROnPlateau)


@pytest.mark.parametrize("cls, kwargs, match", [
    (NodeClassifier, dict(task="graph"), "NodeClassifier trains 'node'-level tasks, found a 'graph'-level"),
    (GraphClassifier, dict(task="node"), "use NodeClassifier"),
    (GraphClassifier, dict(task="graph", metric="f1"), "metric must be one of"),
    (GraphClassifier, dict(task="graph", metric="auroc", out_channels=3), "'auroc' needs 2 classes, found 3"),
    (GraphClassifier, dict(task="graph", optimizer="sgd"), "optimizer must be"),
    (GraphClassifier, dict(task="graph", lr_schedule="step"), "lr_schedule must be"),
    (NodeClassifier, dict(task="node", norm_stats="ema"), "norm_stats must be 'running' or 'batch', found 'ema'"),
], ids=["node-vs-graph", "graph-vs-node", "metric", "auroc-classes", "optimizer", "schedule", "norm-stats"])
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls("gcn", SMALL, in_channels=3, **{"out_channels": 2, **kwargs})
