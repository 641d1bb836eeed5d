"""Block / Backbone residual forms, norms, drop path, MLPs and gradient checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ssmkit.core.block import Backbone, Block
from ssmkit.core.drop import DropPath
from ssmkit.core.mlp import GatedMlp, Mlp
from ssmkit.core.norm import RMSNorm, make_norm

DIM = 8


class ToyMixer(nn.Module):
    """A causal token mixer (projection + running mean) that counts its calls and records its keywords."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.calls = 0
        self.kwargs: list[dict] = []

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.calls += 1
        self.kwargs.append(kwargs)
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype, device=x.device)[:, None]  # [L, 1]
        return torch.cumsum(self.proj(x), dim=1) / steps  # [B, L, D]

    def allocate_cache(self, batch_size: int) -> dict:
        return {"batch_size": batch_size, "owner": id(self)}


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def test_rmsnorm_formula_and_dtype():
    torch.manual_seed(0)
    norm = RMSNorm(DIM, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 5, DIM)
    torch.testing.assert_close(norm(x), rms(x, norm.weight))
    assert norm(x.bfloat16()).dtype == torch.bfloat16
    assert [n for n, _ in norm.named_parameters()] == ["weight"]
    with pytest.raises(ValueError, match="last dimension 8"):
        norm(torch.randn(2, 5, DIM + 1))
    with pytest.raises(ValueError, match="dim"):
        RMSNorm(0)


def test_make_norm():
    assert isinstance(make_norm("rms", DIM), RMSNorm)
    layer = make_norm("layer", DIM, eps=1e-6)
    assert isinstance(layer, nn.LayerNorm) and layer.eps == 1e-6
    with pytest.raises(ValueError, match="'batch'"):
        make_norm("batch", DIM)


def test_drop_path():
    torch.manual_seed(0)
    x = torch.randn(64, 3, DIM) + 3.0
    drop = DropPath(0.5)
    assert drop.eval()(x) is x
    assert DropPath(0.0).train()(x) is x
    y = drop.train()(x)
    dropped = (y == 0).flatten(1).all(1)
    kept = torch.isclose(y, 2.0 * x).flatten(1).all(1)
    assert bool((dropped | kept).all()), "each sample must be dropped whole or scaled by 1 / (1 - p)"
    assert 0 < int(dropped.sum()) < 64
    for bad in (1.0, -0.1, "0.1"):
        with pytest.raises(ValueError, match="p must be"):
            DropPath(bad)


def test_mlps():
    torch.manual_seed(0)
    x = torch.randn(2, 5, DIM)
    mlp = Mlp(DIM, hidden_dim=12, act="relu")
    torch.testing.assert_close(mlp(x), mlp.fc2(torch.relu(mlp.fc1(x))))
    gated = GatedMlp(16)
    assert gated.fc1.out_features == 2 * 128 and gated.fc2.in_features == 128  # int(16 * 8 / 3) = 42 -> 128
    gated = GatedMlp(DIM, hidden_dim=6, out_dim=4)
    value, gate = gated.fc1(x).chunk(2, dim=-1)
    torch.testing.assert_close(gated(x), gated.fc2(value * torch.sigmoid(gate) * gate))
    with pytest.raises(ValueError, match="act"):
        Mlp(DIM, act="swish7")
    with pytest.raises(ValueError, match="hidden_dim"):
        GatedMlp(DIM, hidden_dim=0)


def test_block_prenorm_add_norm_mixer():
    torch.manual_seed(0)
    block = Block(DIM, ToyMixer())
    x, prev = torch.randn(2, 5, DIM), torch.randn(2, 5, DIM)
    hidden, residual = block(x)
    torch.testing.assert_close(residual, x)
    torch.testing.assert_close(hidden, block.mixer(rms(x, block.norm.weight)))
    hidden, residual = block(x, prev)
    torch.testing.assert_close(residual, prev + x)
    torch.testing.assert_close(hidden, block.mixer(rms(prev + x, block.norm.weight)))


def test_block_prenorm_with_mlp():
    torch.manual_seed(0)
    block = Block(DIM, ToyMixer(), mlp=Mlp(DIM, hidden_dim=16), norm="layer")
    x, prev = torch.randn(2, 5, DIM), torch.randn(2, 5, DIM)
    hidden, residual = block(x, prev)
    mid = prev + x
    after_mixer = mid + block.mixer(block.norm(mid))
    torch.testing.assert_close(residual, after_mixer)
    torch.testing.assert_close(hidden, block.mlp(block.norm2(after_mixer)))


def test_block_postnorm():
    torch.manual_seed(0)
    block = Block(DIM, ToyMixer(), mlp=Mlp(DIM), norm="layer", prenorm_residual=False)
    x = torch.randn(2, 5, DIM)
    hidden, residual = block(x)
    assert residual is None
    y = block.norm(x + block.mixer(x))
    torch.testing.assert_close(hidden, block.norm2(y + block.mlp(y)))


@pytest.mark.parametrize("prenorm", [True, False])
def test_residual_in_fp32(prenorm):
    torch.manual_seed(0)
    x = torch.randn(2, 5, DIM, dtype=torch.bfloat16)
    fp32 = Block(DIM, ToyMixer(), residual_in_fp32=True, prenorm_residual=prenorm).bfloat16()
    hidden, residual = fp32(*fp32(x))
    assert hidden.dtype == torch.bfloat16
    if prenorm:
        assert residual.dtype == torch.float32
        _, plain_residual = Block(DIM, ToyMixer(), prenorm_residual=prenorm).bfloat16()(x)
        assert plain_residual.dtype == torch.bfloat16
    backbone = Backbone(DIM, 2, lambda i: ToyMixer(), residual_in_fp32=True, prenorm_residual=prenorm).bfloat16()
    assert backbone(x).dtype == torch.bfloat16


