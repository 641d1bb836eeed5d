"""Residual blocks around any token mixer, and ``Backbone``: a stack of blocks with a final norm.

``Block`` does not know which mixer it holds (mamba_ssm's ``Block`` habit). Two residual forms:

- ``prenorm_residual=True`` (Vim / mamba_ssm, "Add -> Norm -> Mixer"): the block receives the previous block's output
  ``hidden`` and the running ``residual`` stream, adds them, normalizes and mixes::

      residual = hidden if residual is None else residual + drop_path(hidden)
      hidden = mixer(norm(residual))
      # with an MLP, a second Add -> Norm -> MLP sub-block:
      residual = residual + drop_path(hidden);  hidden = mlp(norm2(residual))
      return hidden, residual

  The last add happens after the stack: ``Backbone`` returns ``norm_f(residual + drop_path(hidden))``.
  With ``residual_in_fp32=True`` the residual stream is kept in float32 whatever the module dtype.
- ``prenorm_residual=False`` (post-norm, the Transformer-encoder form of S-Mamba / Mamba4Rec layers)::

      x = hidden if residual is None else residual + drop_path(hidden)
      x = norm(x + drop_path(mixer(x)));  with an MLP: x = norm2(x + drop_path(mlp(x)))
      return x, None
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .drop import DropPath
from .norm import make_norm


def _check_tokens(name: str, x: Any, dim: int) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [B, L, {dim}], got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape [B, L, {dim}], got {tuple(x.shape)}")


def _norm_in_its_dtype(norm: nn.Module, x: Tensor) -> Tensor:
    """Apply ``norm`` to ``x`` cast to the norm's parameter dtype (a float32 residual meets a bf16 norm)."""
    weight = getattr(norm, "weight", None)
    return norm(x if weight is None else x.to(weight.dtype))


