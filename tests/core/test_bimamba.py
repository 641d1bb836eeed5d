"""BiMamba (Vim bimamba v2): official key layout and init, parity with an independent reference of Vim's forward
that literally flips the sequence, ``lengths`` in both directions, the anti-causal convolution and input errors.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.core.conv import anticausal_conv1d, causal_conv1d
from ssmkit.core.mixers import BiMamba
from tests.core.test_mamba import (
    BACKEND,
    D_MODEL,
    D_STATE,
    TOL,
    assert_close,
    official_mamba_shapes,
    random_state_dict,
    ref_direction,
    ref_in_proj,
    ref_out_proj,
)


def official_vim_v2_shapes(d_model: int, d_state: int, d_conv: int, expand: int, dt_rank: int,
                           bias: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of Vim's ``Mamba(bimamba_type="v2")`` state_dict."""
    shapes = official_mamba_shapes(d_model, d_state, d_conv, expand, dt_rank, bias)
    d_inner = expand * d_model
    shapes.update({
        "A_b_log": (d_inner, d_state),
        "conv1d_b.weight": (d_inner, 1, d_conv),
        "conv1d_b.bias": (d_inner,),
        "x_proj_b.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj_b.weight": (d_inner, dt_rank),
        "dt_proj_b.bias": (d_inner,),
        "D_b": (d_inner,),
    })
    return shapes


def ref_vim_v2(sd, hidden, if_divide_out):
    """Vim v2 forward: the backward branch runs on the flipped xz and its output is flipped back."""
    xz = ref_in_proj(sd, hidden)  # (b, 2e, l)
    out = ref_direction(xz, sd["conv1d.weight"], sd["conv1d.bias"], sd["x_proj.weight"], sd["dt_proj.weight"],
                        sd["dt_proj.bias"], sd["A_log"], sd["D"])
    out_b = ref_direction(xz.flip([-1]), sd["conv1d_b.weight"], sd["conv1d_b.bias"], sd["x_proj_b.weight"],
                          sd["dt_proj_b.weight"], sd["dt_proj_b.bias"], sd["A_b_log"], sd["D_b"])
    y = out + out_b.flip([-1])
    return ref_out_proj(sd, y / 2 if if_divide_out else y)


def make_bimamba(seed: int = 0, bias: bool = False, d_conv: int = 4, if_divide_out: bool = True):
    """A BiMamba holding a random Vim-layout state_dict (loaded strictly), and that dict."""
    sd = random_state_dict(official_vim_v2_shapes(D_MODEL, D_STATE, d_conv, 2, 2, bias), seed)
    model = BiMamba(D_MODEL, d_state=D_STATE, d_conv=d_conv, dt_rank=2, bias=bias, if_divide_out=if_divide_out,
                    backend=BACKEND)
    model.load_state_dict(sd, strict=True)
    return model, sd


@pytest.mark.parametrize("bias", [False, True])
def test_state_dict_names_and_shapes_are_vim_v2(bias):
    model = BiMamba(D_MODEL, d_state=D_STATE, d_conv=3, dt_rank=3, bias=bias, backend=BACKEND)
    found = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert found == official_vim_v2_shapes(D_MODEL, D_STATE, 3, 2, 3, bias)


@pytest.mark.parametrize(("if_divide_out", "bias", "d_conv"), [(True, False, 4), (False, True, 3)])
def test_forward_matches_vim_reference(if_divide_out, bias, d_conv):
    model, sd = make_bimamba(seed=11, bias=bias, d_conv=d_conv, if_divide_out=if_divide_out)
    x = torch.randn(2, 9, D_MODEL, generator=torch.Generator().manual_seed(12))
    assert_close("BiMamba vs Vim v2 reference", ref_vim_v2(sd, x, if_divide_out), model(x), TOL)


