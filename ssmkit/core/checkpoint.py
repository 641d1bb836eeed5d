"""Read checkpoints safely, pick their state_dict explicitly, convert official formats, load with a strict key report.

Formats read by ``read_checkpoint`` (recognized by their first bytes, not by their suffix):

- torch files (``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin``, zip or legacy pickle), always through
  ``torch.load(map_location="cpu", weights_only=True)`` with only ``argparse.Namespace`` allow-listed (the official Vim
  checkpoints keep their training ``args`` as a Namespace). Nothing else from a pickle is executed.
- safetensors files.

``load_checkpoint(path, key)`` then returns one flat ``{name: Tensor}`` state_dict:

- a raw state_dict is returned as is;
- a nested file (``{"model": ..., "model_ema": ..., "optimizer": ..., "args": ...}``, mmcv's ``{"state_dict": ...}``,
  ``{"module": ...}``) needs an explicit ``key``: guessing between ``model`` and ``model_ema`` silently changes results;
- a Lightning ``.ckpt`` (it carries ``pytorch-lightning_version``) uses its ``state_dict``; ``prefix="model."``
  keeps the keys of the wrapped network and strips the prefix.

Converters (``register_converter(name)``) turn one official checkpoint object into our state_dict; ``create_model``
looks one up under the model name, then under its family. ``load_into`` compares key sets and shapes before loading.
"""

from __future__ import annotations

import argparse
import os
import pickle
import struct
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

Converter = Callable[[Mapping[str, Any], nn.Module], dict[str, Tensor]]

_CONVERTERS: dict[str, Converter] = {}
_SAFE_GLOBALS = [argparse.Namespace]


def _sniff_format(path: Path) -> str:
    """``"torch"``, ``"safetensors"`` or ``"unknown"`` from the first bytes of the file."""
    with path.open("rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and 0 < struct.unpack("<Q", head[:8])[0] <= path.stat().st_size:
        return "safetensors"
    return "unknown"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the whole checkpoint object (nested dicts included) on the CPU, without executing foreign code.

    Args:
        path: a torch file or a safetensors file.

    Returns:
        The top-level mapping stored in the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint: file not found: {path}")
    if not path.is_file():
        raise ValueError(f"checkpoint: expected a file, got a directory or special file: {path}")
    kind = _sniff_format(path)
    if kind == "unknown":
        raise ValueError(f"checkpoint: {path} is neither a torch file (.pt/.pth/.ckpt/.bin) nor a safetensors file")
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as err:
            raise ValueError(f"checkpoint: cannot read safetensors file {path}: {err}") from err
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"checkpoint: {path} holds objects other than tensors, containers and argparse.Namespace, which "
            f"torch.load(weights_only=True) refuses; re-save its state_dict alone. torch said: {str(err)[:300]}"
        ) from err
    except Exception as err:
        raise ValueError(f"checkpoint: cannot read torch file {path} (corrupt or truncated?): {err}") from err
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint: {path} must hold a dict (a state_dict or a nested checkpoint), "
                         f"got {type(obj).__name__}")
    return dict(obj)


def is_state_dict(obj: Any) -> bool:
    """True for a non-empty mapping whose keys are strings and whose values are all tensors."""
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()))


def is_lightning_checkpoint(obj: Mapping[str, Any]) -> bool:
    """True for a checkpoint written by Lightning's ``Trainer.save_checkpoint``."""
    return "pytorch-lightning_version" in obj and isinstance(obj.get("state_dict"), Mapping)


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keep the keys that start with ``prefix``, without it; keys without the prefix are dropped.

    Args:
        state_dict: flat state_dict.
        prefix: e.g. ``"model."`` for a LightningModule holding the network as ``self.model``.

    Returns:
        The stripped state_dict.
    """
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not out:
        sample = sorted(state_dict)[:5]
        raise ValueError(f"checkpoint: no key starts with prefix {prefix!r}; first keys: {sample}")
    return out


def select_state_dict(
    obj: Mapping[str, Any], key: str | None = None, prefix: str | None = None, source: str = "checkpoint"
) -> dict[str, Tensor]:
    """Pick the flat state_dict out of a loaded checkpoint object (see the module docstring for the rules).

    Args:
        obj: what ``read_checkpoint`` returned.
        key: top-level entry holding the state_dict (``"model"``, ``"model_ema"``, ``"state_dict"``, ``"module"``);
            required for nested files other than Lightning checkpoints.
        prefix: if given, keep only the keys starting with it and strip it.
        source: name used in error messages (the file path).

    Returns:
        ``{name: Tensor}``.
    """
    if key is not None:
        if key not in obj:
            raise ValueError(f"{source}: key {key!r} not found; available keys: {sorted(map(str, obj))}")
        state_dict, where = obj[key], f"{source}[{key!r}]"
    elif is_state_dict(obj):
        state_dict, where = obj, source
    elif is_lightning_checkpoint(obj):
        state_dict, where = obj["state_dict"], f"{source}['state_dict']"
    else:
        candidates = sorted(str(k) for k, v in obj.items() if is_state_dict(v))
        raise ValueError(
            f"{source} is a nested checkpoint: choose its state_dict explicitly with key=...; keys holding tensors: "
            f"{candidates}; all keys: {sorted(map(str, obj))}"
        )
    if not is_state_dict(state_dict):
        found = type(state_dict).__name__ if not isinstance(state_dict, Mapping) else "a mapping with non-tensor values"
        raise ValueError(f"{where} is not a state_dict (a non-empty mapping of str to Tensor); found {found}")
    return strip_prefix(state_dict, prefix) if prefix else dict(state_dict)


def load_checkpoint(path: str | os.PathLike, key: str | None = None, prefix: str | None = None) -> dict[str, Tensor]:
    """Read a checkpoint file and return its flat state_dict.

    Args:
        path: torch or safetensors file.
        key: top-level entry holding the state_dict of a nested file (see ``select_state_dict``).
        prefix: keep only the keys starting with it, stripped (e.g. ``"model."`` for Lightning checkpoints).

    Returns:
        ``{name: Tensor}`` on the CPU.
    """
    return select_state_dict(read_checkpoint(path), key=key, prefix=prefix, source=str(path))


def register_converter(name: str) -> Callable[[Converter], Converter]:
    """Decorator registering ``fn(checkpoint_object, model) -> state_dict`` for a model name or a family name.

    The converter receives the whole object from ``read_checkpoint`` (nested entries included) and the freshly built
    model (for shapes), and returns a state_dict with our key names.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_converter: name must be a non-empty str, got {name!r}")

    def decorator(fn: Converter) -> Converter:
        if not callable(fn):
            raise TypeError(f"register_converter({name!r}): expected a callable, got {type(fn).__name__}")
        _CONVERTERS[name] = fn
        return fn

    return decorator


