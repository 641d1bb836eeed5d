"""Checkpoint reading (raw, nested, Lightning, safetensors, legacy), key reports, converters and safetensors export."""

from __future__ import annotations

import argparse
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ssmkit.core import checkpoint as ckpt
from ssmkit.core.checkpoint import (
    export_safetensors,
    get_converter,
    load_checkpoint,
    load_into,
    read_checkpoint,
    register_converter,
)


class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(width, 3)
        self.norm = nn.LayerNorm(3)


def net_state(seed: int = 0, width: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in Net(width).state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def vim_style(path, model, ema):
    """The official Vim layout: model, EMA, optimizer state, epoch and an argparse.Namespace of training args."""
    torch.save({"model": model, "model_ema": ema, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
                "epoch": 299, "args": argparse.Namespace(model="vim_tiny", drop_path=0.0)}, path)


def test_raw_state_dict(tmp_path):
    sd = net_state()
    torch.save(sd, tmp_path / "raw.pth")
    assert_same(load_checkpoint(tmp_path / "raw.pth"), sd)
    torch.save(sd, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    assert_same(load_checkpoint(str(tmp_path / "legacy.pt")), sd)


def test_nested_needs_explicit_key_and_namespace_is_allowed(tmp_path):
    model, ema = net_state(0), net_state(1)
    path = tmp_path / "vim_t_midclstok.pth"
    vim_style(path, model, ema)
    with pytest.raises(pickle.UnpicklingError):  # the Namespace really is inside: plain weights_only refuses it
        torch.load(path, weights_only=True)
    assert isinstance(read_checkpoint(path)["args"], argparse.Namespace)
    with pytest.raises(ValueError, match=r"nested checkpoint.*\['model', 'model_ema'\]"):
        load_checkpoint(path)
    assert_same(load_checkpoint(path, key="model"), model)
    assert_same(load_checkpoint(path, key="model_ema"), ema)
    with pytest.raises(ValueError, match=r"'state_dict' not found.*'args'"):
        load_checkpoint(path, key="state_dict")
    with pytest.raises(ValueError, match=r"\['epoch'\] is not a state_dict.*int"):
        load_checkpoint(path, key="epoch")
    with pytest.raises(ValueError, match=r"\['optimizer'\] is not a state_dict"):
        load_checkpoint(path, key="optimizer")
    torch.save({"module": model}, tmp_path / "ddp.pth")
    assert_same(load_checkpoint(tmp_path / "ddp.pth", key="module"), model)


def test_lightning_checkpoint_and_prefix(tmp_path):
    model = net_state()
    state = {**{f"model.{k}": v for k, v in model.items()}, "criterion.weight": torch.ones(3)}
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.5.0", "state_dict": state,
                "hyper_parameters": {"lr": 1e-3}, "loops": {}, "optimizer_states": [], "lr_schedulers": []}, path)
    assert_same(load_checkpoint(path), state)
    assert_same(load_checkpoint(path, prefix="model."), model)
    with pytest.raises(ValueError, match=r"no key starts with prefix 'net\.'"):
        load_checkpoint(path, prefix="net.")


def test_safetensors_recognized_by_content(tmp_path):
    sd = net_state()
    save_file(sd, tmp_path / "w.safetensors")
    assert_same(load_checkpoint(tmp_path / "w.safetensors"), sd)
    (tmp_path / "w.bin").write_bytes((tmp_path / "w.safetensors").read_bytes())
    assert_same(load_checkpoint(tmp_path / "w.bin"), sd)


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="expected a file"):
        load_checkpoint(tmp_path)
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pth is neither a torch file"):
        load_checkpoint(tmp_path / "notes.pth")
    torch.save({"layer": nn.Linear(2, 2)}, tmp_path / "pickled_module.pth")
    with pytest.raises(ValueError, match="weights_only"):
        load_checkpoint(tmp_path / "pickled_module.pth")
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="must hold a dict.*Tensor"):
        load_checkpoint(tmp_path / "tensor.pth")
    data = (tmp_path / "w.safetensors")
    save_file(net_state(), data)
    (tmp_path / "cut.safetensors").write_bytes(data.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"cut\.safetensors"):
        load_checkpoint(tmp_path / "cut.safetensors")


def test_load_into_strict_report():
    model = Net()
    good = net_state(3)
    report = load_into(model, good)
    assert report.ok and report.loaded == len(good)
    assert_same(model.state_dict(), good)

    bad = dict(net_state(4, width=5))
    bad["extra.bias"] = bad.pop("norm.bias")
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_into(model, bad)
    message = str(info.value)
    assert "missing keys (1): ['norm.bias']" in message
    assert "unexpected keys (1): ['extra.bias']" in message
    assert "'proj.weight': checkpoint [3, 5], model [3, 4]" in message
    assert_same(model.state_dict(), before)  # nothing loaded on a strict failure

    report = load_into(model, bad, strict=False)
    assert report.missing == ["norm.bias"] and report.unexpected == ["extra.bias"]
    assert report.mismatched == [("proj.weight", (3, 5), (3, 4))]
    assert report.loaded == 2
    torch.testing.assert_close(model.norm.weight, bad["norm.weight"])
    torch.testing.assert_close(model.proj.weight, before["proj.weight"])
    with pytest.raises(TypeError, match="non-tensor entries"):
        load_into(model, {"proj.weight": [1.0]})


def test_converter_registry(monkeypatch):
    monkeypatch.setattr(ckpt, "_CONVERTERS", {})

    @register_converter("tinyfam")
    def convert(checkpoint, model):
        return {k.removeprefix("backbone."): v for k, v in checkpoint["state_dict"].items()}

    assert get_converter("tiny_model_v1", "tinyfam") is convert
    assert get_converter("other") is None
    with pytest.raises(ValueError, match="non-empty str"):
        register_converter("")


def test_export_safetensors(tmp_path):
    weight = torch.randn(6, 4)
    shared = {"embed.weight": weight, "head.weight": weight, "proj.weight": torch.randn(4, 6).t(),
              "row.bias": torch.randn(10)[2:6]}
    vim_style(tmp_path / "ckpt.pth", shared, net_state())
    out = export_safetensors(tmp_path / "ckpt.pth", tmp_path / "sub" / "model.safetensors", key="model")
    assert out == tmp_path / "sub" / "model.safetensors"
    assert_same(load_file(out), shared)
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.safetensors"]
    out = export_safetensors(tmp_path / "ckpt.pth", out, key="model_ema")  # overwrite in place
    assert_same(load_file(out), net_state())
    with pytest.raises(ValueError, match="nested checkpoint"):
        export_safetensors(tmp_path / "ckpt.pth", tmp_path / "other.safetensors")
    assert not (tmp_path / "other.safetensors").exists()


def test_export_is_atomic(tmp_path, monkeypatch):
    torch.save(net_state(), tmp_path / "raw.pth")
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"previous content")

    def failing_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_safetensors(tmp_path / "raw.pth", out)
    assert out.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "raw.pth"]
