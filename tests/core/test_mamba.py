"""Mamba mixer: official state_dict layout and init, parity with an independent reference of mamba_ssm's forward,
recurrent decoding, ``lengths``, the causal convolution helpers and input errors.

The reference below follows mamba_ssm's ``mamba_inner_ref`` / slow path in its own (B, D, L) layout, reads the
parameters by their official names from a plain dict and scans with a plain loop; it shares no code with ssmkit.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.core.cache import MambaCache
from ssmkit.core.conv import causal_conv1d, causal_conv1d_step
from ssmkit.core.mixers import Mamba
from tests.kernels.scan_testing import assert_close as _assert_close

D_MODEL, D_STATE, BACKEND = 16, 4, "naive"
TOL = 1e-5


def assert_close(name: str, ref: torch.Tensor, out: torch.Tensor, tol: float) -> None:
    """Relative-RMS comparison (``tests.kernels.scan_testing``) of detached tensors."""
    _assert_close(name, ref.detach(), out.detach(), tol)


# ----------------------------------------------------------------------------- independent reference (B, D, L)


def official_mamba_shapes(d_model: int, d_state: int, d_conv: int, expand: int, dt_rank: int,
                          bias: bool) -> dict[str, tuple[int, ...]]:
    """Names and shapes of mamba_ssm's ``Mamba`` state_dict."""
    d_inner = expand * d_model
    shapes = {
        "in_proj.weight": (2 * d_inner, d_model),
        "conv1d.weight": (d_inner, 1, d_conv),
        "conv1d.bias": (d_inner,),
        "x_proj.weight": (dt_rank + 2 * d_state, d_inner),
        "dt_proj.weight": (d_inner, dt_rank),
        "dt_proj.bias": (d_inner,),
        "A_log": (d_inner, d_state),
        "D": (d_inner,),
        "out_proj.weight": (d_model, d_inner),
    }
    if bias:
        shapes.update({"in_proj.bias": (2 * d_inner,), "out_proj.bias": (d_model,)})
    return shapes


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random values of a sensible scale for every entry (A_log, D, dt biases varied away from their init)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        value = torch.randn(shape, generator=gen)
        if name.endswith("A_log") or name.endswith("A_b_log"):
            value = torch.log(torch.rand(shape, generator=gen) * 4 + 0.5)  # A in [-4.5, -0.5]
        elif name in ("D", "D_b"):
            value = 1 + 0.5 * value
        elif name.startswith("dt_proj") and name.endswith("bias"):
            value = 0.5 * value - 2.0  # softplus around 0.13
        elif len(shape) > 1:
            value = value / math.sqrt(shape[-1])  # fan-in of a Linear [out, in] or a depthwise conv [E, 1, W]
        else:
            value = 0.1 * value
        out[name] = value
    return out


def ref_scan(u, delta, A, B, C, D, z, delta_bias):
    """Loop scan in mamba_ssm's layout: u, delta, z (b, d, l); A (d, n); B, C (b, n, l); softplus(delta + bias)."""
    delta = F.softplus(delta + delta_bias[None, :, None])
    dA = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    dBu = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for i in range(u.shape[2]):
        h = dA[:, :, i] * h + dBu[:, :, i]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, i]))
    y = torch.stack(ys, dim=2) + u * D[None, :, None]
    return y * F.silu(z)


def ref_direction(xz, conv_w, conv_b, x_proj_w, dt_proj_w, dt_proj_b, A_log, D):
    """``mamba_inner_ref`` without out_proj: xz (b, 2e, l) -> y (b, e, l)."""
    seqlen = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    x = F.silu(F.conv1d(x, conv_w, conv_b, padding=conv_w.shape[-1] - 1, groups=x.shape[1])[..., :seqlen])
    x_dbl = torch.einsum("rd,bdl->brl", x_proj_w, x)
    dt_rank, d_state = dt_proj_w.shape[1], A_log.shape[1]
    dt, B, C = torch.split(x_dbl, [dt_rank, d_state, d_state], dim=1)
    delta = torch.einsum("dr,brl->bdl", dt_proj_w, dt)
    return ref_scan(x, delta, -torch.exp(A_log), B, C, D, z, dt_proj_b)


def ref_in_proj(sd, hidden):
    """(b, l, d_model) -> xz (b, 2e, l), as mamba_ssm (weight @ x, then bias)."""
    xz = torch.einsum("ed,bld->bel", sd["in_proj.weight"], hidden)
    if "in_proj.bias" in sd:
        xz = xz + sd["in_proj.bias"][None, :, None]
    return xz


