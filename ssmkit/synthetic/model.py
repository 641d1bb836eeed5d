"""A token-level Mamba: embedding -> ``core.block.Backbone`` of ``core.mixers.Mamba`` blocks -> linear head.

The plain ``nn.Module`` behind the synthetic domain (usable without Lightning); ``module.SequenceModel`` wraps it.
It is the model of the Mamba paper's synthetic tasks (appendix E.1: a few Mamba blocks, width 64).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from ssmkit.core.registry import register_model

__all__ = ["TokenMamba", "selective_copying_mamba"]


def _mamba_layer(layer_idx: int, d_model: int, d_state: int, d_conv: int, expand: int, backend: str) -> nn.Module:
    """The Mamba mixer of block ``layer_idx`` (a module-level function, so the factory pickles)."""
    from ssmkit.core.mixers import Mamba

    return Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, layer_idx=layer_idx, backend=backend)


class TokenMamba(nn.Module):
    """Embedding, ``depth`` pre-norm Mamba blocks with a final RMSNorm, and a linear head over the vocabulary.

    Args:
        vocab_size: V, number of token ids (inputs and outputs).
        d_model: model width D.
        depth: number of Mamba blocks.
        d_state: SSM state size N.
        d_conv: causal depthwise convolution width.
        expand: inner width factor (inner width = expand * D).
        backend: scan backend passed to every mixer (``"auto"``, ``"cpu"``, ``"torch"``, ``"triton"``, ``"naive"``).
    """

    def __init__(
        self, vocab_size: int, d_model: int, depth: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        from ssmkit.core.block import Backbone

        for name, value in (("vocab_size", vocab_size), ("d_model", d_model), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenMamba: {name} must be a positive int, found {value!r}")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, d_model)
        factory = partial(_mamba_layer, d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand,
                          backend=backend)
        self.backbone = Backbone(d_model, depth, factory)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits for every position.

        Args:
            tokens: [B, L] integer token ids in ``[0, vocab_size)``.

        Returns:
            logits [B, L, V].
        """
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int32, torch.int64):
            found = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"TokenMamba: tokens must be an int32/int64 tensor [B, L], found {found}")
        x = self.embedding(tokens)  # [B, L, D]
        x = self.backbone(x)  # [B, L, D]
        return self.head(x)  # [B, L, V]


def _token_example(model: TokenMamba, batch_size: int) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Random token ids [B, 12]; logits [B, 12, V]."""
    tokens = torch.randint(0, model.vocab_size, (batch_size, 12))  # [B, L]
    return {"tokens": tokens}, (batch_size, 12, model.vocab_size)


@register_model(domain="synthetic", example_input=_token_example)
def selective_copying_mamba(**kwargs: Any) -> TokenMamba:
    """Token-level Mamba of the Mamba paper's selective copying task: 2 blocks of width 64, 16 tokens."""
    return TokenMamba(**{"vocab_size": 16, "d_model": 64, "depth": 2, **kwargs})
