"""Model registry shared by every domain: ``register_model``, ``create_model``, ``list_models``, ``model_info``.

Registering (timm habit: the builder's function name is the model name)::

    def _example(model, batch_size):
        x = torch.randn(batch_size, 12, 16)  # [B, L, D]
        return {"x": x}, (batch_size, 12, 16)

    @register_model(domain="core", example_input=_example)
    def test_mamba_backbone(**kwargs) -> nn.Module:
        '''Two-block Mamba backbone, width 16 (tests).'''
        return Backbone(...)

Example-input convention (used by ``tests/test_models.py`` to test every registered model): ``example_input`` is a
callable ``(model, batch_size) -> (forward_kwargs, output_shape)``. ``model(**forward_kwargs)`` must return a tensor
of shape ``output_shape``. Inputs must be small (a forward and backward in well under a second on one CPU core).
A model whose defaults are too large for that (a ViT-Base, say) also declares ``test_overrides``: builder keyword
arguments the test builds it with (``{"depth": 2, "img_size": 32}``); its defaults stay the paper's.
The test also requires finite outputs, a gradient for every trainable parameter, identical gradients with
``set_grad_checkpointing(True)`` where the model has it, and two equal forwards in eval mode.

Discovery: ``list_models`` / ``create_model`` / ``model_info`` import ``ssmkit.core.backbones`` and each domain package
that is installed (``ssmkit.timeseries``, ``ssmkit.recsys``, ``ssmkit.synthetic``, ``ssmkit.vision``,
``ssmkit.graphs``; lazily: ``create_model`` stops at the domain that registers the name, ``list_models(domain=...)``
imports that domain only) and, if the domain has a ``models`` subpackage, every public module in it (one file per
family, each registering its models on import); an absent domain, or one whose optional extra is not installed,
is skipped; a broken one raises.
The domains are imported by name at run time, so ``core`` keeps its place below them in the layering.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import inspect
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

ExampleInput = Callable[[nn.Module, int], tuple[dict[str, Any], tuple[int, ...]]]

# Third-party packages of the optional extras: a domain that needs a missing one is skipped by discovery.
OPTIONAL_DEPENDENCIES = frozenset({"torch_geometric"})
DOMAIN_PACKAGES = ("timeseries", "recsys", "synthetic", "vision", "graphs")  # the quick imports first


@dataclass(frozen=True)
class ModelEntry:
    """One registered model.

    Attributes:
        name: registered name (the builder's function name).
        domain: ``"core"``, ``"vision"``, ``"timeseries"``, ``"recsys"``, ``"graphs"``, ``"synthetic"``, ...
        builder: ``builder(**kwargs) -> nn.Module``.
        module: module that defines the builder.
        summary: first line of the builder's docstring.
        example_input: see the module docstring; ``None`` if the builder declares none.
    """

    name: str
    domain: str
    builder: Callable[..., nn.Module]
    module: str
    summary: str
    example_input: ExampleInput | None
    test_overrides: dict[str, Any] | None = None

    @property
    def family(self) -> str:
        """Last component of the defining module (timm's one-file-per-family), e.g. ``vim``."""
        return self.module.rsplit(".", 1)[-1]


_REGISTRY: dict[str, ModelEntry] = {}
_imported_domains: set[str] = set()


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    domain: str,
    example_input: ExampleInput | None = None,
    test_overrides: dict[str, Any] | None = None,
) -> Any:
    """Register a model builder under its function name.

    Usable as ``@register_model(domain="vision")``.

    Args:
        fn: builder ``fn(**kwargs) -> nn.Module``.
        domain: the domain the model belongs to.
        example_input: ``(model, batch_size) -> (forward_kwargs, output_shape)`` for the registry-driven tests.
        test_overrides: builder keyword arguments for a small instance in the registry-driven tests.

    Returns:
        The builder unchanged (or a decorator when ``fn`` is None).
    """
    if not isinstance(domain, str) or not domain:
        raise ValueError(f"register_model: domain must be a non-empty str, got {domain!r}")
    if example_input is not None and not callable(example_input):
        raise TypeError(f"register_model: example_input must be callable or None, got {type(example_input).__name__}")
    if test_overrides is not None and not isinstance(test_overrides, dict):
        raise TypeError(f"register_model: test_overrides must be a dict or None, got {type(test_overrides).__name__}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if not callable(builder) or not hasattr(builder, "__name__"):
            raise TypeError(f"register_model: expected a builder function, got {builder!r}")
        name = builder.__name__
        previous = _REGISTRY.get(name)
        if previous is not None and previous.module != builder.__module__:
            raise ValueError(f"register_model: name {name!r} is already registered by {previous.module}; "
                             f"{builder.__module__} must use another name")
        doc = inspect.getdoc(builder) or ""
        _REGISTRY[name] = ModelEntry(name=name, domain=domain, builder=builder, module=builder.__module__,
                                     summary=doc.strip().splitlines()[0] if doc.strip() else "",
                                     example_input=example_input, test_overrides=test_overrides)
        return builder

    return decorator(fn) if fn is not None else decorator


def _import_domain(domain: str) -> None:
    """Import one installed domain package and every public module of its ``models`` subpackage (once)."""
    if domain in _imported_domains:
        return
    package = f"ssmkit.{domain}"
    if importlib.util.find_spec(package) is not None:
        try:
            importlib.import_module(package)
            if importlib.util.find_spec(f"{package}.models") is not None:
                models = importlib.import_module(f"{package}.models")
                for info in pkgutil.iter_modules(getattr(models, "__path__", [])):
                    if not info.name.startswith("_"):
                        importlib.import_module(f"{package}.models.{info.name}")
        except ImportError as err:
            if getattr(err, "name", None) not in OPTIONAL_DEPENDENCIES:
                raise ImportError(f"registry: domain package {package} exists but failed to import: {err}") from err
            # an extra that is not installed (pip install 'ssmkit[graphs]'): that domain has no models here
    _imported_domains.add(domain)


def _discover(name: str | None = None, domain: str | None = None) -> None:
    """Import the core test backbones and the installed domain packages, so their models register.

    Domains are imported lazily (timm and torch_geometric take seconds to import): with ``name``, only until that
    name is registered; with ``domain``, only that domain; otherwise all of them.
    """
    importlib.import_module("ssmkit.core.backbones")
    if domain in DOMAIN_PACKAGES:
        _import_domain(domain)
        return
    for package in DOMAIN_PACKAGES:
        if name is not None and name in _REGISTRY:
            return
        _import_domain(package)


def _entry(name: str) -> ModelEntry:
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    _discover(name=name)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {close}?" if close else "; see ssmkit.list_models()"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def list_models(domain: str | None = None, pattern: str | None = None) -> list[str]:
    """Sorted names of the registered models.

    Args:
        domain: keep only this domain's models.
        pattern: shell-style wildcard on the name (``"vim_*"``).

    Returns:
        Model names.
    """
    _discover(domain=domain)
    names = [n for n, e in _REGISTRY.items() if domain is None or e.domain == domain]
    if pattern is not None:
        names = fnmatch.filter(names, pattern)
    return sorted(names)


def model_info(name: str) -> dict[str, Any]:
    """Registry facts about one model.

    Returns:
        ``{"name", "domain", "module", "family", "summary", "example_input", "test_overrides"}``.
    """
    entry = _entry(name)
    return {"name": entry.name, "domain": entry.domain, "module": entry.module, "family": entry.family,
            "summary": entry.summary, "example_input": entry.example_input,
            "test_overrides": dict(entry.test_overrides or {})}


def create_model(name: str, pretrained: str | os.PathLike | bool | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model, optionally loading local pretrained weights.

    Args:
        name: registered model name.
        pretrained: path of a local checkpoint (str or PathLike). It is read by ``ssmkit.core.checkpoint`` and
            converted by the converter registered under the model name or its family, if any; otherwise the file
            must hold a plain state_dict (raw, Lightning or safetensors). Loading is strict. ``True`` is refused:
            nothing is downloaded. ``None`` / ``False``: random init.
        **overrides: builder keyword arguments; those whose value is None are dropped (the builder default stays).

    Returns:
        The model.
    """
    entry = _entry(name)
    if pretrained is True:
        raise ValueError(f"create_model({name!r}): pretrained=True would need a download, which ssmkit never does; "
                         f"pass the path of a local checkpoint file instead, e.g. pretrained='weights/{name}.pth'")
    if pretrained is not None and pretrained is not False and not isinstance(pretrained, (str, os.PathLike)):
        raise TypeError(f"create_model({name!r}): pretrained must be a path, None or False, "
                        f"got {type(pretrained).__name__}")
    model = entry.builder(**{k: v for k, v in overrides.items() if v is not None})
    if not isinstance(model, nn.Module):
        raise TypeError(f"create_model({name!r}): builder {entry.module}.{name} returned {type(model).__name__}, "
                        f"expected an nn.Module")
    if pretrained is not None and pretrained is not False:
        _load_pretrained(entry, model, pretrained)
    return model


def _load_pretrained(entry: ModelEntry, model: nn.Module, path: str | os.PathLike) -> None:
    from .checkpoint import get_converter, load_into, read_checkpoint, select_state_dict

    checkpoint = read_checkpoint(path)
    converter = get_converter(entry.name, entry.family)
    if converter is not None:
        state_dict = converter(checkpoint, model)
    else:
        try:
            state_dict = select_state_dict(checkpoint, source=str(path))
        except ValueError as err:
            raise ValueError(f"create_model({entry.name!r}): no converter is registered for this model or its family "
                             f"{entry.family!r}, and {err}. Export the right entry first: "
                             f"`ssmkit export {path} OUT.safetensors --key KEY`") from err
    load_into(model, state_dict, strict=True)