def ref_out_proj(sd, y):
    """y (b, e, l) -> (b, l, d_model)."""
    out = torch.einsum("me,bel->blm", sd["out_proj.weight"], y)
    if "out_proj.bias" in sd:
        out = out + sd["out_proj.bias"]
    return out


def ref_mamba(sd, hidden):
    """mamba_ssm ``Mamba`` forward from a state_dict with the official names."""
    y = ref_direction(ref_in_proj(sd, hidden), sd["conv1d.weight"], sd["conv1d.bias"], sd["x_proj.weight"],
                      sd["dt_proj.weight"], sd["dt_proj.bias"], sd["A_log"], sd["D"])
    return ref_out_proj(sd, y)


def make_mamba(seed: int = 0, bias: bool = False, d_conv: int = 4, dt_rank: int = 2) -> tuple[Mamba, dict]:
    """A Mamba holding a random official-layout state_dict (loaded strictly), and that dict."""
    sd = random_state_dict(official_mamba_shapes(D_MODEL, D_STATE, d_conv, 2, dt_rank, bias), seed)
    model = Mamba(D_MODEL, d_state=D_STATE, d_conv=d_conv, dt_rank=dt_rank, bias=bias, backend=BACKEND)
    model.load_state_dict(sd, strict=True)
    return model, sd


# ----------------------------------------------------------------------------- layout, init, parity


@pytest.mark.parametrize("bias", [False, True])
def test_state_dict_names_and_shapes_are_official(bias):
    model = Mamba(D_MODEL, d_state=D_STATE, d_conv=3, dt_rank=3, bias=bias, backend=BACKEND)
    found = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert found == official_mamba_shapes(D_MODEL, D_STATE, 3, 2, 3, bias)


def test_auto_dt_rank_and_d_inner_follow_mamba_ssm():
    model = Mamba(40, d_state=D_STATE, expand=1.5, backend=BACKEND)
    assert (model.d_inner, model.dt_rank) == (60, 3)  # int(1.5 * 40), ceil(40 / 16)
    assert model.x_proj.weight.shape == (3 + 2 * D_STATE, 60)


@pytest.mark.parametrize(("bias", "d_conv"), [(False, 4), (True, 3)])
def test_forward_matches_official_reference(bias, d_conv):
    model, sd = make_mamba(seed=1, bias=bias, d_conv=d_conv)
    x = torch.randn(2, 9, D_MODEL, generator=torch.Generator().manual_seed(2))
    assert_close("Mamba vs mamba_ssm reference", ref_mamba(sd, x), model(x), TOL)


def test_official_init():
    torch.manual_seed(0)
    dt_min, dt_max = 1e-3, 1e-1
    model = Mamba(64, d_state=D_STATE, dt_min=dt_min, dt_max=dt_max, backend=BACKEND)  # E = 128, R = 4
    expected_a_log = torch.log(torch.arange(1, D_STATE + 1, dtype=torch.float32)).expand(128, -1)
    assert torch.equal(model.A_log.detach(), expected_a_log)
    assert torch.equal(model.D.detach(), torch.ones(128))
    dt = F.softplus(model.dt_proj.bias.detach().double())  # the inverse-softplus init gives dt back
    assert float(dt.min()) >= dt_min * (1 - 1e-4) and float(dt.max()) <= dt_max * (1 + 1e-4)
    assert float(dt.min()) < 3 * dt_min and float(dt.max()) > dt_max / 3  # log-uniform: the whole range is used
    assert abs(float(dt.log().mean()) - 0.5 * (math.log(dt_min) + math.log(dt_max))) < 0.5
    bound = model.dt_rank**-0.5
    weight = model.dt_proj.weight.detach()
    assert float(weight.abs().max()) <= bound and float(weight.abs().max()) > 0.8 * bound
    assert model.dt_proj.bias._no_reinit is True
    assert model.A_log._no_weight_decay is True and model.D._no_weight_decay is True


