"""Depthwise 1-D convolutions along L in the [B, L, D] layout: causal, anti-causal and one decoding step.

Glossary: B batch, L length, D channels, W kernel width; ``weight`` is ``nn.Conv1d(D, D, W, groups=D).weight``
[D, 1, W] (or [D, W]), ``bias`` [D].

    causal       y_t = bias + sum_k weight[k] * x_{t - (W - 1) + k}        (mamba_ssm's conv1d, truncated to L)
    anti-causal  y_t = bias + sum_k weight[k] * x_{t + (W - 1) - k}        (= causal conv of the reversed sequence,
                                                                              reversed back: Vim's backward branch)
    lengths      [B] valid prefix per row: inputs at t >= length are read as 0, so padding never reaches a valid
                 output, and the anti-causal conv of a padded row equals that of the row cut to its length.
    state        the last W inputs [B, D, W], newest in column W - 1 (mamba_ssm's ``conv_state``); the causal conv
                 reads columns 1..W-1 as the inputs before x and returns the last W inputs of the stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssmkit.kernels._validate import check_lengths

_ACTIVATIONS = (None, "silu")

__all__ = ["anticausal_conv1d", "causal_conv1d", "causal_conv1d_step", "valid_mask"]


def valid_mask(lengths: torch.Tensor | None, batch_size: int, seqlen: int, device: torch.device,
               owner: str = "valid_mask") -> torch.Tensor | None:
    """Check ``lengths`` and return the mask of valid positions.

    Args:
        lengths: [B] integers in [1, L], or None.
        batch_size: B.
        seqlen: L.
        device: device the lengths must be on.
        owner: caller name for error messages.

    Returns:
        Boolean mask [B, L] (True where t < lengths[b]), or None when ``lengths`` is None.
    """
    lengths = check_lengths(lengths, batch_size, seqlen, device, owner)
    if lengths is None:
        return None
    return torch.arange(seqlen, device=device)[None, :] < lengths[:, None]  # [B, L]


def _check_conv(op: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                x_shape: str) -> torch.Tensor:
    """Validate x / weight / bias and return the weight as [D, 1, W]."""
    if not isinstance(x, torch.Tensor) or x.dim() != len(x_shape.split(",")):
        found = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{op}: x must have shape {x_shape}, found {found}")
    dim = x.shape[-1]
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (2, 3) or weight.shape[0] != dim or (
        weight.dim() == 3 and weight.shape[1] != 1
    ):
        found = list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{op}: weight must have shape [{dim}, 1, W] or [{dim}, W] (D = {dim} channels of x), "
                         f"found {found}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (dim,)):
        found = list(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"{op}: bias must have shape [{dim}], found {found}")
    return weight if weight.dim() == 3 else weight.unsqueeze(1)  # [D, 1, W]


def _check_activation(op: str, activation: str | None) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{op}: activation must be one of {list(_ACTIVATIONS)}, found {activation!r}")


def _fused_cpu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether the fused numba kernel serves this call (float32 CPU tensors)."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and (bias is None or bias.dtype == torch.float32))


def _conv_cpu(x, weight, bias, lengths, reverse: bool, activation: str | None) -> torch.Tensor:
    from ssmkit.kernels.conv1d_cpu import depthwise_conv1d_cpu  # numba loads on first use

    return depthwise_conv1d_cpu(x, weight, bias, lengths, reverse=reverse, silu=activation == "silu")


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    return F.silu(y) if activation == "silu" else y


def _shifted_sum(padded: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seqlen: int) -> torch.Tensor:
    """``y_t = bias + sum_k weight[:, 0, k] padded_{t+k}`` for t < L: a depthwise convolution in the [B, L, D] layout.

    W multiply-adds over [B, L, D] (W = d_conv is 2 to 4 in the Mamba models): no transposes, no copies, a
    contiguous output, and none of the per-call cost of a generic convolution at small shapes.

    Args:
        padded: [B, L + W - 1, D].
        weight: [D, 1, W].
        bias: [D] or None.
        seqlen: L.

    Returns:
        y [B, L, D] in padded.dtype.
    """
    taps = weight[:, 0, :].to(padded.dtype).t()  # [W, D]
    y = padded[:, :seqlen] * taps[0]  # [B, L, D]
    if bias is not None:
        y = y + bias.to(padded.dtype)
    for k in range(1, taps.shape[0]):
        y = torch.addcmul(y, padded[:, k:k + seqlen], taps[k])  # [B, L, D]
    return y


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
    activation: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise convolution ``y_t = act(bias + sum_k weight[k] x_{t-(W-1)+k})``.

    Args:
        x: input [B, L, D].
        weight: [D, 1, W] or [D, W].
        bias: [D] or None.
        lengths: [B] valid prefix per row, or None; inputs at t >= length are read as 0.
        initial_state: the W inputs before x [B, D, W] (newest last), or None (zeros).
        return_final_state: also return the last W inputs of the stream (state then x[:length]) [B, D, W], in the
            dtype of ``initial_state`` (x.dtype when it is None).
        activation: None or "silu" (as mamba_ssm's ``causal_conv1d_fn``). Float32 CPU calls without a state run
            the fused kernel of ``ssmkit.kernels.conv1d_cpu`` (convolution and SiLU in one pass, forward and backward).

    Returns:
        y [B, L, D] in x.dtype, and with ``return_final_state`` the final state [B, D, W].
    """
    op = "causal_conv1d"
    weight = _check_conv(op, x, weight, bias, "[B, L, D]")
    batch, seqlen, dim = x.shape
    width = weight.shape[-1]
    if initial_state is not None and (not isinstance(initial_state, torch.Tensor)
                                      or tuple(initial_state.shape) != (batch, dim, width)):
        found = list(initial_state.shape) if isinstance(initial_state, torch.Tensor) else type(initial_state).__name__
        raise ValueError(f"{op}: initial_state must have shape [{batch}, {dim}, {width}] (B, D, W), found {found}")
    _check_activation(op, activation)
    if initial_state is None and not return_final_state and _fused_cpu(x, weight, bias):
        lengths = check_lengths(lengths, batch, seqlen, x.device, op)
        return _conv_cpu(x, weight, bias, lengths, False, activation)
    mask = valid_mask(lengths, batch, seqlen, x.device, op)
    if mask is not None:
        x = x.masked_fill(~mask[:, :, None], 0.0)  # [B, L, D]
    if initial_state is None:
        padded = F.pad(x, (0, 0, width - 1, 0))  # [B, W - 1 + L, D], zeros before x
    else:
        padded = torch.cat([initial_state[:, :, 1:].transpose(1, 2).to(x.dtype), x], dim=1)  # [B, W - 1 + L, D]
    y = _activate(_shifted_sum(padded, weight, bias, seqlen), activation)  # [B, L, D]
    if not return_final_state:
        return y
    xt = x.transpose(1, 2)  # [B, D, L]
    history = xt.new_zeros(batch, dim, width) if initial_state is None else initial_state.to(xt.dtype)  # [B, D, W]
    stream = torch.cat([history, xt], dim=-1)  # [B, D, W + L]
    ends = torch.full((batch,), seqlen, device=x.device) if lengths is None else lengths.to(torch.int64)  # [B]
    index = ends[:, None] + torch.arange(width, device=x.device)[None, :]  # [B, W], positions in the stream
    final = torch.gather(stream, 2, index[:, None, :].expand(-1, dim, -1))  # [B, D, W]
    out_dtype = x.dtype if initial_state is None else initial_state.dtype
    return y, final.to(out_dtype)