class Block(nn.Module):
    """One residual layer: norm + mixer, optionally followed by norm2 + MLP (see the module docstring).

    Args:
        dim: model width (D).
        mixer: token mixer, [B, L, D] -> [B, L, D]; extra forward keywords are passed to it.
        mlp: optional channel MLP, [B, L, D] -> [B, L, D], run as a second residual sub-block.
        norm: ``"rms"`` or ``"layer"``.
        drop_path: drop-path rate applied to every branch output this block adds to the residual stream (the
            incoming ``hidden`` in pre-norm form; the mixer / MLP output in post-norm form; and, with an MLP, the
            mixer output before the MLP sub-block).
        residual_in_fp32: keep the residual stream in float32.
        prenorm_residual: ``True`` for the Add -> Norm -> Mixer form returning ``(hidden, residual)``; ``False`` for
            the post-norm form returning ``(hidden, None)``.
        norm_eps: epsilon of the norms.
    """

    def __init__(
        self, dim: int, mixer: nn.Module, mlp: nn.Module | None = None, norm: str = "rms", drop_path: float = 0.0,
        residual_in_fp32: bool = False, prenorm_residual: bool = True, norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim <= 0:
            raise ValueError(f"Block: dim must be a positive int, got {dim!r}")
        if not isinstance(mixer, nn.Module):
            raise TypeError(f"Block: mixer must be an nn.Module, got {type(mixer).__name__}")
        if mlp is not None and not isinstance(mlp, nn.Module):
            raise TypeError(f"Block: mlp must be an nn.Module or None, got {type(mlp).__name__}")
        self.dim = dim
        self.residual_in_fp32 = residual_in_fp32
        self.prenorm_residual = prenorm_residual
        self.norm = make_norm(norm, dim, eps=norm_eps)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path)
        self.norm2 = make_norm(norm, dim, eps=norm_eps) if mlp is not None else None
        self.mlp = mlp

    def forward(
        self, hidden: Tensor, residual: Tensor | None = None, **mixer_kwargs: Any
    ) -> tuple[Tensor, Tensor | None]:
        """Run the block.

        Args:
            hidden: [B, L, D] previous block's output (or the embedded tokens for the first block).
            residual: [B, L, D] running residual stream, ``None`` for the first block.
            **mixer_kwargs: passed to the mixer (``lengths=``, ``grid=``, ``cache=``, ...).

        Returns:
            ``(hidden [B, L, D], residual [B, L, D])`` in pre-norm form; ``(hidden [B, L, D], None)`` in post-norm form.
        """
        _check_tokens("Block: hidden", hidden, self.dim)
        if residual is not None:
            _check_tokens("Block: residual", residual, self.dim)
            if residual.shape != hidden.shape:
                raise ValueError(f"Block: residual shape {tuple(residual.shape)} != hidden shape {tuple(hidden.shape)}")
        if self.prenorm_residual:
            return self._forward_prenorm(hidden, residual, mixer_kwargs)
        return self._forward_postnorm(hidden, residual, mixer_kwargs)

    def _forward_prenorm(self, hidden: Tensor, residual: Tensor | None, mixer_kwargs: dict) -> tuple[Tensor, Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)  # [B, L, D]
        if self.residual_in_fp32:
            residual = residual.float()  # [B, L, D]
        hidden = self.mixer(_norm_in_its_dtype(self.norm, residual), **mixer_kwargs)  # [B, L, D]
        if self.mlp is not None:
            residual = residual + self.drop_path(hidden)  # [B, L, D]
            hidden = self.mlp(_norm_in_its_dtype(self.norm2, residual))  # [B, L, D]
        return hidden, residual

    def _forward_postnorm(self, hidden: Tensor, residual: Tensor | None, mixer_kwargs: dict) -> tuple[Tensor, None]:
        x = hidden if residual is None else residual + self.drop_path(hidden)  # [B, L, D]
        x = self._add_norm(self.norm, x, self.drop_path(self.mixer(x, **mixer_kwargs)))  # [B, L, D]
        if self.mlp is not None:
            x = self._add_norm(self.norm2, x, self.drop_path(self.mlp(x)))  # [B, L, D]
        return x, None

    def _add_norm(self, norm: nn.Module, x: Tensor, branch: Tensor) -> Tensor:
        """``norm(x + branch)``, the sum taken in float32 when ``residual_in_fp32``; returned in the dtype of x."""
        total = x.float() + branch.float() if self.residual_in_fp32 else x + branch  # [B, L, D]
        return _norm_in_its_dtype(norm, total).to(x.dtype)  # [B, L, D]


