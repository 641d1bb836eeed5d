"""SpaceTime: the fast FFT kernel vs repeated squaring and explicit powers, the fixed pre-processing kernels, an
official state_dict against an independent re-implementation of the official forward (explicit recurrences, official
keys), the three-term loss, SpaceTime's optimizer recipe and the configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import ssmkit
from ssmkit.timeseries.models.spacetime import (
    Preprocess,
    SpaceTime,
    companion_c_tilde,
    companion_kernel,
    companion_kernel_fft,
    companion_kernel_squaring,
    companion_matrix,
    krylov,
)
from ssmkit.timeseries.module import Forecaster

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "timeseries" / "spacetime"
CFG = dict(seq_len=12, pred_len=6, n_vars=2, model_dim=8, kernel_dim=4, first_kernels=2, n_kernels=4, n_blocks=2,
           pre_kernels=4, diff_orders=2, ma_windows=(2, 10))


def explicit_kernel(length, a, b, c):
    """k_j = c^T A^j b with A^j from torch.linalg.matrix_power."""
    A = companion_matrix(a)
    return torch.stack([torch.einsum("hd,hde,he->h", c, torch.linalg.matrix_power(A, j), b) for j in range(length)],
                       dim=-1)


@pytest.mark.parametrize("d,length", [(4, 16), (7, 12), (16, 5), (25, 9), (64, 96)])
def test_fft_kernel_matches_squaring_and_explicit_powers(d, length):
    g = torch.Generator().manual_seed(d * 1000 + length)
    a = torch.randn(3, d, generator=g, dtype=torch.float64)
    a = 0.95 * a / a.abs().sum(-1, keepdim=True)  # ||a||_1 < 1: no eigenvalue on the unit circle
    b, c = (torch.randn(3, d, generator=g, dtype=torch.float64) for _ in range(2))
    expected = explicit_kernel(length, a, b, c)  # [3, L]
    squaring = companion_kernel_squaring(length, a, b, c)
    fast = companion_kernel_fft(length, a, b, companion_c_tilde(length, a, c))

    def rel(x):
        return ((x - expected).norm() / expected.norm()).item()

    assert rel(squaring) < 1e-12, rel(squaring)
    assert rel(fast) < 1e-10, rel(fast)  # measured ~1e-15 in float64 (d > L folds the correlation modulo L)


@pytest.mark.parametrize("d,length", [(4, 12), (5, 12), (64, 96)])
def test_fft_kernel_on_l1_normalised_a_with_an_eigenvalue_at_one(d, length):
    """An L1-normalised ``a`` with entries of one sign has the eigenvalue 1 (a root of unity): the model's FFT path
    evaluates on a circle of radius 2^(-1/L) and still matches."""
    g = torch.Generator().manual_seed(d)
    a = torch.randn(3, d, generator=g, dtype=torch.float64)
    a[0] = a[0].abs()
    a = a / a.abs().sum(-1, keepdim=True)
    assert torch.linalg.eigvals(companion_matrix(a[0])).abs().max() == pytest.approx(1.0)
    b, c = (torch.randn(3, d, generator=g, dtype=torch.float64) for _ in range(2))
    expected = explicit_kernel(length, a, b, c)
    for method in ("fft", "squaring"):
        got = companion_kernel(length, a, b, c, method)
        assert ((got - expected).norm() / expected.norm()).item() < 1e-10, method


def test_krylov_is_the_sequence_of_powers():
    g = torch.Generator().manual_seed(0)
    A, b = torch.randn(2, 5, 5, generator=g, dtype=torch.float64) / 3, torch.randn(2, 5, generator=g,
                                                                                    dtype=torch.float64)
    for length in (1, 2, 7, 8, 9):
        expected = torch.stack([torch.linalg.matrix_power(A, j) @ b[..., None] for j in range(length)], -1)[..., 0, :]
        torch.testing.assert_close(krylov(length, A, b), expected, rtol=1e-12, atol=1e-12)


def test_preprocess_differencing_and_moving_average_residuals():
    torch.manual_seed(0)
    pre = Preprocess(model_dim=16, n_kernels=8, diff_orders=4, min_window=2, max_window=6).double()
    kernel = pre.kernel()  # [16, 6]
    assert kernel.shape == (16, 6)
    torch.testing.assert_close(kernel[:4, :4], torch.tensor([[1.0, 0, 0, 0], [1, -1, 0, 0], [1, -2, 1, 0],
                                                             [1, -3, 3, -1]], dtype=torch.float64))
    torch.testing.assert_close(kernel[8:12], kernel[:4])  # the second repeat starts with the same differences
    u = torch.randn(2, 20, 1, dtype=torch.float64)
    y = pre(u)  # [2, 20, 16]
    diffs = torch.diff(u[..., 0], n=3, dim=1)  # third difference u_t - 3 u_{t-1} + 3 u_{t-2} - u_{t-3}
    torch.testing.assert_close(y[:, 3:, 3], diffs)
    for channel in (4, 5, 6, 7, 12, 15):  # moving-average residuals u_t - mean(u_{t-w+1..t}), zeros before t = 0
        w = int(round(1 / (1 - kernel[channel, 0].item())))
        assert 2 <= w < 6 and torch.allclose(kernel[channel, :w], torch.full((w,), -1.0 / w, dtype=torch.float64)
                                             + torch.eye(1, w, dtype=torch.float64)[0])
        padded = F.pad(u[..., 0], (w - 1, 0))
        expected = u[..., 0] - torch.stack([padded[:, t:t + w].sum(1) / w for t in range(20)], 1)
        torch.testing.assert_close(y[..., channel], expected)


# ---------------------------------------------------------------------------------------------------------------
# Official layout and an independent re-implementation of the official forward (explicit state recurrences)
# ---------------------------------------------------------------------------------------------------------------


def official_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Keys and shapes of HazyResearch/spacetime's ``SpaceTime.state_dict()`` for CFG (float64)."""
    g = torch.Generator().manual_seed(seed)
    D, d = CFG["model_dim"], CFG["kernel_dim"]

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    windows = torch.randint(2, 10, (4,), generator=g)  # (pre_kernels 4 - 2 diff orders) x 2 repeats
    ma = torch.zeros(4, 10, dtype=torch.float64)
    ma[:, 0] = 1
    for i, w in enumerate(windows):
        ma[i, :w] -= 1.0 / w
    diff = torch.tensor([[1.0, 0], [1, -1]], dtype=torch.float64).repeat(2, 1)
    sd = {"encoder.blocks.0.pre.diff_kernel": diff, "encoder.blocks.0.pre.ma_r_kernel": ma}
    for i, n_kernels in enumerate((CFG["first_kernels"], CFG["n_kernels"])):
        p = f"encoder.blocks.{i}."
        sd.update({p + "ssm.a": rnd(n_kernels, d), p + "ssm.b": rnd(n_kernels, d), p + "ssm.c": rnd(n_kernels, d),
                   p + "mlp.layers.1.weight": rnd(D, D) / math.sqrt(D), p + "mlp.layers.1.bias": rnd(D) / 10})
    sd["encoder.blocks.0.ssm.skip"] = rnd(D)
    sd.update({f"decoder.blocks.ssm.{k}": rnd(D, d) for k in ("a", "b", "c", "k")})
    sd["decoder.blocks.ssm.skip"] = torch.ones(D, dtype=torch.float64)  # built by the official base class, unused
    sd.update({"output.layers.1.weight": rnd(1, D) / math.sqrt(D), "output.layers.1.bias": rnd(1)})
    return sd


