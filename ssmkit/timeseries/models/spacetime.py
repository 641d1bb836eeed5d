"""SpaceTime: "Effectively Modeling Time Series with Simple Discrete State Spaces" (Zhang et al., ICLR 2023).

Faithful to HazyResearch/spacetime (model/ssm/companion.py, model/ssm/closed_loop/companion.py,
model/ssm/preprocess/residual.py, model/block.py, model/mlp.py, model/network.py, train/step/informer.py) with the
README's Informer settings (lag 336, ``--n_blocks 1 --kernel_dim 64 --norm_order 1 --dropout 0.25``):

- Embedding ``repeat``: each variate's value is copied to ``model_dim`` = 128 channels.
- Encoder block 0: fixed pre-processing SSM (differencing kernels of orders 0-3, the rows of Pascal's triangle with
  alternating signs, and moving-average residual kernels ``u_t - mean(u_{t-w+1..t})`` with windows drawn once in
  [4, 64)), then an open-loop companion SSM (16 kernels x 8 heads, state size d = ``kernel_dim``, skip D = 1), then
  the MLP ``Dropout(Linear(GELU(y)) + y)``; the block adds the pre-processed input. Later blocks (``n_blocks > 1``):
  companion SSM with 32 kernels x 4 heads, no skip D, same MLP and residual.
- Companion SSM: A = S + a e_d^T (S the lower shift, ``a`` its last column), kernel k_j = c^T A^j b for j < L, then a
  causal FFT convolution. ``a`` is divided by its L1 norm at every forward (spectral radius <= 1), as the official
  ``norm`` (skipped when the mean norm is < 1e-4). Encoder b and c are not normalised (official open-loop SSM).
- Decoder: one closed-loop companion SSM, one kernel per channel, parameters a, b, c, K, no skip and no MLP.
  Closed loop (the forecast): x_n = sum_j A^{n-1-j} b u_j (official: raw b), then x_{n+h} = (A + b K^T)^h x_n with
  L1-normalised b and K, and y_{n+h} = c^T x_{n+h} (normalised c): all H outputs in one shot. Open loop (training
  only): y_t = sum_{j<=t} c^T A^{t-j} b u_j and the predicted next decoder input K^T x_{t+1} (normalised b, c, K).
- Output: ``Dropout(Linear(GELU(y)))`` to one value per step (the official MLP applies its dropout after the Linear).
- ``data_transform mean``: the lag-window mean is subtracted from the input and added back to every output.

Training loss (official train/step/informer.py, ``--criterion_weights w0 w1 w2``, ``--loss informer_rmse``), with
y_t = [x, y] the lag followed by the horizon (data scale), n the lag, d = ``kernel_dim``:

    loss = w0 * rmse(y_closed, y_t[n:])                        # closed-loop forecast over the horizon
         + w1 * rmse(y_open[d-1:], y_t[d:n+1])                 # open-loop one-step-ahead outputs over the lag
         + w2 * rmse(u_pred[d-1:-1], u_true[d:])               # K x_{t+1} vs the decoder's actual next input

where ``rmse(p, t) = sqrt(mean((p - t)^2))`` over the batch. Evaluation runs the closed loop only.

Kernel computation: ``kernel_method="squaring"`` (the configs' choice) computes (b, Ab, A^2 b, ...) by repeated
squaring as the released code; ``"fft"`` uses the paper's O~(d + L) algorithm (``companion_kernel_fft``: generating
function at the L roots of unity, Sherman-Morrison on the shift + rank-1 structure, correlations by FFT). Both give
the same kernels (tested in float64). At radius 1 the paper's formula divides 0 by 0 when A has an eigenvalue that is
an L-th root of unity, which the L1 normalisation allows (a row of ``a`` with entries of one sign has the eigenvalue
1); the model therefore evaluates the generating function on the circle of radius 2^(-1/L) and rescales. c~ costs one
O(d^3 log L) matrix power unless learned directly. The closed-loop state and roll-out always use squaring
(A + bK^T is no longer shift + rank-1).

ssmkit extension: several variates are forecast channel-independently (each variate is one univariate series through
the same network); the paper's Informer runs are univariate (``features: S``). The official code builds no
time-feature input, so ``x_mark`` is accepted and ignored.

Official state_dicts (``model.state_dict()`` of the official ``SpaceTime``) load through ``convert_official``.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ssmkit.core.checkpoint import register_converter
from ssmkit.core.drop import Dropout
from ssmkit.core.registry import register_model

# ----------------------------------------------------------------------------------------------------------------
# Functional pieces: companion matrices, Krylov sequences, the fast FFT kernel, causal convolution
# ----------------------------------------------------------------------------------------------------------------


def l1_normalize(x: torch.Tensor) -> torch.Tensor:
    """Divide the last axis by its L1 norm, unless the mean norm is below 1e-4 (the official ``norm``)."""
    norm = torch.linalg.vector_norm(x, ord=1, dim=-1, keepdim=True)  # [..., 1]
    return x / norm if norm.abs().mean() > 1e-4 else x


def companion_matrix(a: torch.Tensor) -> torch.Tensor:
    """A = S + a e_d^T: ones on the sub-diagonal, ``a`` as the last column.

    Args:
        a: [..., d].

    Returns:
        [..., d, d].
    """
    d = a.shape[-1]
    shift = torch.diag(torch.ones(d - 1, dtype=a.dtype, device=a.device), -1)  # [d, d]
    last = F.pad(a.unsqueeze(-1), (d - 1, 0))  # [..., d, d], a in the last column
    return shift + last


def krylov(length: int, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(b, A b, A^2 b, ..., A^{length-1} b) by repeated squaring: O(log length) matrix products.

    Args:
        length: number of terms L (>= 1).
        A: [..., d, d].
        b: [..., d] (broadcast against A's batch axes).

    Returns:
        [..., d, L].
    """
    x = b.unsqueeze(-1)  # [..., d, 1]
    power = A  # A^m with m = x.shape[-1]
    while x.shape[-1] < length:
        x = torch.cat([x, power @ x[..., : length - x.shape[-1]]], dim=-1)  # [..., d, min(2m, L)]
        if x.shape[-1] < length:
            power = power @ power
    return x


