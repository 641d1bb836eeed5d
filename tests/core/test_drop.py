"""``ssmkit.core.Dropout`` against ``nn.Dropout``: the same outputs, gradients and generator state, bit for bit."""

import pytest
import torch
from torch import nn

from ssmkit.core import Dropout
from ssmkit.core.drop import dropout


def _run(module: nn.Module, x: torch.Tensor, seed: int):
    torch.manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    out = module(x)
    (grad,) = torch.autograd.grad(out, x, torch.arange(out.numel(), dtype=out.dtype).view(out.shape) % 7)
    return out, grad, torch.get_rng_state()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "large"])
def test_dropout_equals_torch_dropout_bit_for_bit(dtype, p, layout):
    shape = (3, 40000) if layout == "large" else (4, 5, 6)  # "large": above TensorIterator's parallel grain
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    if layout == "transposed":
        x = x.transpose(0, 2)  # a non-contiguous input: the draws follow its memory order
    ref_out, ref_grad, ref_state = _run(nn.Dropout(p), x, seed=3)
    out, grad, state = _run(Dropout(p), x, seed=3)
    assert out.dtype == ref_out.dtype and out.shape == ref_out.shape
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)
    assert torch.equal(state, ref_state)  # the same random numbers were consumed
    assert 0 < int((out == 0).sum()) < out.numel()  # it did drop something, and not everything


def test_dropout_eval_and_edge_probabilities_follow_torch():
    x = torch.randn(4, 8)
    module = Dropout(0.5).eval()
    assert torch.equal(module(x), x)
    torch.manual_seed(0)
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
    assert torch.equal(Dropout(0.0)(x), x)
    assert isinstance(Dropout(0.1), nn.Dropout)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        Dropout(1.5)


@pytest.mark.parametrize("training", [True, False])
def test_functional_dropout_equals_f_dropout(training):
    x = torch.randn(50, 70)
    torch.manual_seed(1)
    ref = torch.nn.functional.dropout(x, 0.3, training=training)
    ref_state = torch.get_rng_state()
    torch.manual_seed(1)
    out = dropout(x, 0.3, training=training)
    assert torch.equal(out, ref)
    assert torch.equal(torch.get_rng_state(), ref_state)


def test_torch_compile_traces_f_dropout():
    module = Dropout(0.5)
    x = torch.randn(64, 64)
    torch.manual_seed(0)
    eager = nn.Dropout(0.5)(x)
    torch.manual_seed(0)
    compiled = torch.compile(module, backend="eager")(x)  # dynamo traces F.dropout: same numbers here
    assert torch.equal(compiled, eager)


def test_fallback_draws_the_same_numbers(monkeypatch):
    """Where the kernel refuses (an unknown generator layout), the chunked uniform_ path gives the same result."""
    from ssmkit.kernels import bernoulli_cpu

    monkeypatch.setattr(bernoulli_cpu, "bernoulli_keep_", lambda mask, keep: False)
    x = torch.randn(3, 40000).transpose(0, 1)  # several chunks, non-contiguous
    ref_out, ref_grad, ref_state = _run(nn.Dropout(0.2), x, seed=4)
    out, grad, state = _run(Dropout(0.2), x, seed=4)
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad) and torch.equal(state, ref_state)
