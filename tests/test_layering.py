"""Import direction: kernels <- core <- domains; a domain never imports another domain (DESIGN.md rule 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ssmkit"
DOMAINS = ("vision", "timeseries", "recsys", "graphs", "synthetic")
LAYERS = ("kernels", "core", *DOMAINS)


def _imported_modules(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """Absolute module names imported by a file (relative imports resolved against its package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module or "")
    return names


def _layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ssmkit" and parts[1] in LAYERS else None


def _allowed(layer: str) -> set[str]:
    if layer == "kernels":
        return {"kernels"}
    if layer == "core":
        return {"kernels", "core"}
    return {"kernels", "core", layer}


@pytest.mark.parametrize("layer", [layer for layer in LAYERS if (PACKAGE / layer).exists()])
def test_import_direction(layer):
    root = PACKAGE / layer
    bad = []
    for path in sorted(root.rglob("*.py")):
        for module in _imported_modules(path):
            target = _layer_of(module)
            if target is not None and target not in _allowed(layer):
                bad.append(f"{path.relative_to(PACKAGE.parent)} imports {module}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_kernels_import_only_torch_at_top_level():
    """Backends may import numba / triton, but only inside their own lazily imported modules."""
    eager = [PACKAGE / "kernels" / "__init__.py", PACKAGE / "kernels" / "_backend.py",
             PACKAGE / "kernels" / "_validate.py", PACKAGE / "kernels" / "step.py",
             PACKAGE / "kernels" / "selective_scan" / "__init__.py",
             PACKAGE / "kernels" / "linear_scan" / "__init__.py"]
    for path in eager:
        tops = {m.split(".")[0] for m in _imported_modules(path)}
        assert not tops & {"triton", "numba", "numpy"}, f"{path.name} imports {tops & {'triton', 'numba', 'numpy'}}"


def test_layering_check_detects_a_violation(tmp_path):
    """The checker itself: absolute and relative imports of a domain from core are both found."""
    probe = tmp_path / "ssmkit" / "core" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("from ssmkit.vision import models\nfrom ..timeseries import data\nimport torch\n")
    modules = _imported_modules(probe, root=tmp_path)
    assert modules == ["ssmkit.vision", "ssmkit.timeseries", "torch"]
    assert [_layer_of(m) for m in modules] == ["vision", "timeseries", None]
    assert not {"vision", "timeseries"} & _allowed("core")
