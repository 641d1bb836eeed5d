"""Graph learning on the shared backbone: GMN, Graph-Mamba and the GCN / GatedGCN / GPS baselines (torch_geometric).

Models live in ``ssmkit.graphs.models`` (one file per family, registered in ``ssmkit``'s model registry; the
interface they share is written in that package's docstring). This domain needs torch_geometric, an optional
dependency: ``pip install 'ssmkit[graphs]'``.
"""

try:
    import torch_geometric  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("ssmkit.graphs needs torch_geometric, which is not installed: pip install 'ssmkit[graphs]'",
                      name="torch_geometric") from err
