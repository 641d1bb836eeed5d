"""DARE / TWIN against an independent re-implementation of thuml/DARE's forward, with official state_dict keys."""

from __future__ import annotations

import math

import pytest
import torch

from ssmkit.core.checkpoint import load_into
from ssmkit.core.registry import create_model
from ssmkit.recsys.models.dare import DARE, convert_official

ROLES = ("attention_of_target", "representation_of_target", "attention_of_behavior", "representation_of_behavior")
TABLES = ("item", "category", "time")
N_ITEMS, N_CATS, N_POS = 30, 5, 2000


def official_state_dict(dims: dict[str, tuple[int, int, int]], decoupled: bool, g: torch.Generator) -> dict:
    """Random weights in the official ``DIN`` key layout (aliased roles repeated, as its state_dict has them)."""
    sd = {}
    rows = {"item": N_ITEMS, "category": N_CATS, "time": N_POS}
    for role in ROLES:
        kind = "attention" if role.startswith("attention") and decoupled else "representation"
        source = "attention_of_target" if kind == "attention" or not decoupled else "representation_of_target"
        for table, dim in zip(TABLES, dims[kind]):
            key = f"{table}_id_embedding_layer_for_{role}.weight"
            alias = f"{table}_id_embedding_layer_for_{source}.weight"
            sd[key] = sd[alias] if alias in sd else torch.randn(rows[table], dim, generator=g)
    width = 3 * sum(dims["representation"])
    for name, hidden in (("main_mlp", (200, 80)), ("auxiliary_mlp", (200,))):
        sd[f"{name}.0.weight"] = 1 + 0.1 * torch.randn(width, generator=g)
        sd[f"{name}.0.bias"] = 0.1 * torch.randn(width, generator=g)
        sd[f"{name}.0.running_mean"] = 0.1 * torch.randn(width, generator=g)
        sd[f"{name}.0.running_var"] = 1 + torch.rand(width, generator=g)
        sd[f"{name}.0.num_batches_tracked"] = torch.tensor(7)
        fan_in, index = width, 1
        for out in (*hidden, 2):
            sd[f"{name}.{index}.weight"] = torch.randn(out, fan_in, generator=g) / math.sqrt(fan_in)
            sd[f"{name}.{index}.bias"] = 0.1 * torch.randn(out, generator=g)
            if out != 2:
                sd[f"{name}.{index + 1}.weight"] = torch.tensor([0.1 + 0.2 * torch.rand(1, generator=g).item()])
            fan_in, index = out, index + 2
    return sd


def official_mlp(sd: dict, name: str, x: torch.Tensor, batch_stats: bool) -> torch.Tensor:
    """BatchNorm1d (running or batch statistics) -> (Linear -> PReLU)* -> Linear, from the weights alone."""
    if batch_stats:
        mean, var = x.mean(0), x.var(0, unbiased=False)
    else:
        mean, var = sd[f"{name}.0.running_mean"], sd[f"{name}.0.running_var"]
    x = (x - mean) / torch.sqrt(var + 1e-5) * sd[f"{name}.0.weight"] + sd[f"{name}.0.bias"]
    index = 1
    while f"{name}.{index}.weight" in sd:
        x = x @ sd[f"{name}.{index}.weight"].T + sd[f"{name}.{index}.bias"]
        slope = sd.get(f"{name}.{index + 1}.weight")
        if slope is not None:
            x = torch.where(x >= 0, x, slope * x)
        index += 2
    return x