def test_vim_init():
    torch.manual_seed(0)
    model = BiMamba(D_MODEL, d_state=D_STATE, dt_rank=4, backend=BACKEND)  # E = 32
    expected_a_log = torch.log(torch.arange(1, D_STATE + 1, dtype=torch.float32)).expand(32, -1)
    for name in ("A_log", "A_b_log"):
        assert torch.equal(getattr(model, name).detach(), expected_a_log), name
        assert getattr(model, name)._no_weight_decay is True
    for name in ("D", "D_b"):
        assert torch.equal(getattr(model, name).detach(), torch.ones(32)), name
        assert getattr(model, name)._no_weight_decay is True
    dt = F.softplus(model.dt_proj.bias.detach())  # forward direction: mamba_ssm's dt init
    assert float(dt.min()) >= 1e-3 * (1 - 1e-4) and float(dt.max()) <= 1e-1 * (1 + 1e-4)
    assert model.dt_proj.bias._no_reinit is True
    # Vim gives the backward dt_proj_b PyTorch's default Linear init (|w|, |b| <= in_features^-0.5 = 0.5).
    assert float(model.dt_proj_b.bias.detach().abs().max()) <= 0.5
    assert float(model.dt_proj_b.weight.detach().abs().max()) <= 0.5
    assert not hasattr(model.dt_proj_b.bias, "_no_reinit")


def test_gradients_reach_both_directions():
    model, _ = make_bimamba(seed=13, bias=True)
    model(torch.randn(2, 6, D_MODEL)).pow(2).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert float(param.grad.abs().max()) > 0, name


def test_every_output_sees_both_sides():
    model, _ = make_bimamba(seed=14)
    x = torch.randn(1, 8, D_MODEL)
    x_last, x_first = x.clone(), x.clone()
    x_last[:, -1] += 1.0
    x_first[:, 0] += 1.0
    assert not torch.allclose(model(x)[:, 0], model(x_last)[:, 0])
    assert not torch.allclose(model(x)[:, -1], model(x_first)[:, -1])


@pytest.mark.parametrize("if_divide_out", [True, False])
def test_lengths_equal_truncation_in_both_directions(if_divide_out):
    model, _ = make_bimamba(seed=15, bias=True, if_divide_out=if_divide_out)
    x = torch.randn(3, 10, D_MODEL)
    lengths = torch.tensor([10, 6, 1])
    out = model(x, lengths=lengths)
    garbage = x.clone()
    for b, n in enumerate(lengths.tolist()):
        garbage[b, n:] = 1e3 * torch.randn(10 - n, D_MODEL)
        assert_close(f"row {b}", model(x[b : b + 1, :n])[0], out[b, :n], TOL)
        assert torch.equal(out[b, n:], torch.zeros_like(out[b, n:]))
    assert torch.equal(model(garbage, lengths=lengths), out)


def test_anticausal_conv_is_the_flipped_causal_conv():
    gen = torch.Generator().manual_seed(16)
    x = torch.randn(2, 7, 5, generator=gen)  # [B, L, D]
    weight, bias = torch.randn(5, 1, 4, generator=gen), torch.randn(5, generator=gen)
    flipped = F.conv1d(x.flip(1).transpose(1, 2), weight, bias, padding=3, groups=5)[..., :7]  # [B, D, L]
    assert_close("anti-causal conv", flipped.flip(-1).transpose(1, 2), anticausal_conv1d(x, weight, bias), 1e-6)
    assert_close("via causal_conv1d", causal_conv1d(x.flip(1), weight[:, 0], bias).flip(1),
                 anticausal_conv1d(x, weight[:, 0], bias), 1e-6)
    lengths = torch.tensor([7, 3])
    y = anticausal_conv1d(x, weight, bias, lengths=lengths)
    assert_close("row cut to its length", anticausal_conv1d(x[1:, :3], weight, bias)[0], y[1, :3], 1e-6)


def test_bad_input_raises():
    model = BiMamba(D_MODEL, d_state=D_STATE, backend=BACKEND)
    with pytest.raises(ValueError, match=r"x must have shape \[B, L, 16\].*found \[1, 2, 5, 16\]"):
        model(torch.randn(1, 2, 5, D_MODEL))
    with pytest.raises(ValueError, match=r"x must have shape \[B, L, 16\].*found \[2, 5, 12\]"):
        model(torch.randn(2, 5, 12))
    with pytest.raises(ValueError, match="cache must be None"):
        model(torch.randn(2, 5, D_MODEL), cache=object())
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\]"):
        model(torch.randn(2, 5, D_MODEL), lengths=torch.tensor([5, 9]))
    with pytest.raises(ValueError, match="expand must be a number"):
        BiMamba(D_MODEL, expand=0)
