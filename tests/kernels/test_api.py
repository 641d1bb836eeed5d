"""Kernel API: backend resolution, bad input (clear errors before any work), import without triton."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from ssmkit.kernels import linear_scan, resolve_backend, selective_scan, selective_state_update
from tests.kernels.scan_testing import make_selective_inputs


def _inputs(**kw):
    x, _ = make_selective_inputs(batch=2, seqlen=5, dim=4, dstate=3, **kw)
    return x


def test_auto_resolves_by_device(monkeypatch):
    monkeypatch.delenv("SSMKIT_BACKEND", raising=False)
    assert resolve_backend("op", "auto", torch.device("cpu")) == "cpu"
    assert resolve_backend("op", "auto", torch.device("cuda")) == "triton"
    assert resolve_backend("op", "naive", torch.device("cpu")) == "naive"


def test_env_var_chooses_backend(monkeypatch):
    monkeypatch.setenv("SSMKIT_BACKEND", "torch")
    assert resolve_backend("op", "auto", torch.device("cpu")) == "torch"
    assert resolve_backend("op", "naive", torch.device("cpu")) == "naive"  # an explicit argument wins
    monkeypatch.setenv("SSMKIT_BACKEND", "fast")
    with pytest.raises(ValueError, match="SSMKIT_BACKEND.*'fast'"):
        resolve_backend("op", "auto", torch.device("cpu"))


def test_backend_choice_is_logged_once(caplog, monkeypatch):
    import ssmkit.kernels._backend as backend_module

    monkeypatch.setattr(backend_module, "_logged", set())
    with caplog.at_level("INFO", logger="ssmkit.kernels"):
        resolve_backend("my_op", "naive", torch.device("cpu"))
        resolve_backend("my_op", "naive", torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if "my_op" in r.getMessage()]
    assert len(lines) == 1 and "'naive'" in lines[0]


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="backend= must be one of"):
        selective_scan(**_inputs(), backend="cuda")


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="triton.*CUDA"):
        selective_scan(**_inputs(), backend="triton")
    with pytest.raises(ValueError, match="triton.*CUDA"):
        linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2), backend="triton")


@pytest.mark.parametrize("name,bad,pattern", [
    ("delta", torch.rand(2, 6, 4), r"delta must have shape \[2, 5, 4\], found \[2, 6, 4\]"),
    ("A", torch.rand(5, 3), r"A must have shape \[4, \*\], found \[5, 3\]"),
    ("B", torch.rand(2, 5, 4), r"B must have shape \[2, 5, 3\], found \[2, 5, 4\]"),
    ("C", torch.rand(2, 5, 1, 3), r"C must have shape \[2, 5, 3\], found \[2, 5, 1, 3\]"),
    ("D", torch.rand(3), r"D must have shape \[4\], found \[3\]"),
    ("z", torch.rand(2, 5), r"z must have shape \[2, 5, 4\], found \[2, 5\]"),
    ("delta_bias", torch.rand(4, 1), r"delta_bias must have shape \[4\], found \[4, 1\]"),
    ("initial_state", torch.rand(2, 4), r"initial_state must have shape \[2, 4, 3\], found \[2, 4\]"),
])
def test_shape_errors_name_argument_expected_and_found(name, bad, pattern):
    x = _inputs()
    x[name] = bad
    with pytest.raises(ValueError, match=pattern):
        selective_scan(**x, backend="naive")


def test_groups_must_divide_channels():
    x = _inputs()
    x["B"] = torch.rand(2, 5, 3, 3)
    x["C"] = torch.rand(2, 5, 3, 3)
    with pytest.raises(ValueError, match="G of B/C must divide D=4, found G=3"):
        selective_scan(**x, backend="naive")


def test_non_floating_dtype_raises():
    x = _inputs()
    x["u"] = torch.ones(2, 5, 4, dtype=torch.int64)
    with pytest.raises(TypeError, match="u must have a floating dtype.*int64"):
        selective_scan(**x, backend="naive")
    with pytest.raises(TypeError, match="b must have a floating dtype"):
        linear_scan(torch.rand(1, 3, 2), torch.ones(1, 3, 2, dtype=torch.int32))


def test_device_mismatch_raises():
    x = _inputs()
    x["A"] = x["A"].to("meta")
    with pytest.raises(ValueError, match="A must be on device cpu.*found meta"):
        selective_scan(**x, backend="naive")


@pytest.mark.parametrize("lengths,pattern", [
    (torch.tensor([0, 5]), r"lengths must lie in \[1, 5\].*\[0, 5\]"),
    (torch.tensor([3, 6]), r"lengths must lie in \[1, 5\].*\[3, 6\]"),
    (torch.tensor([3]), r"lengths must have shape \[2\], found \[1\]"),
    (torch.tensor([3.0, 2.0]), r"lengths must have an integer dtype, found torch.float32"),
])
def test_lengths_errors(lengths, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        selective_scan(**_inputs(), lengths=lengths, backend="naive")
    with pytest.raises((ValueError, TypeError), match=pattern):
        linear_scan(torch.rand(2, 5, 3), torch.rand(2, 5, 3), lengths=lengths, backend="naive")


def test_linear_scan_shape_errors():
    with pytest.raises(ValueError, match=r"b must have shape \[1, 3, 2\], found \[1, 3, 4\]"):
        linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 4))
    with pytest.raises(ValueError, match=r"initial_state must have shape \[1, 2\], found \[2\]"):
        linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2), initial_state=torch.rand(2))


def test_state_update_errors():
    state = torch.zeros(2, 4, 3)
    ok = dict(x=torch.rand(2, 4), dt=torch.rand(2, 4), A=-torch.rand(4, 3), B=torch.rand(2, 3), C=torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"dt must have shape \[2, 4\], found \[2, 5\]"):
        selective_state_update(state, **{**ok, "dt": torch.rand(2, 5)})
    with pytest.raises(ValueError, match="must divide D=4, found G=3"):
        selective_state_update(state, **{**ok, "B": torch.rand(2, 3, 3), "C": torch.rand(2, 3, 3)})
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        selective_state_update(state, **{**ok, "x": torch.ones(2, 4, dtype=torch.long)})


def test_import_without_triton():
    code = (
        "import sys\n"
        "sys.modules['triton'] = None  # as if triton were not installed: import fails, find_spec is None\n"
        "import torch, ssmkit, ssmkit.kernels\n"
        "from ssmkit.kernels import selective_scan\n"
        "u = torch.randn(1, 4, 2); A = -torch.rand(2, 3); B = torch.randn(1, 4, 3)\n"
        "y = selective_scan(u, torch.rand(1, 4, 2), A, B, B, backend='naive')\n"
        "assert sys.modules['triton'] is None\n"
        "print('ok', tuple(y.shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok (1, 4, 2)" in out.stdout


def test_loading_the_torch_backend_does_not_shadow_torch():
    """Importing a backend module must leave the op packages' own names intact (a second call still works)."""
    import importlib

    selective_package = importlib.import_module("ssmkit.kernels.selective_scan")
    linear_package = importlib.import_module("ssmkit.kernels.linear_scan")

    for _ in range(2):
        selective_scan(**_inputs(), backend="torch")
        linear_scan(torch.rand(1, 3, 2), torch.rand(1, 3, 2), backend="torch")
    assert selective_package.torch is torch and linear_package.torch is torch
