"""Every registered model, of every domain: build, forward, backward, grad checkpointing, eval determinism.

The inputs come from each model's ``example_input`` (see ``ssmkit/core/registry.py``): a new model is tested the
moment it is registered. Models are built with their defaults (scan backend ``"auto"``, or ``SSMKIT_BACKEND``).
"""

from __future__ import annotations

import pytest
import torch

from ssmkit.core.registry import create_model, list_models, model_info

BATCH = 2


def _gradients(model: torch.nn.Module, inputs: dict, seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))  # [*out.shape]
    (out.float() * weights).sum().backward()
    return out.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", list_models())
def test_model(name: str) -> None:
    example = model_info(name)["example_input"]
    assert example is not None, f"{name}: register it with example_input=... (convention in ssmkit/core/registry.py)"
    torch.manual_seed(0)
    model = create_model(name, **model_info(name)["test_overrides"])
    inputs, shape = example(model, BATCH)

    model.train()
    out, grads = _gradients(model, inputs, seed=1)
    assert isinstance(out, torch.Tensor), f"{name}: forward returned {type(out).__name__}, expected a Tensor"
    assert tuple(out.shape) == tuple(shape), f"{name}: output shape {tuple(out.shape)}, expected {tuple(shape)}"
    assert torch.isfinite(out).all(), f"{name}: non-finite output"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, f"{name}: no trainable parameter"
    no_grad = [n for n in trainable if grads[n] is None]
    assert not no_grad, f"{name}: backward does not reach {no_grad}"
    bad_grad = [n for n in trainable if not torch.isfinite(grads[n]).all()]
    assert not bad_grad, f"{name}: non-finite gradients in {bad_grad}"

    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
        out_ckpt, grads_ckpt = _gradients(model, inputs, seed=1)
        model.set_grad_checkpointing(False)
        torch.testing.assert_close(out_ckpt, out)
        for n in trainable:
            torch.testing.assert_close(grads_ckpt[n], grads[n], msg=lambda m, n=n: f"{name}: grad of {n}: {m}")

    model.eval()
    with torch.no_grad():
        first, second = model(**inputs), model(**inputs)
    torch.testing.assert_close(first, second, rtol=0, atol=0, msg=lambda m: f"{name}: eval forward not deterministic")