def companion_kernel_squaring(length: int, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """k_j = c^T A^j b for j < length with A = companion(a), by repeated squaring (the released code's method).

    Args:
        length: L.   a, b, c: [H, d].

    Returns:
        [H, L].
    """
    return torch.einsum("hdl,hd->hl", krylov(length, companion_matrix(a), b), c)


def companion_c_tilde(length: int, a: torch.Tensor, c: torch.Tensor, radius: float = 1.0) -> torch.Tensor:
    """c~ = (I - radius^L A^L)^T c, the output vector for which the truncated generating function is a resolvent.

    Costs O(d^3 log L) (binary powering); a model can learn c~ directly to keep the whole kernel O~(d + L).
    """
    power = torch.linalg.matrix_power(companion_matrix(a), length)  # [H, d, d]
    return c - radius**length * torch.einsum("hd,hde->he", c, power)


def companion_kernel_fft(length: int, a: torch.Tensor, b: torch.Tensor, c_tilde: torch.Tensor,
                         radius: float = 1.0) -> torch.Tensor:
    """k_j = c^T A^j b for j < L with A = S + a e_d^T in O~(d + L), given c~ = (I - radius^L A^L)^T c.

    For any z: sum_{j<L} k_j z^j = c^T (I - z^L A^L)(I - zA)^{-1} b. On the circle z = radius * w, w^L = 1, this is
    c~^T (I - zA)^{-1} b. With M = I - zS, Sherman-Morrison on I - zA = M - z a e_d^T gives

        c~^T (I - zA)^{-1} b = q(c~, b) + z q(c~, a) q(e_d, b) / (1 - z q(e_d, a)),

    where q(u, v) = u^T M^{-1} v = sum_{k<d} z^k u^T S^k v has as coefficients the correlation r_k = sum_i u_{i+k} v_i
    (one FFT of length 2d); r_k radius^k is folded modulo L (w^L = 1) and evaluated at the L roots of unity w by an
    FFT of length L. The inverse FFT gives k_j radius^j. ``radius = 1`` is the paper's formula; it needs I - wA to
    be invertible, which fails when an eigenvalue of A is an L-th root of unity (an L1-normalised ``a`` whose entries
    share one sign has the eigenvalue 1). ``radius < 1`` keeps z off the spectrum (|eigenvalues| <= 1). Computed in
    float64; returned in the input dtype.

    Args:
        length: L.   a, b, c_tilde: [H, d].   radius: circle of evaluation, in (0, 1].

    Returns:
        [H, L] (real).
    """
    dtype, (a, b, c_tilde) = a.dtype, (t.double() for t in (a, b, c_tilde))
    d = a.shape[-1]
    e_d = torch.zeros_like(a)
    e_d[..., -1] = 1.0
    rows = torch.stack([c_tilde, e_d], dim=-2).unsqueeze(-2)  # [H, 2, 1, d]
    cols = torch.stack([b, a], dim=-2).unsqueeze(-3)  # [H, 1, 2, d]
    corr = torch.fft.irfft(torch.fft.rfft(rows, n=2 * d) * torch.fft.rfft(cols, n=2 * d).conj(), n=2 * d)[..., :d]
    corr = corr * radius ** torch.arange(d, dtype=corr.dtype, device=corr.device)  # [H, 2, 2, d]
    folds = math.ceil(d / length)
    corr = F.pad(corr, (0, folds * length - d)).unflatten(-1, (folds, length)).sum(-2)  # [H, 2, 2, L]
    q = torch.fft.rfft(corr, n=length)  # [H, 2, 2, L//2+1]: q(c~,b), q(c~,a) / q(e_d,b), q(e_d,a)
    steps = torch.arange(length // 2 + 1, device=a.device, dtype=a.dtype)
    z = radius * torch.exp(-2j * math.pi * steps / length)  # [L//2+1]
    generating = q[..., 0, 0, :] + z * q[..., 0, 1, :] * q[..., 1, 0, :] / (1 - z * q[..., 1, 1, :])
    kernel = torch.fft.irfft(generating, n=length)  # [H, L]: k_j radius^j
    return (kernel / radius ** torch.arange(length, dtype=kernel.dtype, device=kernel.device)).to(dtype)


def companion_kernel(length: int, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, method: str) -> torch.Tensor:
    """k_j = c^T A^j b ([H, L]) by ``method`` "squaring" (released code) or "fft" (the paper's fast algorithm, on
    the circle of radius 2^(-1/L) so that an eigenvalue on the unit circle does no harm)."""
    if method == "squaring":
        return companion_kernel_squaring(length, a, b, c)
    radius = 0.5 ** (1.0 / length)
    c_tilde = companion_c_tilde(length, a.double(), c.double(), radius)
    return companion_kernel_fft(length, a, b, c_tilde, radius).to(a.dtype)


def causal_conv(u: torch.Tensor, *kernels: torch.Tensor) -> tuple[torch.Tensor, ...] | torch.Tensor:
    """y_t = sum_{j<=t} kernel_j u_{t-j} per channel, by FFT of length 2L (one transform of u for all kernels).

    Args:
        u: [B, L, D] (or [B, L, 1], broadcast to every kernel's channel).   kernels: each [D, K] (cut or padded to L).

    Returns:
        One [B, L, D] per kernel (a tensor for a single kernel, else a tuple).
    """
    length = u.shape[1]
    u_f = torch.fft.rfft(u.transpose(1, 2), n=2 * length)  # [B, D, L+1]
    outs = tuple(torch.fft.irfft(u_f * torch.fft.rfft(k[:, :length], n=2 * length), n=2 * length)[..., :length]
                 .transpose(1, 2) for k in kernels)  # [B, L, D] each
    return outs[0] if len(outs) == 1 else outs


# ----------------------------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------------------------


class Preprocess(nn.Module):
    """Fixed (untrained) differencing and moving-average-residual kernels over ``model_dim`` channels.

    Channel layout (official ``residual`` SSM): ``model_dim // n_kernels`` repeats of ``n_kernels`` kernels, the first
    ``diff_orders`` of which difference (orders 0, 1, ..., diff_orders - 1) and the rest are moving-average residuals
    with their own random window in [min_window, max_window).
    """

    def __init__(self, model_dim: int, n_kernels: int = 8, diff_orders: int = 4, min_window: int = 4,
                 max_window: int = 64):
        super().__init__()
        if model_dim % n_kernels or not 0 < diff_orders < n_kernels:
            raise ValueError(f"Preprocess: model_dim ({model_dim}) must be a multiple of n_kernels ({n_kernels}) and "
                             f"diff_orders ({diff_orders}) must lie in [1, n_kernels)")
        self.repeat, self.n_kernels, self.diff_orders = model_dim // n_kernels, n_kernels, diff_orders
        diff = torch.tensor([[(-1.0) ** m * math.comb(j, m) for m in range(diff_orders)] for j in range(diff_orders)])
        self.register_buffer("diff_kernel", diff.repeat(self.repeat, 1))  # [R * orders, orders]
        n_ma = (n_kernels - diff_orders) * self.repeat
        windows = torch.randint(min_window, max_window, (n_ma,))
        ma = torch.zeros(n_ma, max_window)
        ma[:, 0] = 1.0
        ma -= (torch.arange(max_window) < windows[:, None]) / windows[:, None].float()  # [n_ma, max_window]
        self.register_buffer("ma_kernel", ma)

    def kernel(self) -> torch.Tensor:
        """[model_dim, K]: per repeat, the differencing kernels then the moving-average residual kernels."""
        width = max(self.diff_kernel.shape[1], self.ma_kernel.shape[1])
        diff = F.pad(self.diff_kernel, (0, width - self.diff_kernel.shape[1])).unflatten(0, (self.repeat, -1))
        ma = F.pad(self.ma_kernel, (0, width - self.ma_kernel.shape[1])).unflatten(0, (self.repeat, -1))
        return torch.cat([diff, ma], dim=1).flatten(0, 1)  # [R * n_kernels, K]

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: [B, L, D] -> [B, L, D]."""
        return causal_conv(u, self.kernel())


class CompanionSSM(nn.Module):
    """Open-loop companion SSM: ``n_kernels`` kernels (a, b, c ~ N(0, 1)), each shared by ``model_dim // n_kernels``
    consecutive channels; optional skip ``D * u`` (D initialised to ones)."""

    def __init__(self, model_dim: int, n_kernels: int, kernel_dim: int, skip: bool, kernel_method: str):
        super().__init__()
        if model_dim % n_kernels:
            raise ValueError(f"CompanionSSM: model_dim ({model_dim}) must be a multiple of n_kernels ({n_kernels})")
        self.heads, self.kernel_method = model_dim // n_kernels, kernel_method
        self.a = nn.Parameter(torch.randn(n_kernels, kernel_dim))
        self.b = nn.Parameter(torch.randn(n_kernels, kernel_dim))
        self.c = nn.Parameter(torch.randn(n_kernels, kernel_dim))
        self.skip = nn.Parameter(torch.ones(model_dim)) if skip else None

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: [B, L, D] -> [B, L, D]."""
        kernel = companion_kernel(u.shape[1], l1_normalize(self.a), self.b, self.c, self.kernel_method)  # [H, L]
        y = causal_conv(u, kernel.repeat_interleave(self.heads, dim=0))  # [B, L, D]
        return y + u * self.skip if self.skip is not None else y


class ResidualMLP(nn.Module):
    """``Dropout(Linear(GELU(x)) + x)`` (official MLP: pre-activation, one layer, skip, dropout last)."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, D] -> [B, L, D]."""
        return self.dropout(self.linear(F.gelu(x)) + x)


class EncoderBlock(nn.Module):
    """(pre-processing) -> companion SSM -> MLP, plus the (pre-processed) input."""

    def __init__(self, model_dim: int, n_kernels: int, kernel_dim: int, dropout: float, kernel_method: str,
                 preprocess: dict | None = None):
        super().__init__()
        self.preprocess = Preprocess(model_dim, **preprocess) if preprocess is not None else None
        skip = preprocess is not None  # official: only block 0's SSM has the skip D
        self.ssm = CompanionSSM(model_dim, n_kernels, kernel_dim, skip=skip, kernel_method=kernel_method)
        self.mlp = ResidualMLP(model_dim, dropout)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u: [B, L, D] -> [B, L, D]."""
        z = self.preprocess(u) if self.preprocess is not None else u  # [B, L, D]
        return self.mlp(self.ssm(z)) + z


class ClosedLoopCompanion(nn.Module):
    """Decoder: one companion SSM per channel with a state feedback K (a, b, c, K ~ N(0, 1))."""

    def __init__(self, model_dim: int, kernel_dim: int, kernel_method: str):
        super().__init__()
        self.kernel_method = kernel_method
        self.a = nn.Parameter(torch.randn(model_dim, kernel_dim))
        self.b = nn.Parameter(torch.randn(model_dim, kernel_dim))
        self.c = nn.Parameter(torch.randn(model_dim, kernel_dim))
        self.k = nn.Parameter(torch.randn(model_dim, kernel_dim))

    def forecast(self, u: torch.Tensor, horizon: int) -> torch.Tensor:
        """Closed loop: the last state after the lag, rolled out ``horizon`` steps with A + b K^T.

        Args:
            u: decoder inputs over the lag [B, n, D].   horizon: H.

        Returns:
            y_{n}, ..., y_{n+H-1} = c^T (A + bK^T)^h x_n: [B, H, D].
        """
        A = companion_matrix(l1_normalize(self.a))  # [D, d, d]
        powers_b = krylov(u.shape[1], A, self.b)  # [D, d, n]: A^j b (official: raw b for the state)
        x_n = torch.einsum("hdj,bjh->bhd", powers_b, u.flip(1))  # [B, D, d] = sum_j A^{n-1-j} b u_j
        A_bk = A + l1_normalize(self.b).unsqueeze(-1) * l1_normalize(self.k).unsqueeze(-2)  # [D, d, d]
        readout = krylov(horizon, A_bk.transpose(-1, -2), l1_normalize(self.c))  # [D, d, H]: ((A+bK^T)^T)^h c
        return torch.einsum("hdt,bhd->bth", readout, x_n)  # [B, H, D]

    def open_loop(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Open loop over the lag: outputs c^T x_{t+1} and predicted next inputs K^T x_{t+1}, each [B, n, D]."""
        a, b, c, k = (l1_normalize(p) for p in (self.a, self.b, self.c, self.k))
        length = u.shape[1]
        if self.kernel_method == "squaring":  # one Krylov sequence for both read-outs
            powers = krylov(length, companion_matrix(a), b)  # [D, d, n]
            k_y, k_u = torch.einsum("hdl,hd->hl", powers, c), torch.einsum("hdl,hd->hl", powers, k)  # [D, n] each
        else:
            k_y, k_u = (companion_kernel(length, a, b, r, "fft") for r in (c, k))  # [D, n] each
        return causal_conv(u, k_y, k_u)


class SpaceTime(nn.Module):
    """SpaceTime forecaster (see the module docstring).

    Args:
        seq_len: lag n.   pred_len: horizon H.   n_vars: variates (forecast channel-independently).
        model_dim: channels (official 128).   n_blocks: encoder blocks (block 0 pre-processes; official 1).
        kernel_dim: companion state size d (official 64).
        first_kernels: kernels of block 0's SSM (official 16 x 8 heads).   n_kernels: kernels of later blocks (32).
        pre_kernels, diff_orders, ma_windows: block 0's fixed kernels per repeat, how many of them difference, and
            the [min, max) range of the moving-average windows (official 8, 4 and (4, 64)).
        dropout: MLP and output dropout (official 0.25).
        criterion_weights: (w0, w1, w2) of the three-term loss.   loss: "rmse" (official informer_rmse) or "mse".
        subtract_mean: the official ``data_transform mean``.
        kernel_method: "squaring" (released code) or "fft" (the paper's O~(d + L) algorithm).
    """

    def __init__(self, seq_len: int = 336, pred_len: int = 720, n_vars: int = 1, model_dim: int = 128,
                 n_blocks: int = 1, kernel_dim: int = 64, first_kernels: int = 16, n_kernels: int = 32,
                 pre_kernels: int = 8, diff_orders: int = 4, ma_windows: tuple[int, int] = (4, 64),
                 dropout: float = 0.25, criterion_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
                 loss: str = "rmse", subtract_mean: bool = True, kernel_method: str = "squaring"):
        super().__init__()
        if kernel_method not in ("squaring", "fft"):
            raise ValueError(f"kernel_method must be 'squaring' or 'fft', found {kernel_method!r}")
        if loss not in ("rmse", "mse"):
            raise ValueError(f"loss must be 'rmse' or 'mse', found {loss!r}")
        if len(criterion_weights) != 3:
            raise ValueError(f"criterion_weights must be 3 numbers (w0, w1, w2), found {criterion_weights!r}")
        if not 1 <= kernel_dim < seq_len:
            raise ValueError(f"kernel_dim must lie in [1, seq_len={seq_len}), found {kernel_dim}")
        self.seq_len, self.pred_len, self.n_vars, self.kernel_dim = seq_len, pred_len, n_vars, kernel_dim
        self.model_dim, self.subtract_mean, self.loss_name = model_dim, subtract_mean, loss
        self.criterion_weights = tuple(float(w) for w in criterion_weights)
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1 (block 0 holds the pre-processing), found {n_blocks}")
        pre = dict(n_kernels=pre_kernels, diff_orders=diff_orders, min_window=ma_windows[0], max_window=ma_windows[1])
        self.encoder = nn.ModuleList(
            EncoderBlock(model_dim, first_kernels if i == 0 else n_kernels, kernel_dim, dropout, kernel_method,
                         preprocess=pre if i == 0 else None) for i in range(n_blocks))
        self.decoder = ClosedLoopCompanion(model_dim, kernel_dim, kernel_method)
        self.head = nn.Linear(model_dim, 1)
        self.head_dropout = Dropout(dropout)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, n, N] -> decoder inputs [B*N, n, D] and the lag means [B*N, 1, 1] (zeros without the transform)."""
        if x.dim() != 3 or x.shape[1] != self.seq_len or x.shape[2] != self.n_vars:
            raise ValueError(f"x must have shape [B, seq_len={self.seq_len}, n_vars={self.n_vars}], "
                             f"found {list(x.shape)}")
        u = x.transpose(1, 2).reshape(-1, self.seq_len, 1)  # [B*N, n, 1]: one univariate series per variate
        mean = u.mean(1, keepdim=True) if self.subtract_mean else torch.zeros_like(u[:, :1])  # [B*N, 1, 1]
        z = u - mean  # [B*N, n, 1]: the "repeat" embedding copies it to D channels, done by broadcasting in block 0
        for block in self.encoder:
            z = block(z)
        return z, mean

    def _output(self, y: torch.Tensor, mean: torch.Tensor, batch: int) -> torch.Tensor:
        """Decoder outputs [B*N, T, D] -> forecasts [B, T, N] on the data scale."""
        y = self.head_dropout(self.head(F.gelu(y))) + mean  # [B*N, T, 1]
        return y.reshape(batch, self.n_vars, -1).transpose(1, 2)  # [B, T, N]

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor | None = None) -> torch.Tensor:
        """Closed-loop forecast.

        Args:
            x: lag window [B, seq_len, N].   x_mark: ignored (SpaceTime uses no time features).

        Returns:
            [B, pred_len, N].
        """
        z, mean = self._encode(x)  # [B*N, n, D]
        return self._output(self.decoder.forecast(z, self.pred_len), mean, x.shape[0])

    def training_outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Everything the three-term loss needs.

        Returns:
            y_closed [B, H, N], y_open [B, n, N] (y_open[:, t] predicts x[:, t + 1]), u_pred and u_true [B*N, n, D]
            (the decoder's predicted next input K^T x_{t+1} and its actual input).
        """
        z, mean = self._encode(x)  # [B*N, n, D]
        y_open, u_pred = self.decoder.open_loop(z)  # [B*N, n, D] each
        return dict(y_closed=self._output(self.decoder.forecast(z, self.pred_len), mean, x.shape[0]),
                    y_open=self._output(y_open, mean, x.shape[0]), u_pred=u_pred, u_true=z)

    def _criterion(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse = F.mse_loss(pred, target)
        return mse.sqrt() if self.loss_name == "rmse" else mse

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The official three-term loss (module docstring).

        Args:
            x: lag [B, n, N].   y: horizon targets [B, H, N].

        Returns:
            (weighted total, {"closed": ..., "open": ..., "next_input": ...}).
        """
        if y.shape != (x.shape[0], self.pred_len, self.n_vars):
            raise ValueError(f"y must have shape [{x.shape[0]}, pred_len={self.pred_len}, n_vars={self.n_vars}], "
                             f"found {list(y.shape)}")
        out = self.training_outputs(x)
        d, n = self.kernel_dim, self.seq_len
        y_t = torch.cat([x, y], dim=1)  # [B, n + H, N]
        parts = {
            "closed": self._criterion(out["y_closed"], y_t[:, n:]),
            "open": self._criterion(out["y_open"][:, d - 1:], y_t[:, d:n + 1]),
            "next_input": self._criterion(out["u_pred"][:, d - 1:-1], out["u_true"][:, d:]),
        }
        w0, w1, w2 = self.criterion_weights
        return w0 * parts["closed"] + w1 * parts["open"] + w2 * parts["next_input"], parts


# ----------------------------------------------------------------------------------------------------------------
# Official checkpoints
# ----------------------------------------------------------------------------------------------------------------

_OFFICIAL_RENAMES = [
    (r"^encoder\.blocks\.(\d+)\.pre\.diff_kernel$", r"encoder.\1.preprocess.diff_kernel"),
    (r"^encoder\.blocks\.(\d+)\.pre\.ma_r_kernel$", r"encoder.\1.preprocess.ma_kernel"),
    (r"^encoder\.blocks\.(\d+)\.ssm\.(a|b|c|skip)$", r"encoder.\1.ssm.\2"),
    (r"^encoder\.blocks\.(\d+)\.mlp\.layers\.1\.(weight|bias)$", r"encoder.\1.mlp.linear.\2"),
    (r"^decoder\.blocks\.ssm\.(a|b|c|k)$", r"decoder.\1"),
    (r"^output\.layers\.1\.(weight|bias)$", r"head.\1"),
]


@register_converter("spacetime")
def convert_official(checkpoint: dict, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Map an official HazyResearch/spacetime ``SpaceTime.state_dict()`` to ``SpaceTime`` keys.

    Official layout: ``encoder.blocks.{i}.pre.{diff_kernel, ma_r_kernel}`` (fixed kernels, kept: the moving-average
    windows are random), ``encoder.blocks.{i}.ssm.{a, b, c, skip}``, ``encoder.blocks.{i}.mlp.layers.1.*`` (layer 0 is
    the GELU), ``decoder.blocks.ssm.{a, b, c, k}`` and ``output.layers.1.*``. The decoder's ``skip`` (created by the
    official base class but unused by the closed loop) is dropped. A state_dict already in ssmkit keys passes through.
    """
    if not any(key.startswith(("encoder.blocks.", "decoder.blocks.", "output.layers.")) for key in checkpoint):
        return dict(checkpoint)
    out = {}
    for key, value in checkpoint.items():
        for pattern, repl in _OFFICIAL_RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value
                break
    return out


def _example(model: SpaceTime, batch_size: int):
    x = torch.randn(batch_size, model.seq_len, model.n_vars)  # [B, n, N]
    return {"x": x}, (batch_size, model.pred_len, model.n_vars)


@register_model(domain="timeseries", example_input=_example,
                test_overrides=dict(seq_len=24, pred_len=12, n_vars=2, model_dim=16, kernel_dim=8, first_kernels=4,
                                    n_kernels=4, n_blocks=2))
def spacetime(**kwargs) -> SpaceTime:
    """SpaceTime (companion SSM, closed-loop decoder); defaults: the official Informer runs (lag 336, horizon 720)."""
    return SpaceTime(**kwargs)


@register_model(domain="timeseries", example_input=_example)
def test_spacetime(**kwargs) -> SpaceTime:
    """Tiny SpaceTime for tests."""
    cfg = dict(seq_len=24, pred_len=12, n_vars=1, model_dim=16, kernel_dim=8, first_kernels=4, n_kernels=4)
    return SpaceTime(**{**cfg, **kwargs})
