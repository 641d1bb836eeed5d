"""``F.linear`` for inputs with few features (Mamba's ``dt_proj``, R = d_model / 16), with a CPU-friendly backward.

On the CPU the BLAS is very sensitive to the layout of skinny products. Autograd's backward of
``F.linear(x [M, R], W [E, R])`` runs ``grad [M, E] @ W`` and ``grad^T @ x``. At M = 12800, R = 4, E = 128 (Mamba4Rec,
one thread) they took 1.8 and 2.4-3.1 ms. The same products written as ``(W^T @ grad^T)^T`` and
``(x^T @ grad)^T`` took 0.40 and 0.29-0.31 ms. The results are the same up to rounding, and the forward is
``F.linear`` itself. CUDA tensors use ``F.linear`` directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["narrow_linear"]


class _NarrowLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # [M, E]
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            w = weight.to(g2.dtype)  # [E, R]
            grad_x = (w.t() @ g2.t()).t().reshape(x.shape).to(x.dtype)  # [..., R]
        if ctx.needs_input_grad[1]:
            x2 = x.reshape(-1, x.shape[-1]).to(g2.dtype)  # [M, R]
            grad_w = (x2.t() @ g2).t().to(weight.dtype)  # [E, R]
        return grad_x, grad_w


def narrow_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight^T`` without bias, for a short last dimension of ``x``.

    Args:
        x: [..., R], a strided view is fine (e.g. a slice of ``x_proj``'s output).
        weight: [E, R].

    Returns:
        [..., E], equal to ``F.linear(x, weight)``. Its backward is reordered for the CPU BLAS (module docstring).
    """
    if x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
        return F.linear(x, weight)
    return _NarrowLinear.apply(x, weight)
