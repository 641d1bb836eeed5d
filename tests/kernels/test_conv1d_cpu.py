"""Fused CPU depthwise convolution (``ssmkit.kernels.conv1d_cpu``) against the PyTorch path of ``core.conv``.

float32 CPU calls of ``causal_conv1d`` / ``anticausal_conv1d`` run the numba kernel; float64 calls run the
shifted-sum PyTorch code (checked against ``F.conv1d`` in tests/core/test_mamba.py). Outputs and the gradients of
x, weight and bias must agree, with and without SiLU, with ``lengths`` and with a channel count that splits into
several tiles.
"""

from __future__ import annotations

import pytest
import torch

from ssmkit.core.conv import anticausal_conv1d, causal_conv1d
from ssmkit.kernels import conv1d_cpu
from tests.kernels.scan_testing import assert_close


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_fused_conv_matches_torch_path(width, reverse, activation, with_lengths):
    g = torch.Generator().manual_seed(width + 2 * reverse)
    dim = 520  # two tiles of 260 channels
    x = torch.randn(3, 9, dim, generator=g, dtype=torch.float64)
    weight = torch.randn(dim, 1, width, generator=g, dtype=torch.float64)
    bias = torch.randn(dim, generator=g, dtype=torch.float64)
    gy = torch.randn(3, 9, dim, generator=g, dtype=torch.float64)
    lengths = torch.tensor([9, 1, 5]) if with_lengths else None
    conv = anticausal_conv1d if reverse else causal_conv1d

    def run(dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, weight, bias)]
        y = conv(*leaves, lengths=lengths, activation=activation)
        return (y, *torch.autograd.grad(y, leaves, gy.to(dtype)))

    names = ("y", "dx", "dweight", "dbias")
    for name, ref, out in zip(names, run(torch.float64), run(torch.float32)):
        assert out.dtype == torch.float32
        assert_close(name, ref, out.double(), 1e-5)
    if with_lengths:  # inputs at t >= length get no gradient
        dx = run(torch.float32)[1]
        assert float(dx[1, 1:].abs().max()) == 0.0 and float(dx[2, 5:].abs().max()) == 0.0


def test_fused_conv_is_used_for_float32_cpu(monkeypatch):
    calls = []
    original = conv1d_cpu.depthwise_conv1d_cpu
    monkeypatch.setattr(conv1d_cpu, "depthwise_conv1d_cpu", lambda *a, **k: calls.append(1) or original(*a, **k))
    x, weight = torch.randn(2, 5, 8), torch.randn(8, 1, 3)
    causal_conv1d(x, weight, activation="silu")
    causal_conv1d(x.double(), weight.double())  # float64: PyTorch path
    assert calls == [1]


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="activation must be one of .*found 'relu'"):
        causal_conv1d(torch.randn(1, 4, 2), torch.randn(2, 1, 2), activation="relu")