def official_forward(sd: dict, iid, cid, hist_iid, hist_cid, top_k: int, time_dim: int, batch_stats: bool):
    """din_pytorch.py + attention_pytorch.py semantics (soft search, cross feature, aux loss, no long-seq average)."""
    length = hist_iid.shape[1]
    hist_tid = torch.tensor([length - x for x in range(length)]).expand_as(hist_iid)
    tid = torch.zeros_like(iid)

    def embed(role, items, cats, times):
        return torch.cat([sd[f"item_id_embedding_layer_for_{role}.weight"][items],
                          sd[f"category_id_embedding_layer_for_{role}.weight"][cats],
                          sd[f"time_id_embedding_layer_for_{role}.weight"][times]], dim=-1)

    q = embed("attention_of_target", iid, cid, tid)
    k = embed("attention_of_behavior", hist_iid, hist_cid, hist_tid)
    v = embed("representation_of_behavior", hist_iid, hist_cid, hist_tid)
    target = embed("representation_of_target", iid, cid, tid)
    mask = hist_iid > 0

    def attend(keep):
        qs = q.unsqueeze(1)
        sem = qs[:, :, :-time_dim] @ k[:, :, :-time_dim].transpose(1, 2) / math.sqrt(q.shape[1] - time_dim)
        tim = qs[:, :, -time_dim:] @ k[:, :, -time_dim:].transpose(1, 2) / math.sqrt(time_dim)
        scores = (sem + tim).squeeze(1)
        return torch.where(keep, scores, torch.ones_like(scores) * (-(2**32) + 1))

    scores = attend(mask)
    pooled = (torch.softmax(scores, dim=1).unsqueeze(1) @ v).squeeze(1)
    aux = official_mlp(sd, "auxiliary_mlp", torch.cat([target, pooled, target * pooled], 1), batch_stats)
    top = torch.topk(scores, top_k, dim=1).indices
    keep = torch.zeros_like(mask).scatter(1, top, True)
    soft = (torch.softmax(attend(keep), dim=1).unsqueeze(1) @ v).squeeze(1)
    main = official_mlp(sd, "main_mlp", torch.cat([target, soft, target * soft], 1), batch_stats)
    return main, aux


def batch(g: torch.Generator, size: int = 6, length: int = 24):
    hist_iid = torch.randint(1, N_ITEMS, (size, length), generator=g)
    hist_iid[1, :10] = 0  # left padding, 14 valid >= top_k
    hist_iid[2, :4] = 0
    hist_cid = torch.randint(0, N_CATS, (size, length), generator=g).masked_fill(hist_iid == 0, 0)
    return (torch.randint(1, N_ITEMS, (size,), generator=g), torch.randint(0, N_CATS, (size,), generator=g),
            hist_iid, hist_cid)