def test_init_options_and_fp32_state_params():
    torch.manual_seed(0)
    model = Mamba(D_MODEL, d_state=D_STATE, dt_init="constant", dt_scale=2.0, dt_min=0.01, dt_max=0.02,
                  dtype=torch.float64, backend=BACKEND)
    assert torch.allclose(model.dt_proj.weight, torch.full_like(model.dt_proj.weight, 2.0 * model.dt_rank**-0.5))
    dt = F.softplus(model.dt_proj.bias.detach())
    assert float(dt.min()) >= 0.01 * (1 - 1e-6) and float(dt.max()) <= 0.02 * (1 + 1e-6)
    assert model.in_proj.weight.dtype == torch.float64 and model.dt_proj.bias.dtype == torch.float64
    assert model.A_log.dtype == torch.float32 and model.D.dtype == torch.float32
    assert model(torch.randn(1, 3, D_MODEL, dtype=torch.float64)).dtype == torch.float64
    # A one-point range pins dt, so softplus(bias) must give it back exactly (the bias is softplus's inverse) ...
    pinned = Mamba(D_MODEL, d_state=D_STATE, dt_min=0.05, dt_max=0.05, backend=BACKEND)
    assert torch.allclose(F.softplus(pinned.dt_proj.bias.detach()), torch.full((32,), 0.05), rtol=1e-5, atol=0)
    # ... and dt_init_floor clamps dt from below.
    floored = Mamba(D_MODEL, d_state=D_STATE, dt_min=1e-6, dt_max=1e-6, dt_init_floor=1e-4, backend=BACKEND)
    assert torch.allclose(F.softplus(floored.dt_proj.bias.detach()), torch.full((32,), 1e-4), rtol=1e-4, atol=0)


def test_gradients_reach_every_parameter():
    model, _ = make_mamba(seed=3, bias=True)
    model(torch.randn(2, 6, D_MODEL)).pow(2).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
        assert float(param.grad.abs().max()) > 0, name


def test_output_is_causal():
    model, _ = make_mamba(seed=4)
    x = torch.randn(1, 8, D_MODEL)
    x2 = x.clone()
    x2[:, 5:] = torch.randn(1, 3, D_MODEL)
    out, out2 = model(x), model(x2)
    assert torch.equal(out[:, :5], out2[:, :5])
    assert not torch.allclose(out[:, 5:], out2[:, 5:])


# ----------------------------------------------------------------------------- lengths


def test_lengths_equal_truncation_and_padding_never_leaks():
    model, _ = make_mamba(seed=5, bias=True)
    x = torch.randn(3, 10, D_MODEL)
    lengths = torch.tensor([10, 4, 1])
    out = model(x, lengths=lengths)
    garbage = x.clone()
    for b, n in enumerate(lengths.tolist()):
        garbage[b, n:] = 1e3 * torch.randn(10 - n, D_MODEL)
        assert_close(f"row {b}", model(x[b : b + 1, :n])[0], out[b, :n], TOL)
        assert torch.equal(out[b, n:], torch.zeros_like(out[b, n:]))
    assert torch.equal(model(garbage, lengths=lengths), out)


# ----------------------------------------------------------------------------- recurrent decoding


def test_allocate_cache_layout():
    model = Mamba(D_MODEL, d_state=D_STATE, dtype=torch.float64, backend=BACKEND)
    cache = model.allocate_cache(3)
    assert isinstance(cache, MambaCache) and cache.batch_size == 3
    assert cache.conv_state.shape == (3, model.d_inner, 4) and cache.conv_state.dtype == torch.float64
    assert cache.ssm_state.shape == (3, model.d_inner, D_STATE) and cache.ssm_state.dtype == torch.float32
    assert model.allocate_cache(2, dtype=torch.float32).conv_state.dtype == torch.float32
    assert float(cache.conv_state.abs().sum()) == 0 and float(cache.ssm_state.abs().sum()) == 0


@pytest.mark.parametrize("chunks", [(1,) * 10, (5, 1, 1, 1, 1, 1), (2, 1, 4, 3), (10,)])
def test_chunked_decoding_equals_full_forward(chunks):
    model, _ = make_mamba(seed=6, bias=True)
    x = torch.randn(2, sum(chunks), D_MODEL)
    full = model(x)
    cache = model.allocate_cache(2)
    outs, start = [], 0
    for size in chunks:
        outs.append(model(x[:, start : start + size], cache=cache))
        start += size
    assert_close(f"decoding in chunks {chunks}", full, torch.cat(outs, dim=1), TOL)
    # The cache now holds the state after the whole sequence: one more token matches a longer full forward.
    nxt = torch.randn(2, 1, D_MODEL)
    assert_close("next token", model(torch.cat([x, nxt], dim=1))[:, -1:], model(nxt, cache=cache), TOL)