def norm1(x):
    return x / x.abs().sum(-1, keepdim=True)


def companion(a):
    d = a.shape[-1]
    A = torch.zeros(*a.shape, d, dtype=a.dtype)
    A[..., 1:, :-1] = torch.eye(d - 1, dtype=a.dtype)
    A[..., :, -1] = a
    return A


def run_ssm(A, b, u):
    """States s_t = A s_{t-1} + b u_t (s_{-1} = 0) per channel: A [D, d, d], b [D, d], u [B, L, D] -> [B, L, D, d]."""
    s = torch.zeros(u.shape[0], u.shape[2], A.shape[-1], dtype=u.dtype)
    states = []
    for t in range(u.shape[1]):
        s = torch.einsum("hij,bhj->bhi", A, s) + b * u[:, t, :, None]
        states.append(s)
    return torch.stack(states, 1)


def ref_spacetime(sd, x, mode):
    """The official network (embedding repeat, Block, ClosedLoopBlock, output MLP, mean transform), written from the
    official code's semantics with loops; mode "closed" returns the forecast, "train" all training outputs."""
    D = CFG["model_dim"]
    B, L, N = x.shape
    u = x.permute(0, 2, 1).reshape(B * N, L, 1)
    mean = u.mean(1, keepdim=True)
    z = (u - mean).repeat(1, 1, D)  # repeat embedding
    # block 0: residual pre-processing, each channel convolved with its fixed kernel (causal, zero history)
    diff, ma = sd["encoder.blocks.0.pre.diff_kernel"], sd["encoder.blocks.0.pre.ma_r_kernel"]
    repeats, width = 2, ma.shape[1]
    kernels = []
    for r in range(repeats):
        kernels += [F.pad(diff[r * 2 + i], (0, width - 2)) for i in range(2)] + [ma[r * 2 + i] for i in range(2)]
    pre = torch.stack(kernels)  # [D, width]
    padded = F.pad(z, (0, 0, width - 1, 0))
    z = torch.stack([torch.einsum("bkd,dk->bd", padded[:, t:t + width].flip(1), pre) for t in range(L)], 1)
    for i, n_kernels in enumerate((CFG["first_kernels"], CFG["n_kernels"])):
        p = f"encoder.blocks.{i}.ssm."
        heads = D // n_kernels
        a, b, c = (sd[p + k].repeat_interleave(heads, 0) for k in "abc")  # channel -> kernel c // heads
        y = torch.einsum("blhd,hd->blh", run_ssm(companion(norm1(a)), b, z), c)
        if i == 0:
            y = y + z * sd[p + "skip"]
        w, bias = sd[f"encoder.blocks.{i}.mlp.layers.1.weight"], sd[f"encoder.blocks.{i}.mlp.layers.1.bias"]
        z = (F.gelu(y) @ w.T + bias + y) + z  # MLP with skip, then the block's skip
    p = "decoder.blocks.ssm."
    A = companion(norm1(sd[p + "a"]))
    b_n, c_n, k_n = norm1(sd[p + "b"]), norm1(sd[p + "c"]), norm1(sd[p + "k"])

    def output(h):
        out = F.gelu(h) @ sd["output.layers.1.weight"].T + sd["output.layers.1.bias"] + mean  # [B*N, T, 1]
        return out.reshape(B, N, -1).permute(0, 2, 1)

    s = run_ssm(A, sd[p + "b"], z)[:, -1]  # [B*N, D, d], official closed loop: raw b for the state
    A_bk = A + b_n[:, :, None] * k_n[:, None, :]
    ys = []
    for _ in range(CFG["pred_len"]):
        ys.append(torch.einsum("bhd,hd->bh", s, c_n))
        s = torch.einsum("hij,bhj->bhi", A_bk, s)
    y_closed = output(torch.stack(ys, 1))
    if mode == "closed":
        return y_closed
    states = run_ssm(A, b_n, z)  # open loop
    return dict(y_closed=y_closed, y_open=output(torch.einsum("blhd,hd->blh", states, c_n)),
                u_pred=torch.einsum("blhd,hd->blh", states, k_n), u_true=z)