@pytest.mark.parametrize("name, attention", [("dare", (16, 16, 16)), ("dare", (8, 8, 4)), ("twin", (16, 16, 16))])
@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_matches_official_forward(name: str, attention: tuple, train_mode: bool) -> None:
    g = torch.Generator().manual_seed(3)
    decoupled = name == "dare"
    sd = official_state_dict({"attention": attention, "representation": (16, 16, 16)}, decoupled, g)
    model = create_model(name, num_items=N_ITEMS, num_categories=N_CATS, top_k=8,
                         **(dict(zip(("attention_item_dim", "attention_category_dim", "attention_time_dim"),
                                     attention)) if decoupled else {}))
    report = load_into(model, convert_official(sd, model), strict=True)
    assert report.ok
    model.train(train_mode)
    inputs = batch(g)
    with torch.no_grad():
        ours = model(*inputs, return_aux=True)  # [B, 2]
    main, aux = official_forward(sd, *inputs, top_k=8, time_dim=attention[2], batch_stats=train_mode)
    torch.testing.assert_close(ours[:, 0], main[:, 0] - main[:, 1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours[:, 1], aux[:, 0] - aux[:, 1], rtol=1e-4, atol=1e-4)
    # sigmoid of our logit is the official softmax probability of class 0 (click)
    torch.testing.assert_close(torch.sigmoid(ours[:, 0]), torch.softmax(main, 1)[:, 0], rtol=1e-4, atol=1e-5)


def test_official_checkpoint_loads_through_create_model(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    sd = official_state_dict({"attention": (8, 8, 8), "representation": (16, 16, 16)}, True, g)
    torch.save(sd, tmp_path / "best_DIN.pth")
    model = create_model("dare", pretrained=str(tmp_path / "best_DIN.pth"), num_items=N_ITEMS,
                         num_categories=N_CATS, attention_item_dim=8, attention_category_dim=8, attention_time_dim=8)
    torch.testing.assert_close(model.attention_embedding.position.weight,
                               sd["time_id_embedding_layer_for_attention_of_target.weight"])
    torch.testing.assert_close(model.embedding.item.weight,
                               sd["item_id_embedding_layer_for_representation_of_target.weight"])


def test_twin_has_one_table_set_and_dare_two() -> None:
    dare, twin = (create_model(n, num_items=N_ITEMS, num_categories=N_CATS) for n in ("dare", "twin"))
    tables = sum(p.numel() for p in dare.embedding.parameters())
    extra = sum(p.numel() for p in dare.parameters()) - sum(p.numel() for p in twin.parameters())
    assert not hasattr(twin, "attention_embedding") and extra == tables
    half = create_model("dare", num_items=N_ITEMS, num_categories=N_CATS, attention_item_dim=8,
                        attention_category_dim=8, attention_time_dim=8)
    assert half.attention_embedding.dim == 24 and half.embedding.dim == 48
    with pytest.raises(ValueError, match="TWIN"):
        create_model("twin", num_items=N_ITEMS, num_categories=N_CATS, attention_item_dim=8)


def test_main_head_reads_only_the_top_k_representations() -> None:
    torch.manual_seed(0)
    model = create_model("dare", num_items=N_ITEMS, num_categories=N_CATS, top_k=3).eval()
    hist_iid = torch.arange(1, 11)[None]  # [1, 10] distinct items: each position has its own representation row
    hist_cid = torch.randint(0, N_CATS, (1, 10), generator=torch.Generator().manual_seed(1))  # [1, 10]
    item, category = torch.tensor([20]), torch.tensor([2])
    _, _, top = model.search(item, category, hist_iid, hist_cid)
    dropped = [i for i in range(10) if i not in top[0].tolist()][0]
    with torch.no_grad():
        before = model(item, category, hist_iid, hist_cid, return_aux=True)
        model.embedding.item.weight[hist_iid[0, dropped]] += 1.0  # representation only: the search is unchanged
        after = model(item, category, hist_iid, hist_cid, return_aux=True)
    assert torch.equal(before[:, 0], after[:, 0])  # main head: top-k only
    assert not torch.equal(before[:, 1], after[:, 1])  # auxiliary head: softmax over all behaviours


def test_official_init_and_l2_penalty() -> None:
    model = DARE(N_ITEMS, N_CATS)
    prelu = model.main_mlp[2].weight
    assert prelu.abs().max() < 0.06  # N(0, 0.01), not PReLU's 0.1 (train_pytorch.py re-initialises it)
    expected = sum(p.pow(2).sum() for n, p in model.named_parameters()
                   if "bias" not in n and "embedding" not in n)
    torch.testing.assert_close(model.l2_penalty(), expected)


def test_bad_inputs_raise_clear_errors() -> None:
    model = create_model("dare", num_items=N_ITEMS, num_categories=N_CATS)
    item, category, hist_iid, hist_cid = batch(torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="history_item must be an integer"):
        model(item, category, hist_iid.float(), hist_cid)
    with pytest.raises(ValueError, match=r"item ids must lie in \[1, 30\)"):
        model(item.clone().fill_(N_ITEMS), category, hist_iid, hist_cid)
    with pytest.raises(ValueError, match="history_category ids"):
        model(item, category, hist_iid, hist_cid - 1)
    empty = hist_iid.clone()
    empty[3] = 0
    with pytest.raises(ValueError, match=r"rows \[3\] have an empty history"):
        model(item, category, empty, hist_cid)
    with pytest.raises(ValueError, match="must both be"):
        model(item, category, hist_iid[:, None], hist_cid)
    with pytest.raises(ValueError, match="use_aux_loss"):
        create_model("twin", num_items=N_ITEMS, num_categories=N_CATS, use_aux_loss=False)(
            item, category, hist_iid, hist_cid, return_aux=True)
