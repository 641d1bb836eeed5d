"""Mamba4Rec against an independent re-implementation of the official forward (chengkai-liu/Mamba4Rec), on
official-layout state_dict keys loaded from a RecBole-style checkpoint; parameter count, init and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ssmkit
from ssmkit.kernels import selective_scan
from ssmkit.recsys.models.mamba4rec import Mamba4Rec


def _layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"], eps=1e-12)


def _official_mamba(x, sd, p, d_state, d_conv):
    """mamba_ssm Mamba.forward (no cache) on the whole padded sequence, scan by the naive reference."""
    length = x.shape[1]
    u, z = (x @ sd[p + "in_proj.weight"].T).chunk(2, dim=-1)  # [B, L, E]
    weight = sd[p + "conv1d.weight"]  # [E, 1, K]
    u = F.conv1d(u.transpose(1, 2), weight, sd[p + "conv1d.bias"], padding=d_conv - 1, groups=weight.shape[0])
    u = F.silu(u[..., :length]).transpose(1, 2)  # [B, L, E]
    rank = sd[p + "dt_proj.weight"].shape[1]
    dt, b, c = torch.split(u @ sd[p + "x_proj.weight"].T, [rank, d_state, d_state], dim=-1)
    delta = dt @ sd[p + "dt_proj.weight"].T  # [B, L, E]
    y = selective_scan(u, delta, -torch.exp(sd[p + "A_log"]), b, c, sd[p + "D"], z=z,
                       delta_bias=sd[p + "dt_proj.bias"], delta_softplus=True, backend="naive")
    return y @ sd[p + "out_proj.weight"].T


def official_forward(sd, item_seq, lengths, n_layers, d_state, d_conv):
    """Mamba4Rec.forward of the official repo in eval mode (dropout = identity), from its state_dict keys."""
    x = _layer_norm(sd["item_embedding.weight"][item_seq], sd, "LayerNorm.")
    for i in range(n_layers):
        p = f"mamba_layers.{i}."
        h = _official_mamba(x, sd, p + "mamba.", d_state, d_conv)
        h = _layer_norm(h if n_layers == 1 else h + x, sd, p + "LayerNorm.")
        t = F.gelu(h @ sd[p + "ffn.w_1.weight"].T + sd[p + "ffn.w_1.bias"])
        t = t @ sd[p + "ffn.w_2.weight"].T + sd[p + "ffn.w_2.bias"]
        x = _layer_norm(t + h, sd, p + "ffn.LayerNorm.")
    return x[torch.arange(len(lengths)), lengths - 1]


@pytest.mark.parametrize("n_layers", [1, 2], ids=["1layer_no_residual", "2layers_residual"])
def test_matches_official_forward_from_recbole_checkpoint(tmp_path, n_layers):
    torch.manual_seed(0)
    kw = dict(hidden_size=16, n_layers=n_layers, d_state=4, d_conv=4, expand=2, max_len=12)
    source = Mamba4Rec(40, **kw)
    with torch.no_grad():  # move every tensor away from its init so that each one matters
        for value in source.state_dict().values():
            value.add_(0.1 * torch.randn_like(value))
    sd = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "Mamba4Rec-ml.pth"
    torch.save({"config": {"model": "Mamba4Rec"}, "epoch": 3, "best_valid_score": 0.1, "state_dict": sd}, path)
    model = ssmkit.create_model("mamba4rec", pretrained=str(path), n_items=40, **kw).eval()
    lengths = torch.tensor([12, 5, 1, 9])
    item_seq = torch.randint(1, 40, (4, 12)).masked_fill(torch.arange(12) >= lengths[:, None], 0)
    expected = official_forward(sd, item_seq, lengths, n_layers, d_state=4, d_conv=4)  # [B, H]
    with torch.no_grad():
        out = model(item_seq, lengths)
        scores = model.full_sort_scores(item_seq, lengths)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(scores, expected @ sd["item_embedding.weight"].T, rtol=1e-4, atol=1e-4)


def test_checkpoint_with_other_n_items_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": Mamba4Rec(30, hidden_size=16, d_state=4).state_dict()}, path)
    with pytest.raises(ValueError, match="n_items=25"):
        ssmkit.create_model("mamba4rec", pretrained=str(path), n_items=25, hidden_size=16, d_state=4)


def test_official_parameter_count_and_init():
    # ML-1M: 3,416 items + PAD with the official config -> 290,944 trainable parameters (issue #11 log)
    model = ssmkit.create_model("mamba4rec", n_items=3417, hidden_size=64, n_layers=1, d_state=32, d_conv=4,
                                expand=2, max_len=200, dropout=0.2)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 290_944
    mamba = model.mamba_layers[0].mamba
    assert torch.count_nonzero(mamba.dt_proj.bias) == 0  # zeroed by the official _init_weights
    assert abs(float(mamba.in_proj.weight.std()) - 0.02) < 2e-3
    assert abs(float(model.item_embedding.weight.std()) - 0.02) < 2e-3
    assert torch.count_nonzero(model.item_embedding.weight[0]) > 0  # PAD row re-drawn too, as in the official init
    torch.testing.assert_close(mamba.A_log[0], torch.log(torch.arange(1, 33, dtype=torch.float32)))


def test_bad_input_names_the_argument():
    model = Mamba4Rec(30, hidden_size=16, d_state=4)
    seq = torch.tensor([[1, 2, 0]])
    with pytest.raises(TypeError, match="item_seq"):
        model(seq.float(), torch.tensor([2]))
    with pytest.raises(ValueError, match="item ids must lie in"):
        model(torch.tensor([[1, 99, 0]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        model(seq, torch.tensor([0]))
    with pytest.raises(ValueError, match="n_items"):
        Mamba4Rec(1)