def test_prefill_with_lengths_then_steps():
    model, _ = make_mamba(seed=7)
    prompts = torch.randn(3, 6, D_MODEL)
    lengths = torch.tensor([6, 2, 4])
    steps = torch.randn(3, 3, D_MODEL)
    cache = model.allocate_cache(3)
    model(prompts, lengths=lengths, cache=cache)
    decoded = torch.cat([model(steps[:, t : t + 1], cache=cache) for t in range(3)], dim=1)  # [B, 3, D]
    for b, n in enumerate(lengths.tolist()):
        full = model(torch.cat([prompts[b : b + 1, :n], steps[b : b + 1]], dim=1))  # [1, n + 3, D]
        assert_close(f"row {b}", full[0, n:], decoded[b], TOL)


def test_cache_reset_restarts_the_sequence():
    model, _ = make_mamba(seed=8)
    x = torch.randn(1, 4, D_MODEL)
    cache = model.allocate_cache(1)
    first = model(x, cache=cache)
    cache.reset()
    assert torch.equal(model(x, cache=cache), first)


# ----------------------------------------------------------------------------- causal convolution helpers


def test_causal_conv_matches_conv1d_and_steps():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 7, 5, generator=gen)  # [B, L, D]
    weight, bias = torch.randn(5, 1, 3, generator=gen), torch.randn(5, generator=gen)
    expected = F.conv1d(x.transpose(1, 2), weight, bias, padding=2, groups=5)[..., :7].transpose(1, 2)
    y, final = causal_conv1d(x, weight, bias, return_final_state=True)
    assert_close("causal conv", expected, y, 1e-6)
    assert torch.equal(final, x[:, -3:].transpose(1, 2))
    state = torch.zeros(2, 5, 3)
    stepped = torch.stack([causal_conv1d_step(x[:, t], state, weight[:, 0], bias) for t in range(7)], dim=1)
    assert_close("causal conv steps", expected, stepped, 1e-6)
    assert torch.equal(state, final)


def test_causal_conv_state_with_lengths_and_short_chunks():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(2, 6, 3, generator=gen)  # [B, L, D]
    weight = torch.randn(3, 1, 4, generator=gen)
    full = causal_conv1d(x, weight)
    y1, state = causal_conv1d(x[:, :2], weight, return_final_state=True)  # chunk shorter than the kernel
    y2 = causal_conv1d(x[:, 2:], weight, initial_state=state)
    assert_close("chunked causal conv", full, torch.cat([y1, y2], dim=1), 1e-6)
    _, state = causal_conv1d(x, weight, lengths=torch.tensor([6, 3]), return_final_state=True)
    assert torch.equal(state[0], x[0, 2:6].T)
    assert torch.equal(state[1], torch.cat([torch.zeros(3, 1), x[1, :3].T], dim=1))


# ----------------------------------------------------------------------------- errors


def test_bad_x_raises_naming_expected_and_found():
    model = Mamba(D_MODEL, d_state=D_STATE, backend=BACKEND)
    with pytest.raises(ValueError, match=r"x must have shape \[B, L, 16\].*found \[2, 16\]"):
        model(torch.randn(2, D_MODEL))
    with pytest.raises(ValueError, match=r"x must have shape \[B, L, 16\].*found \[2, 5, 8\]"):
        model(torch.randn(2, 5, 8))
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        model(torch.ones(2, 5, D_MODEL, dtype=torch.int64))


def test_bad_lengths_cache_and_arguments_raise():
    model = Mamba(D_MODEL, d_state=D_STATE, backend=BACKEND)
    x = torch.randn(2, 5, D_MODEL)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, 5\].*found values in \[0, 6\]"):
        model(x, lengths=torch.tensor([6, 0]))
    with pytest.raises(ValueError, match=r"lengths must have shape \[2\]"):
        model(x, lengths=torch.tensor([5]))
    with pytest.raises(ValueError, match=r"cache.conv_state must have shape \[2, 32, 4\].*found \[3, 32, 4\]"):
        model(x, cache=model.allocate_cache(3))
    with pytest.raises(TypeError, match="cache must be a MambaCache"):
        model(x, cache=(torch.zeros(2, 32, 4), torch.zeros(2, 32, 4)))
    with pytest.raises(ValueError, match="dt_init must be 'random' or 'constant', found 'normal'"):
        Mamba(D_MODEL, dt_init="normal")
    with pytest.raises(ValueError, match="backend must be one of"):
        Mamba(D_MODEL, backend="gpu")
    with pytest.raises(ValueError, match="d_state must be a positive int, found 0"):
        Mamba(D_MODEL, d_state=0)


