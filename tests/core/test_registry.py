"""Model registry: registration, discovery, overrides, unknown names, local pretrained weights, cheap package import."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest
import torch
from torch import nn

import ssmkit
from ssmkit.core import checkpoint, registry
from ssmkit.core.registry import create_model, list_models, model_info, register_model


@pytest.fixture
def isolated(monkeypatch):
    """A private copy of the registry and of the converters, so test models never leak into other tests."""
    registry._discover()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(checkpoint, "_CONVERTERS", {})


def tiny_linear(width: int = 4, bias: bool = True, **kwargs) -> nn.Module:
    """A linear layer used to test the registry.

    More text that is not part of the summary.
    """
    if kwargs:
        raise TypeError(f"unexpected {sorted(kwargs)}")
    return nn.Linear(width, 2, bias=bias)


def test_register_and_create(isolated):
    register_model(domain="testing")(tiny_linear)
    assert "tiny_linear" in list_models()
    assert list_models(domain="testing") == ["tiny_linear"]
    info = model_info("tiny_linear")
    assert info["domain"] == "testing" and info["module"] == __name__ and info["family"] == "test_registry"
    assert info["summary"] == "A linear layer used to test the registry."
    assert info["example_input"] is None
    assert create_model("tiny_linear").in_features == 4
    assert create_model("tiny_linear", width=None, bias=None).in_features == 4  # None overrides are dropped
    model = create_model("tiny_linear", width=6, bias=False)
    assert model.in_features == 6 and model.bias is None
    assert ssmkit.create_model is create_model and ssmkit.list_models is list_models


def test_register_without_parentheses_and_duplicates(isolated):
    def bare(**kwargs) -> nn.Module:
        return nn.Identity()

    assert register_model(bare, domain="testing") is bare
    assert list_models(domain="testing", pattern="ba*") == ["bare"]
    register_model(bare, domain="testing")  # the same module registering again (a reload) is fine
    clash = type(bare)(bare.__code__, {"nn": nn}, "bare")
    clash.__module__ = "somewhere.else"
    with pytest.raises(ValueError, match="'bare' is already registered by " + __name__):
        register_model(clash, domain="testing")
    with pytest.raises(ValueError, match="domain"):
        register_model(bare, domain="")
    with pytest.raises(TypeError, match="example_input"):
        register_model(bare, domain="testing", example_input=3)


def test_unknown_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'test_mamba_backbon'.*'test_mamba_backbone'"):
        create_model("test_mamba_backbon")
    with pytest.raises(ValueError, match=r"unknown model 'zzzz'; see ssmkit.list_models"):
        model_info("zzzz")


def test_core_backbones_are_discovered():
    names = list_models(domain="core")
    expected = {"test_mamba_backbone", "test_bimamba_backbone", "test_multiscan_backbone", "test_lightnet_backbone"}
    assert expected <= set(names)
    assert all(model_info(n)["example_input"] is not None for n in expected)
    assert list_models(domain="core", pattern="*scan*") == ["test_multiscan_backbone"]
    assert list_models(domain="no_such_domain") == []


def test_discovery_imports_model_files_skips_absent_and_reports_broken_domains(isolated, monkeypatch, tmp_path):
    models = tmp_path / "fakedomain" / "models"
    models.mkdir(parents=True)
    (tmp_path / "fakedomain" / "__init__.py").write_text('"""A domain whose __init__ imports no model."""\n')
    (models / "tinyfam.py").write_text(
        "from torch import nn\nfrom ssmkit.core.registry import register_model\n\n\n"
        "@register_model(domain='fake')\ndef fake_tiny(**kwargs):\n    return nn.Identity()\n")
    monkeypatch.setattr(ssmkit, "__path__", [*ssmkit.__path__, str(tmp_path)])
    for name in ("ssmkit.fakedomain", "ssmkit.fakedomain.models", "ssmkit.fakedomain.models.tinyfam",
                 "ssmkit.brokendomain"):
        monkeypatch.setitem(sys.modules, name, None)  # restored (removed) after the test
        del sys.modules[name]
    monkeypatch.setattr(registry, "_imported_domains", set())
    monkeypatch.setattr(registry, "DOMAIN_PACKAGES", ("no_such_domain", "fakedomain"))
    assert list_models(domain="fake") == ["fake_tiny"]
    assert model_info("fake_tiny")["family"] == "tinyfam"
    broken = tmp_path / "brokendomain"
    broken.mkdir()
    (broken / "__init__.py").write_text("import a_module_that_does_not_exist\n")
    # lazy: a name is looked up domain by domain, so the broken domain after it is not imported yet
    monkeypatch.setattr(registry, "_imported_domains", set())
    monkeypatch.setattr(registry, "DOMAIN_PACKAGES", ("fakedomain", "brokendomain"))
    assert model_info("fake_tiny")["domain"] == "fake"
    assert "brokendomain" not in registry._imported_domains
    with pytest.raises(ImportError, match="ssmkit.brokendomain exists but failed to import"):
        list_models()
    with pytest.raises(ImportError, match="ssmkit.brokendomain exists but failed to import"):
        create_model("a_name_nobody_registers")
    # a domain whose optional extra is missing (ssmkit.graphs without torch_geometric) is skipped, not an error
    (broken / "__init__.py").write_text(
        "raise ImportError(\"install the extra: pip install 'ssmkit[graphs]'\", name='torch_geometric')\n")
    sys.modules.pop("ssmkit.brokendomain", None)
    monkeypatch.setattr(registry, "_imported_domains", set())
    assert list_models(domain="fake") == ["fake_tiny"]


def test_pretrained_path_true_and_errors(isolated, tmp_path):
    register_model(domain="testing")(tiny_linear)
    source = tiny_linear()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = create_model("tiny_linear", pretrained=tmp_path / "w.pth")
    torch.testing.assert_close(model.weight, source.weight)
    model = create_model("tiny_linear", pretrained=str(tmp_path / "w.pth"), width=None)
    torch.testing.assert_close(model.bias, source.bias)
    assert not torch.equal(create_model("tiny_linear", pretrained=False).weight, source.weight)
    with pytest.raises(ValueError, match="never does; pass the path of a local checkpoint"):
        create_model("tiny_linear", pretrained=True)
    with pytest.raises(TypeError, match="pretrained must be a path"):
        create_model("tiny_linear", pretrained=1)
    with pytest.raises(ValueError, match=r"shape mismatch for 'weight': checkpoint \[2, 4\], model \[2, 5\]"):
        create_model("tiny_linear", pretrained=tmp_path / "w.pth", width=5)
    with pytest.raises(ValueError, match="missing keys.*'bias'|unexpected keys.*'bias'"):
        create_model("tiny_linear", pretrained=tmp_path / "w.pth", bias=False)
    torch.save({"model": source.state_dict(), "epoch": 1}, tmp_path / "nested.pth")
    with pytest.raises(ValueError, match=r"no converter .*'test_registry'.*\['model'\].*ssmkit export"):
        create_model("tiny_linear", pretrained=tmp_path / "nested.pth")


def test_pretrained_uses_model_then_family_converter(isolated, tmp_path):
    register_model(domain="testing")(tiny_linear)
    source = tiny_linear()
    official = {"state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()}, "meta": {"epoch": 3}}
    torch.save(official, tmp_path / "official.pth")
    calls = []

    @checkpoint.register_converter("test_registry")
    def family_converter(obj, model):
        calls.append(("family", type(model).__name__))
        return {k.removeprefix("backbone."): v for k, v in obj["state_dict"].items()}

    model = create_model("tiny_linear", pretrained=tmp_path / "official.pth")
    torch.testing.assert_close(model.weight, source.weight)
    assert calls == [("family", "Linear")]

    @checkpoint.register_converter("tiny_linear")
    def model_converter(obj, model):
        calls.append(("model", type(model).__name__))
        return family_converter(obj, model)

    create_model("tiny_linear", pretrained=tmp_path / "official.pth")
    assert calls[1] == ("model", "Linear")


def test_import_ssmkit_is_cheap_and_needs_no_triton():
    code = ("import sys; sys.modules['triton'] = None; import ssmkit; "
            "assert 'torch' not in sys.modules, 'import ssmkit must not import torch'; "
            "print(ssmkit.__version__); import ssmkit.core.backbones; "
            "print(','.join(n for n, e in ssmkit.core.registry._REGISTRY.items() if e.domain == 'core'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    version, names = result.stdout.split()
    assert version == importlib.metadata.version("ssmkit") == ssmkit.__version__
    assert "test_mamba_backbone" in names.split(",")
