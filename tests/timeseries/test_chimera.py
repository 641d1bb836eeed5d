"""Chimera: its 2-D SSM mixer equals the equations of the module docstring, written here as a plain per-cell loop
(no official code exists), plus decomposition, directionality, configs and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from ssmkit.timeseries.models.chimera import Chimera, Chimera2DSSM, ClosedLoopDecoder, chimera
from tests.kernels.scan_testing import assert_close

ROOT = Path(__file__).resolve().parents[2]


def reference_mixer(m: Chimera2DSSM, u: torch.Tensor) -> torch.Tensor:
    """The docstring's equations, one grid cell at a time, in float64 (forward + backward variate scans, summed)."""
    p = {k: v.detach().double() for k, v in m.state_dict().items()}
    u = u.double()
    n, r, E = m.d_state, m.dt_rank, m.dim
    xz = u @ p["in_proj.weight"].T
    x, z = F.silu(xz[..., :E]), xz[..., E:]  # [B, T, V, E]
    proj = x @ p["x_proj.weight"].T
    dt1 = F.softplus(proj[..., :r] @ p["dt1_proj.weight"].T + p["dt1_proj.bias"])  # [B, T, V, E]
    dt2 = F.softplus(proj[..., r:2 * r] @ p["dt2_proj.weight"].T + p["dt2_proj.bias"])
    B1, B2, C1, C2 = proj[..., 2 * r:].split(n, dim=-1)  # [B, T, V, N] each
    A1, A4 = -torch.exp(p["A1_log"]), -torch.exp(p["A4_log"])  # [E, N]
    r2, r3 = torch.sigmoid(p["coupling"])  # [E, N]
    batch, T, V, _ = u.shape
    y = p["D"] * x  # [B, T, V, E]
    for order in (list(range(V)), list(range(V - 1, -1, -1))):
        h1 = torch.zeros(batch, T, V, E, n, dtype=torch.float64)
        h2 = torch.zeros_like(h1)
        for t in range(T):
            for i, v in enumerate(order):
                a1 = torch.exp(dt1[:, t, v, :, None] * A1)  # [B, E, N]
                a4 = torch.exp(dt2[:, t, v, :, None] * A4)
                a2, a3 = (1 - a1) * r2, (1 - a4) * r3
                up1 = h1[:, t - 1, v] if t > 0 else 0.0
                up2 = h2[:, t - 1, v] if t > 0 else 0.0
                left1 = h1[:, t, order[i - 1]] if i > 0 else 0.0
                left2 = h2[:, t, order[i - 1]] if i > 0 else 0.0
                xin = x[:, t, v, :, None]  # [B, E, 1]
                h1[:, t, v] = a1 * up1 + a2 * up2 + dt1[:, t, v, :, None] * B1[:, t, v, None, :] * xin
                h2[:, t, v] = a3 * left1 + a4 * left2 + dt2[:, t, v, :, None] * B2[:, t, v, None, :] * xin
        y = y + (h1 * C1[..., None, :]).sum(-1) + (h2 * C2[..., None, :]).sum(-1)
    return (y * F.silu(z)) @ p["out_proj.weight"].T


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_mixer_matches_the_docstring_equations(backend):
    torch.manual_seed(0)
    mixer = Chimera2DSSM(8, d_state=3, dt_rank=2, trend_dt=(1e-3, 1e-2), seasonal_dt=(0.1, 1.0), backend=backend)
    with torch.no_grad():
        mixer.coupling.normal_()  # couplings away from their init value 0.5
    u = torch.randn(2, 5, 4, 8)  # [B, T, V, E]
    assert_close("mixer", reference_mixer(mixer, u), mixer(u), 1e-5)


def reference_closed_loop(dec: ClosedLoopDecoder, u: torch.Tensor) -> torch.Tensor:
    """The docstring's closed loop, one step at a time in float64: encode the lookback, then feed y back."""
    p = {k: v.detach().double() for k, v in dec.state_dict().items()}
    a = torch.exp(-torch.exp(p["dt_log"])[:, None] * torch.exp(p["A_log"]))  # [E, N]
    b = (1 - a) * torch.tanh(p["beta"])  # [E, N]
    k = p["k"] / p["k"].abs().sum(-1, keepdim=True)  # [E, N]
    x = torch.zeros(*u.shape[:2], *a.shape, dtype=torch.float64)  # [B, V, E, N]
    for t in range(u.shape[2]):
        x = a * x + b * u[:, :, t, :, None].double()
    cells = []
    for _ in range(dec.cells):
        cells.append((x * p["c"]).sum(-1))  # [B, V, E]
        fed_back = (x * k).sum(-1, keepdim=True)  # [B, V, E, 1]: the decoder's own next input k^T x
        x = a * x + b * fed_back
    y = torch.stack(cells, dim=2)  # [B, V, cells, E]
    return (y @ p["proj.weight"].T + p["proj.bias"]).flatten(2)[..., : dec.pred_len]  # the last cell cut to S


def test_closed_loop_decoder_matches_the_docstring_equations():
    torch.manual_seed(0)
    dec = ClosedLoopDecoder(6, d_state=3, patch_len=4, pred_len=37)  # 10 cells, the last one cut to 1 step
    u = torch.randn(2, 3, 5, 6)  # [B, V, T, E]
    assert dec.cells == 10
    assert_close("closed loop", reference_closed_loop(dec, u), dec(u), 1e-5)