def test_block_passes_kwargs_and_validates():
    block = Block(DIM, ToyMixer())
    lengths = torch.tensor([5, 3])
    block(torch.randn(2, 5, DIM), lengths=lengths, grid=(5,))
    assert block.mixer.kwargs[-1]["grid"] == (5,) and block.mixer.kwargs[-1]["lengths"] is lengths
    with pytest.raises(ValueError, match=r"\[B, L, 8\].*\(2, 5, 9\)"):
        block(torch.randn(2, 5, DIM + 1))
    with pytest.raises(ValueError, match="residual shape"):
        block(torch.randn(2, 5, DIM), torch.randn(2, 4, DIM))
    with pytest.raises(TypeError, match="mixer must be an nn.Module"):
        Block(DIM, lambda x: x)
    with pytest.raises(ValueError, match="norm"):
        Block(DIM, ToyMixer(), norm="group")


def test_backbone_equals_manual_stack():
    torch.manual_seed(0)
    backbone = Backbone(DIM, 3, lambda i: ToyMixer())
    x = torch.randn(2, 5, DIM)
    hidden, residual = x, None
    for layer in backbone.layers:
        hidden, residual = layer(hidden, residual)
    torch.testing.assert_close(backbone(x), rms(residual + hidden, backbone.norm_f.weight))
    keys = [f"layers.{i}.{k}" for i in range(3) for k in ("norm.weight", "mixer.proj.weight", "mixer.proj.bias")]
    assert sorted(backbone.state_dict()) == sorted(keys + ["norm_f.weight"])  # the mamba_ssm / Vim key layout
    post = Backbone(DIM, 2, lambda i: ToyMixer(), norm="layer", prenorm_residual=False, final_norm=False)
    h0, _ = post.layers[0](x)
    h1, _ = post.layers[1](h0)
    torch.testing.assert_close(post(x), h1)
    with pytest.raises(ValueError, match="depth"):
        Backbone(DIM, 0, lambda i: ToyMixer())
    with pytest.raises(TypeError, match="mixer_factory"):
        Backbone(DIM, 2, "mamba")

    class WidthMixer(nn.Module):
        def __init__(self, d_model: int) -> None:
            super().__init__()
            self.d_model = d_model

    with pytest.raises(ValueError, match="d_model=0, expected dim=8"):
        Backbone(DIM, 2, WidthMixer)  # the factory gets the layer index, not the width
    with pytest.raises(ValueError, match=r"\[B, L, 8\]"):
        backbone(torch.randn(2, 5))


def test_backbone_factory_gets_layer_index_and_drop_path_schedule():
    seen = []
    backbone = Backbone(DIM, 3, lambda i: seen.append(i) or ToyMixer(), drop_path=0.2)
    assert seen == [0, 1, 2]
    rates = [layer.drop_path.p for layer in backbone.layers] + [backbone.drop_path.p]
    assert rates == pytest.approx([0.0, 0.0, 0.1, 0.2])  # layer j's output is dropped with linspace(0, 0.2, 3)[j]
    post = Backbone(DIM, 3, lambda i: ToyMixer(), drop_path=0.2, prenorm_residual=False)
    assert [layer.drop_path.p for layer in post.layers] == pytest.approx([0.0, 0.1, 0.2])


@pytest.mark.parametrize("prenorm", [True, False])
def test_grad_checkpointing_same_gradients(prenorm):
    torch.manual_seed(0)
    backbone = Backbone(DIM, 3, lambda i: ToyMixer(), mlp_factory=lambda i: Mlp(DIM, 16), drop_path=0.3,
                        prenorm_residual=prenorm)
    x = torch.randn(4, 6, DIM, requires_grad=True)

    def grads(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor], int]:
        backbone.zero_grad()
        x.grad = None
        backbone.set_grad_checkpointing(checkpointing)
        calls = sum(layer.mixer.calls for layer in backbone.layers)
        torch.manual_seed(123)
        out = backbone(x)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        calls = sum(layer.mixer.calls for layer in backbone.layers) - calls
        return out.detach(), [x.grad.clone()] + [p.grad.clone() for p in backbone.parameters()], calls

    out_plain, grads_plain, calls_plain = grads(False)
    out_ckpt, grads_ckpt, calls_ckpt = grads(True)
    assert calls_plain == 3 and calls_ckpt == 6, "checkpointing must recompute each block once in backward"
    torch.testing.assert_close(out_ckpt, out_plain, rtol=0, atol=0)
    for g_ckpt, g_plain in zip(grads_ckpt, grads_plain):
        torch.testing.assert_close(g_ckpt, g_plain, rtol=0, atol=0)


def test_backbone_cache_per_layer():
    backbone = Backbone(DIM, 2, lambda i: ToyMixer())
    cache = backbone.allocate_cache(3)
    assert [c["owner"] for c in cache] == [id(layer.mixer) for layer in backbone.layers]
    backbone(torch.randn(3, 1, DIM), cache=cache)
    assert [layer.mixer.kwargs[-1]["cache"] for layer in backbone.layers] == cache
    with pytest.raises(ValueError, match="one entry per layer"):
        backbone(torch.randn(3, 1, DIM), cache=cache[:1])
    plain = Backbone(DIM, 1, lambda i: nn.Identity())
    with pytest.raises(TypeError, match="Identity.*allocate_cache"):
        plain.allocate_cache(3)