class Backbone(nn.Module):
    """``depth`` blocks around one mixer kind, then a final norm: [B, L, D] tokens in, [B, L, D] features out.

    Drop path follows Vim: ``rates = linspace(0, drop_path, depth)``; the output of layer ``j`` is dropped with
    ``rates[j]`` (in pre-norm form that happens when block ``j + 1`` or the final add receives it).

    Args:
        dim: model width (D).
        depth: number of blocks.
        mixer_factory: ``mixer_factory(layer_idx)`` returns the mixer of block ``layer_idx`` (0-based), a module
            mapping [B, L, dim] to [B, L, dim]; e.g. ``lambda i: Mamba(dim, layer_idx=i, backend=backend)``.
            The argument is the layer index, not the width.
        mlp_factory: optional ``mlp_factory(layer_idx)`` returning the MLP of that block (``None``: no MLP).
        norm: ``"rms"`` or ``"layer"`` for the block norms and the final norm.
        norm_eps: epsilon of all norms.
        drop_path: maximal drop-path rate (reached by the last layer).
        residual_in_fp32: keep the residual stream in float32.
        prenorm_residual: pre-norm (Add -> Norm -> Mixer) or post-norm blocks (see ``Block``).
        final_norm: apply ``norm_f`` to the output (``False``: identity).
    """

    def __init__(
        self, dim: int, depth: int, mixer_factory: Callable[[int], nn.Module],
        mlp_factory: Callable[[int], nn.Module] | None = None, norm: str = "rms", norm_eps: float = 1e-5,
        drop_path: float = 0.0, residual_in_fp32: bool = False, prenorm_residual: bool = True, final_norm: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
            raise ValueError(f"Backbone: depth must be a positive int, got {depth!r}")
        if not callable(mixer_factory):
            raise TypeError(f"Backbone: mixer_factory must be callable (layer_idx -> nn.Module), got {mixer_factory!r}")
        if mlp_factory is not None and not callable(mlp_factory):
            raise TypeError(f"Backbone: mlp_factory must be callable or None, got {mlp_factory!r}")
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"Backbone: drop_path must be in [0, 1), got {drop_path!r}")
        self.dim = dim
        self.depth = depth
        self.prenorm_residual = prenorm_residual
        self.grad_checkpointing = False
        rates = torch.linspace(0.0, drop_path, depth).tolist()
        layers = []
        for i in range(depth):
            rate = (rates[i - 1] if i > 0 else 0.0) if prenorm_residual else rates[i]
            mixer = mixer_factory(i)
            width = getattr(mixer, "d_model", dim)
            if width != dim:
                raise ValueError(f"Backbone: mixer_factory({i}) built a mixer with d_model={width}, expected "
                                 f"dim={dim}; the factory receives the layer index, not the width")
            mlp = mlp_factory(i) if mlp_factory is not None else None
            layers.append(Block(dim, mixer, mlp=mlp, norm=norm, drop_path=rate,
                                residual_in_fp32=residual_in_fp32, prenorm_residual=prenorm_residual,
                                norm_eps=norm_eps))
        self.layers = nn.ModuleList(layers)
        self.drop_path = DropPath(rates[-1] if prenorm_residual else 0.0)
        self.norm_f = make_norm(norm, dim, eps=norm_eps) if final_norm else nn.Identity()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of storing its activations (training only; same gradients)."""
        self.grad_checkpointing = bool(enable)

    def allocate_cache(self, batch_size: int, **kwargs: Any) -> list[Any]:
        """One decoding cache per layer, from each mixer's ``allocate_cache(batch_size, **kwargs)``."""
        missing = [i for i, layer in enumerate(self.layers) if not hasattr(layer.mixer, "allocate_cache")]
        if missing:
            kind = type(self.layers[missing[0]].mixer).__name__
            raise TypeError(f"Backbone.allocate_cache: mixer {kind} of layers {missing} has no allocate_cache method")
        return [layer.mixer.allocate_cache(batch_size, **kwargs) for layer in self.layers]

    def forward(self, x: Tensor, cache: Sequence[Any] | None = None, **mixer_kwargs: Any) -> Tensor:
        """Run the stack.

        Args:
            x: [B, L, D] input tokens.
            cache: optional per-layer decoding caches (``allocate_cache``); layer ``i`` gets ``cache=cache[i]``.
            **mixer_kwargs: passed to every mixer (``lengths=``, ``grid=``, ...).

        Returns:
            [B, L, D] features, in the dtype of ``x``.
        """
        _check_tokens("Backbone: x", x, self.dim)
        if cache is not None and len(cache) != self.depth:
            raise ValueError(f"Backbone: cache must hold one entry per layer ({self.depth}), got {len(cache)}")
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled() and cache is None
        hidden, residual = x, None
        for i, layer in enumerate(self.layers):
            kwargs = mixer_kwargs if cache is None else {**mixer_kwargs, "cache": cache[i]}
            if use_checkpoint:
                hidden, residual = checkpoint(layer, hidden, residual, use_reentrant=False, **kwargs)
            else:
                hidden, residual = layer(hidden, residual, **kwargs)
        if residual is not None:
            hidden = residual + self.drop_path(hidden)  # [B, L, D]
        return _norm_in_its_dtype(self.norm_f, hidden).to(x.dtype)  # [B, L, D]
