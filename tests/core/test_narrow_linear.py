"""narrow_linear: F.linear's forward, a reordered backward with the same gradients (strided inputs, dtypes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.core.narrow_linear import narrow_linear


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_forward_and_gradients_equal_f_linear_on_a_strided_slice(dtype, tol):
    g = torch.Generator().manual_seed(0)
    x_dbl = torch.randn(3, 7, 4 + 2 * 5, generator=g, dtype=dtype, requires_grad=True)  # [B, L, R + 2N]
    weight = torch.randn(12, 4, generator=g, dtype=dtype, requires_grad=True)  # [E, R]
    grad = torch.randn(3, 7, 12, generator=g, dtype=dtype)
    outs, grads = [], []
    for fn in (F.linear, narrow_linear):
        dt = x_dbl[..., :4]  # strided view, as in the Mamba mixer
        y = fn(dt, weight)
        (gx, gw) = torch.autograd.grad(y, (x_dbl, weight), grad)
        outs.append(y)
        grads.append((gx, gw))
    assert torch.equal(outs[0], outs[1]), "the forward must be F.linear itself"
    for ref, got, name in zip(grads[0], grads[1], ("x", "weight")):
        assert got.shape == ref.shape and got.dtype == ref.dtype, name
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol, msg=f"d{name}")


def test_gradcheck_and_partial_requires_grad():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(narrow_linear, (x, w))
    frozen = w.detach()
    (gx,) = torch.autograd.grad(narrow_linear(x, frozen).sum(), (x,))
    torch.testing.assert_close(gx, frozen.sum(0).expand(5, 3))