def get_converter(*names: str) -> Converter | None:
    """The converter registered under the first of ``names`` that has one (e.g. model name, then family)."""
    for name in names:
        if name in _CONVERTERS:
            return _CONVERTERS[name]
    return None


@dataclass
class LoadReport:
    """Differences between a state_dict and a model's own state_dict.

    Attributes:
        missing: model keys absent from the state_dict.
        unexpected: state_dict keys the model does not have.
        mismatched: ``(key, checkpoint_shape, model_shape)`` for keys present in both with different shapes.
        loaded: number of tensors copied into the model.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        """True when the key sets and all shapes agree."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        """Human-readable list of every problem."""
        lines = []
        if self.missing:
            lines.append(f"missing keys ({len(self.missing)}): {self.missing}")
        if self.unexpected:
            lines.append(f"unexpected keys ({len(self.unexpected)}): {self.unexpected}")
        for key, ckpt_shape, model_shape in self.mismatched:
            lines.append(f"shape mismatch for {key!r}: checkpoint {list(ckpt_shape)}, model {list(model_shape)}")
        return "\n".join(lines) if lines else "all keys and shapes match"


def load_into(model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True) -> LoadReport:
    """Copy a state_dict into ``model`` after checking keys and shapes.

    Args:
        model: target module.
        state_dict: flat ``{name: Tensor}``.
        strict: raise a ValueError naming every missing, unexpected and shape-mismatched key (nothing is loaded);
            when False, load the matching tensors and return the report.

    Returns:
        The ``LoadReport``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_into: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"load_into: state_dict must be a mapping of str to Tensor, got {type(state_dict).__name__}")
    bad = [k for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise TypeError(f"load_into: state_dict values must be tensors; non-tensor entries: {bad[:10]}")
    own = model.state_dict()
    report = LoadReport(
        missing=[k for k in own if k not in state_dict],
        unexpected=[k for k in state_dict if k not in own],
        mismatched=[(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state_dict.items()
                    if k in own and v.shape != own[k].shape],
    )
    if strict and not report.ok:
        raise ValueError(f"load_into: state_dict does not match {type(model).__name__}:\n{report.describe()}")
    matching = {k: v for k, v in state_dict.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(matching, strict=False)
    report.loaded = len(matching)
    return report


def _standalone_tensors(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """CPU, contiguous tensors that own their storage (safetensors refuses shared or strided tensors)."""
    out, seen = {}, set()
    for name, tensor in state_dict.items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage()
        owns_storage = storage.nbytes() == tensor.numel() * tensor.element_size() and tensor.storage_offset() == 0
        if storage.data_ptr() in seen or not tensor.is_contiguous() or not owns_storage:
            tensor = tensor.contiguous().clone()
        if tensor.numel() > 0:
            seen.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def export_safetensors(
    ckpt_path: str | os.PathLike, out_path: str | os.PathLike, key: str | None = None, prefix: str | None = None
) -> Path:
    """Write the state_dict of a checkpoint as a safetensors file, atomically (temp file + ``os.replace``).

    Tied weights (several keys sharing one storage) are written once per key.

    Args:
        ckpt_path: source checkpoint (any format ``load_checkpoint`` reads).
        out_path: destination ``.safetensors`` file; its folder is created if needed.
        key: entry of a nested checkpoint to export (see ``select_state_dict``).
        prefix: keep only the keys starting with it, stripped.

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    tensors = _standalone_tensors(load_checkpoint(ckpt_path, key=key, prefix=prefix))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp_name, metadata={"format": "pt", "source": Path(ckpt_path).name})
        os.replace(tmp_name, out_path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out_path
