"""S-Mamba loads an official S-D-Mamba state_dict and gives the official model's output (independent reference)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import ssmkit
from tests.core.test_mamba import official_mamba_shapes, random_state_dict, ref_mamba
from tests.kernels.scan_testing import assert_close

CFG = dict(seq_len=16, pred_len=8, n_vars=3, d_model=16, d_ff=24, n_layers=2, d_state=2)


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Keys and shapes of S-D-Mamba's ``Model`` (+ an unused module, as some official revisions build)."""
    E, L, S, F_ = CFG["d_model"], CFG["seq_len"], CFG["pred_len"], CFG["d_ff"]
    mamba = official_mamba_shapes(E, CFG["d_state"], 2, 1, math.ceil(E / 16), bias=False)
    shapes = {"enc_embedding.value_embedding.weight": (E, L), "enc_embedding.value_embedding.bias": (E,)}
    for i in range(CFG["n_layers"]):
        p = f"encoder.attn_layers.{i}."
        shapes.update({p + "attention." + k: v for k, v in mamba.items()})
        shapes.update({p + "attention_r." + k: v for k, v in mamba.items()})
        shapes.update({p + "conv1.weight": (F_, E, 1), p + "conv1.bias": (F_,), p + "conv2.weight": (E, F_, 1),
                       p + "conv2.bias": (E,), p + "norm1.weight": (E,), p + "norm1.bias": (E,),
                       p + "norm2.weight": (E,), p + "norm2.bias": (E,), p + "man.in_proj.weight": (22, 11)})
    shapes.update({"encoder.norm.weight": (E,), "encoder.norm.bias": (E,), "projector.weight": (S, E),
                   "projector.bias": (S,)})
    sd = random_state_dict({k.replace(".attention.", ".").replace(".attention_r.", "."): v for k, v in shapes.items()
                            if ".attention" not in k}, seed)
    for i in range(CFG["n_layers"]):
        for branch in ("attention", "attention_r"):
            sub = random_state_dict(mamba, seed + 10 * i + (branch == "attention_r"))
            sd.update({f"encoder.attn_layers.{i}.{branch}.{k}": v for k, v in sub.items()})
    return sd


def ref_s_mamba(sd, x, x_mark):
    """The official forward (S_Mamba.Model.forecast + Mamba_EncDec.EncoderLayer) written from the state_dict."""
    def sub(prefix):
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    N, E = x.shape[2], CFG["d_model"]
    means = x.mean(1, keepdim=True)
    x = x - means
    stdev = torch.sqrt(torch.var(x, dim=1, keepdim=True, unbiased=False) + 1e-5)
    x = x / stdev
    tokens = torch.cat([x.permute(0, 2, 1), x_mark.permute(0, 2, 1)], dim=1)  # B, N+4, L
    h = tokens @ sd["enc_embedding.value_embedding.weight"].T + sd["enc_embedding.value_embedding.bias"]
    for i in range(CFG["n_layers"]):
        p = f"encoder.attn_layers.{i}."
        new = ref_mamba(sub(p + "attention."), h) + ref_mamba(sub(p + "attention_r."), h.flip(1)).flip(1)
        h = F.layer_norm(h + new, (E,), sd[p + "norm1.weight"], sd[p + "norm1.bias"])
        y = F.gelu(F.conv1d(h.transpose(-1, 1), sd[p + "conv1.weight"], sd[p + "conv1.bias"]))
        y = F.conv1d(y, sd[p + "conv2.weight"], sd[p + "conv2.bias"]).transpose(-1, 1)
        h = F.layer_norm(h + y, (E,), sd[p + "norm2.weight"], sd[p + "norm2.bias"])
    h = F.layer_norm(h, (E,), sd["encoder.norm.weight"], sd["encoder.norm.bias"])
    out = (h @ sd["projector.weight"].T + sd["projector.bias"]).permute(0, 2, 1)[:, :, :N]
    return out * stdev + means


def test_official_checkpoint_loads_and_matches_reference(tmp_path):
    sd = official_state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save(sd, path)
    model = ssmkit.create_model("s_mamba", pretrained=str(path), backend="naive", **CFG).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, CFG["seq_len"], CFG["n_vars"], generator=g) * 3 + 1
    x_mark = torch.rand(2, CFG["seq_len"], 4, generator=g) - 0.5
    with torch.no_grad():
        out = model(x, x_mark)
        expected = ref_s_mamba(sd, x, x_mark)
    assert out.shape == (2, CFG["pred_len"], CFG["n_vars"])
    assert_close("s_mamba", expected, out, 1e-5)


def test_checkpoint_of_another_size_names_the_keys(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(official_state_dict(), path)
    with pytest.raises(ValueError, match="head.weight"):
        ssmkit.create_model("s_mamba", pretrained=str(path), backend="naive", **{**CFG, "pred_len": 12})


def test_without_time_features_and_bad_input():
    model = ssmkit.create_model("test_s_mamba", backend="naive")
    x = torch.randn(2, 16, 3)
    assert model(x, None).shape == (2, 8, 3)
    with pytest.raises(ValueError, match=r"x must have shape \[B, seq_len=16, n_vars=3\], found \[2, 16, 4\]"):
        model(torch.randn(2, 16, 4))
    with pytest.raises(ValueError, match="x_mark must have shape"):
        model(x, torch.randn(2, 15, 4))