def test_closed_loop_cannot_grow():
    """Whatever beta and k, every row of diag(a) + b k^T sums to <= 1 in absolute value: spectral radius <= 1."""
    torch.manual_seed(0)
    dec = ClosedLoopDecoder(8, d_state=4, patch_len=8, pred_len=720)
    with torch.no_grad():
        dec.beta.mul_(50.0)
        dec.k.normal_(0.0, 30.0)
    _, _, loop = dec.transition()
    assert loop.abs().sum(-1).max() <= 1 + 1e-6
    assert torch.linalg.eigvals(loop.double()).abs().max() <= 1 + 1e-6


def test_closed_loop_forecast_shape_and_gradients():
    torch.manual_seed(0)
    model = Chimera(seq_len=16, pred_len=10, n_vars=3, patch_len=4, d_model=4, d_state=2, n_layers=1, moving_avg=5,
                    decoder="closed_loop")
    out = model(torch.randn(2, 16, 3))
    assert out.shape == (2, 10, 3)
    out.square().sum().backward()
    for name, param in model.head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"head.{name} gets no gradient"


def test_heads_have_their_own_discretization_ranges():
    torch.manual_seed(0)
    mixer = Chimera2DSSM(16, d_state=2, dt_rank=1, trend_dt=(1e-3, 1e-2), seasonal_dt=(0.1, 1.0))
    dt = F.softplus(mixer.dt1_proj.bias.detach())  # [E]
    assert dt[:8].max() <= 1e-2 + 1e-6 and dt[:8].min() >= 1e-3 - 1e-6, "trend head dt1 outside its range"
    assert dt[8:].max() <= 1.0 + 1e-6 and dt[8:].min() >= 0.1 - 1e-6, "seasonal head dt1 outside its range"


def test_decomposition_and_forecast_shape():
    torch.manual_seed(0)
    model = chimera(seq_len=16, pred_len=8, n_vars=3, patch_len=4, d_model=4, d_state=2, n_layers=1, moving_avg=5)
    x = torch.randn(2, 16, 3)  # [B, L, N]
    trend, seasonal = model.decompose(x)
    torch.testing.assert_close(trend + seasonal, x)
    flat, _ = model.decompose(torch.full((1, 16, 3), 2.5))
    torch.testing.assert_close(flat, torch.full((1, 16, 3), 2.5))  # the moving average keeps a constant
    assert model(x).shape == (2, 8, 3)


def test_every_variate_sees_every_other_variate():
    """Bidirectional over variates: a change in any variate's lookback changes every variate's forecast."""
    torch.manual_seed(0)
    model = Chimera(seq_len=16, pred_len=4, n_vars=3, patch_len=4, d_model=4, d_state=2, n_layers=1,
                    moving_avg=5).eval()
    x = torch.randn(1, 16, 3)
    for v in range(3):
        poked = x.clone()
        poked[0, :, v] += torch.linspace(0, 1, 16)
        diff = (model(poked) - model(x)).abs().amax(dim=1)[0]  # [N]
        assert (diff > 1e-6).all(), f"poking variate {v} left some forecasts unchanged: {diff.tolist()}"


@pytest.mark.parametrize("path", sorted((ROOT / "configs/timeseries/chimera").glob("*.yaml")), ids=lambda p: p.stem)
def test_configs_build_and_forecast(path):
    cfg = yaml.safe_load(path.read_text())
    data = cfg["data"]
    assert cfg["model"]["model_name"] == "chimera" and path.stem.split("_")[1] == str(data["pred_len"])
    model = chimera(seq_len=data["seq_len"], pred_len=data["pred_len"], n_vars=7, **cfg["model"]["model_kwargs"])
    with torch.no_grad():
        assert model(torch.randn(1, data["seq_len"], 7)).shape == (1, data["pred_len"], 7)


def test_bad_input_raises():
    model = Chimera(seq_len=16, pred_len=4, n_vars=3, patch_len=4, d_model=4, d_state=2, n_layers=1, moving_avg=5)
    with pytest.raises(ValueError, match=r"x must have shape \[B, seq_len=16, n_vars=3\], found \[2, 16, 4\]"):
        model(torch.randn(2, 16, 4))
    with pytest.raises(ValueError, match=r"x_mark must have shape \[2, 16, F\], found \[2, 15, 4\]"):
        model(torch.randn(2, 16, 3), torch.randn(2, 15, 4))
    with pytest.raises(ValueError, match=r"patch_len must divide seq_len=16, found 5"):
        Chimera(seq_len=16, patch_len=5)
    with pytest.raises(ValueError, match=r"moving_avg must be an odd window >= 1, found 4"):
        Chimera(seq_len=16, patch_len=4, moving_avg=4)
    with pytest.raises(ValueError, match=r"decoder must be 'linear' or 'closed_loop', found 'mlp'"):
        Chimera(seq_len=16, patch_len=4, moving_avg=5, decoder="mlp")
    with pytest.raises(ValueError, match=r"dim must be even \(two heads\), found 5"):
        Chimera2DSSM(5, 2, 1, (1e-3, 1e-2), (0.1, 1.0))