@pytest.mark.parametrize("kernel_method", ["squaring", "fft"])
def test_official_state_dict_matches_reference(tmp_path, kernel_method):
    sd = official_state_dict()
    path = tmp_path / "spacetime.pth"
    torch.save({k: v.float() for k, v in sd.items()}, path)
    model = ssmkit.create_model("spacetime", pretrained=str(path), kernel_method=kernel_method, **CFG).double()
    model.eval()
    x = torch.randn(3, CFG["seq_len"], CFG["n_vars"], dtype=torch.float64) * 2 + 1
    sd = {k: v.float().double() for k, v in sd.items()}
    with torch.no_grad():
        out = model(x)
        expected = ref_spacetime(sd, x, "closed")
        train_out, ref_train = model.training_outputs(x), ref_spacetime(sd, x, "train")
    assert out.shape == (3, CFG["pred_len"], CFG["n_vars"])
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)
    for key in ("y_closed", "y_open", "u_pred", "u_true"):
        torch.testing.assert_close(train_out[key], ref_train[key], rtol=1e-9, atol=1e-9, msg=key)


def test_three_term_loss_is_the_official_combination():
    torch.manual_seed(0)
    model = SpaceTime(**CFG, criterion_weights=(1.0, 0.5, 2.0)).double().eval()  # eval: no dropout
    x = torch.randn(4, CFG["seq_len"], CFG["n_vars"], dtype=torch.float64)
    y = torch.randn(4, CFG["pred_len"], CFG["n_vars"], dtype=torch.float64)
    loss, parts = model.training_loss(x, y)
    out = model.training_outputs(x)
    d, n = CFG["kernel_dim"], CFG["seq_len"]
    y_t = torch.cat([x, y], 1)

    def rmse(p, t):
        return ((p - t) ** 2).mean().sqrt()

    closed = rmse(out["y_closed"], y)
    open_ = rmse(out["y_open"][:, d - 1:], y_t[:, d:n + 1])  # y_open[t] predicts x[t + 1]; the last, y[0]
    nxt = rmse(out["u_pred"][:, d - 1:-1], out["u_true"][:, d:])
    torch.testing.assert_close(loss, closed + 0.5 * open_ + 2.0 * nxt)
    torch.testing.assert_close(parts["open"], open_)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match=r"y must have shape \[4, pred_len=6, n_vars=2\], found \[4, 5, 2\]"):
        model.training_loss(x, y[:, :5])


