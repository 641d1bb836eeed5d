"""S-Mamba: "Is Mamba Effective for Time Series Forecasting?" (Wang et al., arXiv 2403.11144, Neurocomputing 2024).

Faithful to wzhwzhwzh0921/S-D-Mamba (model/S_Mamba.py, layers/Mamba_EncDec.py, layers/Embed.py):
each variate's whole lookback becomes one token (Linear seq_len -> d_model), the time features become extra tokens,
and Mamba runs over the *token* axis (variates, not time). Per layer, a forward Mamba and a separate backward Mamba
(the official code flips the tokens, runs the second block and flips back; here ``Mamba(reverse=True)`` scans right
to left through the kernel's ``reverse=``, which is the same function) are summed, then post-norm residual + FFN.
Series normalisation (mean / population std over time, no affine) wraps the model.

Official state_dict keys are converted by ``convert_official`` (registered for ``s_mamba``); the unused modules some
official revisions build inside each encoder layer are dropped.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checkpoint import register_converter
from ssmkit.core.drop import Dropout
from ssmkit.core.mixers import Mamba
from ssmkit.core.registry import register_model

from ._series import check_forecast_input, normalize_series


class SMambaLayer(nn.Module):
    """Bidirectional Mamba over tokens, then post-norm FFN (Conv1d k=1 in the official code == Linear)."""

    def __init__(self, d_model: int, d_ff: int, d_state: int, d_conv: int, expand: int, dropout: float,
                 activation: str, backend: str):
        super().__init__()
        self.mamba_forward = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, backend=backend)
        self.mamba_backward = Mamba(d_model, d_state=d_state, d_conv=d_conv, expand=expand, reverse=True,
                                    backend=backend)
        self.ffn_in = nn.Linear(d_model, d_ff)
        self.ffn_out = nn.Linear(d_ff, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', found {activation!r}")
        self.activation = F.gelu if activation == "gelu" else F.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, T, E] tokens -> [B, T, E]."""
        x = self.norm1(x + self.mamba_forward(x) + self.mamba_backward(x))  # [B, T, E]
        y = self.dropout(self.activation(self.ffn_in(x)))  # [B, T, d_ff]
        y = self.dropout(self.ffn_out(y))  # [B, T, E]
        return self.norm2(x + y)


class SMamba(nn.Module):
    """S-Mamba forecaster.

    Args:
        seq_len: lookback L.   pred_len: horizon S.   n_vars: variates N (outputs keep only these tokens).
        d_model, d_ff, n_layers, d_state: as the official scripts (e_layers = n_layers).
        d_conv, expand: Mamba conv width and expansion (official: 2 and 1).
        dropout: token-embedding and FFN dropout.   activation: FFN activation ("gelu" in the official runs).
        use_norm: series normalisation (off only for PEMS04/07 in the official scripts).
        backend: scan backend passed to every Mamba.
    """

    def __init__(self, seq_len: int = 96, pred_len: int = 96, n_vars: int = 7, d_model: int = 512, d_ff: int = 2048,
                 n_layers: int = 2, d_state: int = 32, d_conv: int = 2, expand: int = 1, dropout: float = 0.1,
                 activation: str = "gelu", use_norm: bool = True, backend: str = "auto"):
        super().__init__()
        self.seq_len, self.pred_len, self.n_vars, self.use_norm = seq_len, pred_len, n_vars, use_norm
        self.embed = nn.Linear(seq_len, d_model)
        self.embed_dropout = Dropout(dropout)
        self.layers = nn.ModuleList(
            SMambaLayer(d_model, d_ff, d_state, d_conv, expand, dropout, activation, backend) for _ in range(n_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, pred_len)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> torch.Tensor:
        """Forecast.

        Args:
            x: lookback window [B, L, N].
            x_mark: time features [B, L, F] (appended as F extra tokens) or None.

        Returns:
            [B, pred_len, N].
        """
        check_forecast_input(x, x_mark, self.seq_len, self.n_vars)
        if self.use_norm:
            x, mean, std = normalize_series(x)  # [B, L, N], [B, 1, N], [B, 1, N]
        tokens = x if x_mark is None else torch.cat([x, x_mark], dim=2)  # [B, L, N (+F)]
        h = self.embed_dropout(self.embed(tokens.transpose(1, 2)))  # [B, T, E]
        for layer in self.layers:
            h = layer(h)
        # the norm and the head act per token: only the variate tokens are projected (the time-feature tokens'
        # outputs are dropped, as in the official code, which projects them too)
        out = self.head(self.norm(h[:, : self.n_vars])).transpose(1, 2)  # [B, S, N]
        if self.use_norm:
            out = out * std + mean
        return out


_OFFICIAL_RENAMES = [
    (r"^enc_embedding\.value_embedding\.", "embed."),
    (r"^encoder\.attn_layers\.(\d+)\.attention\.", r"layers.\1.mamba_forward."),
    (r"^encoder\.attn_layers\.(\d+)\.attention_r\.", r"layers.\1.mamba_backward."),
    (r"^encoder\.attn_layers\.(\d+)\.conv1\.", r"layers.\1.ffn_in."),
    (r"^encoder\.attn_layers\.(\d+)\.conv2\.", r"layers.\1.ffn_out."),
    (r"^encoder\.attn_layers\.(\d+)\.norm([12])\.", r"layers.\1.norm\2."),
    (r"^encoder\.norm\.", "norm."),
    (r"^projector\.", "head."),
]


@register_converter("s_mamba")
def convert_official(checkpoint: dict, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Map an official S-D-Mamba ``checkpoint.pth`` (a raw state_dict) to ``SMamba`` keys.

    A state_dict already in ``SMamba`` keys (e.g. saved by ssmkit) passes through unchanged. Official keys that match
    no rule (the unused modules of some official revisions) are dropped; Conv1d(k=1) FFN weights [out, in, 1] become
    Linear weights [out, in].
    """
    state_dict = checkpoint
    if not any(key.startswith(("enc_embedding.", "encoder.", "projector.")) for key in state_dict):
        return dict(state_dict)
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _OFFICIAL_RENAMES:
            if re.match(pattern, key):
                new = re.sub(pattern, repl, key)
                if re.search(r"\.ffn_(in|out)\.weight$", new) and value.dim() == 3:
                    value = value.squeeze(-1)
                out[new] = value
                break
    return out


def _example(model: SMamba, batch_size: int):
    x = torch.randn(batch_size, model.seq_len, model.n_vars)  # [B, L, N]
    x_mark = torch.rand(batch_size, model.seq_len, 4) - 0.5  # [B, L, 4]
    return {"x": x, "x_mark": x_mark}, (batch_size, model.pred_len, model.n_vars)


@register_model(domain="timeseries", example_input=_example)
def s_mamba(**kwargs) -> SMamba:
    """S-Mamba (variate tokens, bidirectional Mamba over tokens); defaults: ETTh1 at L=S=96 is d_model=d_ff=256."""
    return SMamba(**kwargs)


@register_model(domain="timeseries", example_input=_example)
def test_s_mamba(**kwargs) -> SMamba:
    """Tiny S-Mamba for tests."""
    cfg = dict(seq_len=16, pred_len=8, n_vars=3, d_model=16, d_ff=16, n_layers=1, d_state=2)
    return SMamba(**{**cfg, **kwargs})