def test_reverse_mixer_equals_flip_run_flip():
    """Mamba(reverse=True) == the same weights on the flipped sequence, flipped back (S-Mamba's backward block)."""
    torch.manual_seed(0)
    forward_mixer = Mamba(16, d_state=4, d_conv=3, backend="naive")
    reverse_mixer = Mamba(16, d_state=4, d_conv=3, backend="naive", reverse=True)
    reverse_mixer.load_state_dict(forward_mixer.state_dict())
    x = torch.randn(2, 9, 16)
    expected = forward_mixer(x.flip(1)).flip(1)
    _assert_close("reverse", expected, reverse_mixer(x), 1e-5)
    lengths = torch.tensor([9, 5])
    out = reverse_mixer(x, lengths=lengths)
    _assert_close("reverse lengths", forward_mixer(x[1:, :5].flip(1)).flip(1)[0], out[1, :5], 1e-5)
    assert torch.all(out[1, 5:] == 0)
    with pytest.raises(ValueError, match="reverse .* cannot decode"):
        reverse_mixer(x[:, :1], cache=reverse_mixer.allocate_cache(2))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_fused_cpu_path_equals_composed_path(monkeypatch, reverse, with_lengths):
    """Float32 CPU training runs ``kernels.mamba_inner_cpu`` (less memory for the backward); the output equals the
    composed path (in_proj, conv, x_proj, dt_proj, scan, out_proj) bit for bit, the gradients up to rounding."""
    torch.manual_seed(0)
    mixer = Mamba(16, d_state=4, bias=True, reverse=reverse, backend="cpu")
    x = torch.randn(3, 13, 16, requires_grad=True)
    lengths = torch.tensor([13, 7, 2]) if with_lengths else None
    gout = torch.randn(3, 13, 16)
    assert mixer._fused_cpu(x)

    def run():
        out = mixer(x, lengths=lengths)
        return out, torch.autograd.grad(out, [x, *mixer.parameters()], gout)

    fused, fused_grads = run()
    monkeypatch.setattr(Mamba, "_fused_cpu", lambda self, x: False)
    composed, composed_grads = run()
    assert torch.equal(fused, composed)
    for got, ref in zip(fused_grads, composed_grads):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_fused_cpu_path_under_bf16_autocast_matches_the_composed_path(monkeypatch, input_dtype):
    """Under CPU autocast to bfloat16 the fused path multiplies in_proj / out_proj in bfloat16 (as autocast runs
    F.linear) and stays float32 elsewhere: output and gradients agree with the composed path under the same autocast
    to bfloat16 accuracy (relative RMS <= 1e-2), the output in bfloat16 as autocast's F.linear gives it, the input
    gradient in the input's dtype."""
    torch.manual_seed(0)
    mixer = Mamba(32, d_state=4, bias=True, backend="cpu")
    x = torch.randn(4, 21, 32).to(input_dtype).requires_grad_(True)
    gout = torch.randn(4, 21, 32)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = mixer(x)
        return out, torch.autograd.grad(out, [x, *mixer.parameters()], gout.to(out.dtype))

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mixer._fused_cpu(x)
    fused, fused_grads = run()
    assert fused_grads[0].dtype == input_dtype
    assert all(g.dtype == torch.float32 for g in fused_grads[1:])
    monkeypatch.setattr(Mamba, "_fused_cpu", lambda self, x: False)
    composed, composed_grads = run()
    assert fused.dtype == composed.dtype == torch.bfloat16  # out_proj's output dtype under autocast

    def rel_rms(got, ref):
        got, ref = got.detach().double(), ref.detach().double()
        return float((got - ref).square().mean().sqrt() / ref.square().mean().sqrt().clamp_min(1e-12))

    assert rel_rms(fused, composed) <= 1e-2
    names = ["x", *(name for name, _ in mixer.named_parameters())]
    for name, got, ref in zip(names, fused_grads, composed_grads):
        assert rel_rms(got, ref) <= 1e-2, name


def test_fused_cpu_path_only_serves_float32_cpu_scan_backend():
    mixer = Mamba(8, d_state=4, backend="cpu")
    x = torch.randn(1, 3, 8)
    assert mixer._fused_cpu(x)
    assert not Mamba(8, d_state=4, backend="torch")._fused_cpu(x)
    assert not mixer._fused_cpu(x.double())
    assert not Mamba(8, d_state=4, backend="cpu").double()._fused_cpu(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mixer._fused_cpu(x) and mixer._fused_cpu(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.float16):
        assert not mixer._fused_cpu(x)