def anticausal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    lengths: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """Anti-causal depthwise convolution ``y_t = act(bias + sum_k weight[k] x_{t+(W-1)-k})``.

    Equals ``flip(causal_conv1d(flip(x)))`` without the flipped copies; with ``lengths`` each row equals the same
    computation on the row cut to its length (inputs at t >= length are read as 0).

    Args:
        x: input [B, L, D].
        weight: [D, 1, W] or [D, W].
        bias: [D] or None.
        lengths: [B] valid prefix per row, or None.
        activation: None or "silu" (float32 CPU calls run the fused kernel, as ``causal_conv1d``).

    Returns:
        y [B, L, D] in x.dtype.
    """
    op = "anticausal_conv1d"
    weight = _check_conv(op, x, weight, bias, "[B, L, D]")
    batch, seqlen, dim = x.shape
    _check_activation(op, activation)
    if _fused_cpu(x, weight, bias):
        return _conv_cpu(x, weight, bias, check_lengths(lengths, batch, seqlen, x.device, op), True, activation)
    mask = valid_mask(lengths, batch, seqlen, x.device, op)
    if mask is not None:
        x = x.masked_fill(~mask[:, :, None], 0.0)  # [B, L, D]
    padded = F.pad(x, (0, 0, 0, weight.shape[-1] - 1))  # [B, L + W - 1, D], zeros after x
    return _activate(_shifted_sum(padded, weight.flip(-1), bias, seqlen), activation)  # [B, L, D]


def causal_conv1d_step(
    x: torch.Tensor, state: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """One decoding step of the causal convolution; ``state`` is updated in place.

    Args:
        x: the new input [B, D].
        state: the last W inputs [B, D, W], newest last; becomes (state[..., 1:], x).
        weight: [D, 1, W] or [D, W].
        bias: [D] or None.

    Returns:
        y [B, D] in x.dtype (computed in the dtype of ``state``).
    """
    op = "causal_conv1d_step"
    weight = _check_conv(op, x, weight, bias, "[B, D]")
    batch, dim = x.shape
    width = weight.shape[-1]
    if not isinstance(state, torch.Tensor) or tuple(state.shape) != (batch, dim, width):
        found = list(state.shape) if isinstance(state, torch.Tensor) else type(state).__name__
        raise ValueError(f"{op}: state must have shape [{batch}, {dim}, {width}] (B, D, W), found {found}")
    state.copy_(torch.cat([state[:, :, 1:], x.to(state.dtype)[:, :, None]], dim=-1))  # [B, D, W]
    y = (state * weight[:, 0, :].to(state.dtype)).sum(-1)  # [B, D]
    if bias is not None:
        y = y + bias.to(state.dtype)
    return y.to(x.dtype)