def test_bad_arguments():
    model = ssmkit.create_model("test_spacetime")
    with pytest.raises(ValueError, match=r"x must have shape \[B, seq_len=24, n_vars=1\], found \[2, 20, 1\]"):
        model(torch.randn(2, 20, 1))
    with pytest.raises(ValueError, match="kernel_method must be 'squaring' or 'fft', found 'krylov'"):
        SpaceTime(kernel_method="krylov")
    with pytest.raises(ValueError, match=r"kernel_dim must lie in \[1, seq_len=16\), found 16"):
        SpaceTime(seq_len=16, kernel_dim=16)
    with pytest.raises(ValueError, match="features='MS'"):
        Forecaster("test_spacetime", features="MS")


def test_forecaster_uses_the_model_loss_and_the_spacetime_schedule():
    forecaster = Forecaster("test_spacetime", seq_len=24, pred_len=12, n_vars=1, lr=1e-3, optimizer="adamw",
                            weight_decay=1e-4, lr_schedule="timm_cosine", warmup_epochs=2, warmup_lr_init=1e-6,
                            lr_min=1e-5, cosine_epochs=6).eval()
    batch = dict(x=torch.randn(3, 24, 1), y=torch.randn(3, 12, 1), x_mark=torch.zeros(3, 24, 4))
    torch.testing.assert_close(forecaster.training_step(batch, 0), forecaster.model.training_loss(batch["x"],
                                                                                                  batch["y"])[0])
    config = forecaster.configure_optimizers()
    optimizer, schedule = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 1e-4
    lrs = []
    for epoch in range(8):
        lrs.append(optimizer.param_groups[0]["lr"])
        schedule.step(epoch=epoch + 1)
    cosine = [1e-5 + 0.5 * (1e-3 - 1e-5) * (1 + math.cos(math.pi * t / 6)) for t in (2, 3, 4, 5)]
    assert lrs == pytest.approx([1e-6, 1e-6 + (1e-3 - 1e-6) / 2, *cosine, 1e-5, 1e-5])


@pytest.mark.parametrize("name", ["ETTh1", "ETTh2", "ETTm1", "ETTm2"])
def test_configs_hold_the_official_settings(name):
    for horizon in (96, 192, 336, 720):
        cfg = yaml.safe_load((CONFIGS / f"{name}_{horizon}.yaml").read_text())
        data, model = cfg["data"], cfg["model"]
        assert (data["features"], data["target"], data["seq_len"], data["pred_len"], data["batch_size"]) == (
            "S", "OT", 336, horizon, 50)
        assert model["model_kwargs"]["kernel_dim"] == 64 and model["model_kwargs"]["n_blocks"] == 1
        assert (model["optimizer"], model["lr"], model["weight_decay"], model["lr_schedule"]) == (
            "adamw", 1e-3, 1e-4, "timm_cosine")
        assert cfg["trainer"]["callbacks"][0]["init_args"]["patience"] == 20
    built = ssmkit.create_model("spacetime", **model["model_kwargs"])
    assert sum(p.numel() for p in built.parameters()) > 0 and built.seq_len == 336 and built.pred_len == 720
