"""MultiScanMamba: the one-call K-direction scan equals K separate scans; PlainMamba compat; lengths; errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssmkit.core.mixers.multiscan import MultiScanMamba
from ssmkit.core.scan_order import direction_ids, inverse_order, scan_order
from ssmkit.kernels import selective_scan

BACKEND = "naive"


def _mixer(**kw) -> MultiScanMamba:
    torch.manual_seed(0)
    kw.setdefault("d_state", 4)
    kw.setdefault("d_conv", 3)
    mixer = MultiScanMamba(16, backend=BACKEND, **kw)
    with torch.no_grad():  # non-trivial values everywhere (per-channel A and D, random in_proj bias)
        mixer.D.uniform_(0.5, 1.5)
        mixer.A_log.add_(0.3 * torch.randn_like(mixer.A_log))
        mixer.x_proj.weight.mul_(5.0)  # larger B and C: the scanned state, not D * u, dominates the output
        if mixer.in_proj.bias is not None:
            mixer.in_proj.bias.normal_(0, 0.1)
    return mixer


def _reference(mixer: MultiScanMamba, x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """K separate single-direction scans, each with its own order, un-permuted and combined."""
    batch, seqlen, _ = x.shape
    xs, z = mixer.in_proj(x).chunk(2, dim=-1)  # [B, L, E]
    conv = getattr(mixer, f"conv{len(grid)}d")
    xs = F.silu(conv(xs.transpose(1, 2).reshape(batch, -1, *grid)).reshape(batch, -1, seqlen).transpose(1, 2))
    dt, b_in, c_in = torch.split(mixer.x_proj(xs), [mixer.dt_rank, mixer.d_state, mixer.d_state], dim=-1)
    A = -torch.exp(mixer.A_log.float())
    ys = []
    for name in mixer.orders:
        order = scan_order(name, grid)
        inv = inverse_order(order)
        if mixer.compat_plainmamba:  # PlainMamba: u in scan order, dt/B/C in raster order, dt bias added twice
            delta, b_k, c_k = mixer.dt_proj(dt), b_in, c_in
        else:
            delta, b_k, c_k = F.linear(dt, mixer.dt_proj.weight)[:, order], b_in[:, order], c_in[:, order]
        if mixer.direction_aware:
            b_k = b_k + mixer.direction_Bs[direction_ids(order, grid)]  # offsets follow the scan steps
        y = selective_scan(xs[:, order], delta, A, b_k, c_k, D=mixer.D, delta_bias=mixer.dt_proj.bias,
                           delta_softplus=True, backend=BACKEND)
        ys.append(y[:, inv])
    y = sum(ys) if mixer.combine == "sum" else sum(ys) / len(ys)
    return mixer.out_proj(y * F.silu(z))


@pytest.mark.parametrize(
    ("kw", "grid"),
    [
        (dict(), (3, 4)),
        (dict(direction_aware=True, combine="mean"), (4, 3)),
        (dict(orders=("raster", "transpose_rev", "snake_v"), bias=True), (2, 5)),
        (dict(direction_aware=True, compat_plainmamba=True, bias=True), (3, 3)),
        (dict(grid_ndim=3, orders=("snake_h", "snake_v_rev"), direction_aware=True), (2, 2, 3)),
    ],
)
def test_one_call_equals_separate_scans(kw, grid):
    mixer = _mixer(**kw)
    x = torch.randn(2, int(torch.tensor(grid).prod()), 16)
    out = mixer(x, grid=grid)
    ref = _reference(mixer, x, grid)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def _differ(y1: torch.Tensor, y2: torch.Tensor) -> bool:
    return bool((y1 - y2).abs().max() > 1e-2 * y1.abs().max())


def test_orders_matter_and_direction_offsets_matter():
    x = torch.randn(1, 12, 16)
    steps = dict(dt_min=0.3, dt_max=1.0)  # long enough steps for the scan order to show in the output
    a = _mixer(orders=("snake_h",), **steps)
    b = _mixer(orders=("snake_v",), **steps)
    assert _differ(a(x, grid=(3, 4)), b(x, grid=(3, 4)))
    c = _mixer(orders=("snake_h",), direction_aware=True, **steps)
    with torch.no_grad():
        c.direction_Bs.normal_(0, 1.0)
    assert _differ(a(x, grid=(3, 4)), c(x, grid=(3, 4)))


def test_gradients_are_finite_and_reach_every_parameter():
    mixer = _mixer(direction_aware=True)
    x = torch.randn(2, 9, 16, requires_grad=True)
    mixer(x, grid=(3, 3)).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in mixer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_parameter_names_follow_mamba_ssm_and_plainmamba():
    mixer = MultiScanMamba(32, d_state=16, direction_aware=True, bias=True)
    shapes = {k: tuple(v.shape) for k, v in mixer.state_dict().items()}
    assert shapes["in_proj.weight"] == (128, 32) and shapes["in_proj.bias"] == (128,)
    assert shapes["conv2d.weight"] == (64, 1, 7, 7) and shapes["conv2d.bias"] == (64,)
    assert shapes["x_proj.weight"] == (2 + 32, 64)
    assert shapes["dt_proj.weight"] == (64, 2) and shapes["dt_proj.bias"] == (64,)
    assert shapes["A_log"] == (64, 16) and shapes["D"] == (64,) and shapes["direction_Bs"] == (5, 16)
    assert shapes["out_proj.weight"] == (32, 64) and shapes["out_proj.bias"] == (32,)


def test_one_dimensional_lengths_match_the_unpadded_rows():
    mixer = _mixer(grid_ndim=1, orders=("raster", "raster_rev"), direction_aware=True, combine="mean")
    x = torch.randn(3, 7, 16)
    lengths = torch.tensor([7, 3, 5])
    out = mixer(x, lengths=lengths)
    for row, n in enumerate(lengths.tolist()):
        alone = mixer(x[row:row + 1, :n])  # [1, n, D]
        torch.testing.assert_close(out[row:row + 1, :n], alone, rtol=1e-4, atol=1e-5)
        assert torch.all(out[row, n:] == 0)


def test_sequence_without_grid_on_a_2d_mixer():
    mixer = _mixer()
    x = torch.randn(2, 5, 16)
    assert mixer(x).shape == (2, 5, 16)
    torch.testing.assert_close(mixer(x), mixer(x, grid=(1, 5)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(d_conv=4), "d_conv must be odd"),
        (dict(orders=("spiral",)), "spiral"),
        (dict(orders="snake_h"), "orders"),
        (dict(combine="max"), "combine"),
        (dict(grid_ndim=4), "grid_ndim"),
    ],
)
def test_bad_constructor_arguments(kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        MultiScanMamba(16, **kw)


def test_bad_forward_arguments():
    mixer = _mixer()
    with pytest.raises(ValueError, match=r"prod\(grid\) must equal L=12"):
        mixer(torch.randn(1, 12, 16), grid=(3, 5))
    with pytest.raises(ValueError, match=r"x must have shape \[B, L, 16\]"):
        mixer(torch.randn(1, 12, 8), grid=(3, 4))
    with pytest.raises(ValueError, match="1-D sequences only"):
        mixer(torch.randn(1, 12, 16), grid=(3, 4), lengths=torch.tensor([5]))
    with pytest.raises(ValueError, match="continuous"):
        _mixer(orders=("raster",), direction_aware=True)(torch.randn(1, 12, 16), grid=(3, 4))


def test_all_directions_run_in_one_kernel_call(monkeypatch):
    import ssmkit.core.mixers.multiscan as multiscan

    calls = []

    def counting_scan(u, *args, **kwargs):
        calls.append(tuple(u.shape))
        return selective_scan(u, *args, **kwargs)

    monkeypatch.setattr(multiscan, "selective_scan", counting_scan)
    mixer = _mixer()  # four orders, d_inner 32
    mixer(torch.randn(2, 12, 16), grid=(3, 4))
    assert calls == [(2, 12, 4 * 32)]
