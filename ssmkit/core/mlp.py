"""Channel MLPs for the optional second sub-block of ``Block``: a plain two-layer ``Mlp`` and a ``GatedMlp``.

``GatedMlp`` follows mamba_ssm's ``GatedMLP`` layout (``fc1`` produces value and gate, ``fc2`` projects back, the
hidden width defaults to 8/3 of the input rounded up to ``multiple_of``), so its ``fc1`` / ``fc2`` keys line up.
"""

from __future__ import annotations

from torch import Tensor, nn

_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "relu": nn.ReLU, "tanh": nn.Tanh}


def make_act(name: str) -> nn.Module:
    """Build an activation module from its name (one of ``gelu``, ``silu``, ``relu``, ``tanh``)."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"act: expected one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]()


def _check_width(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


class Mlp(nn.Module):
    """``fc2(drop(act(fc1(x))))``.

    Args:
        dim: input width (D).
        hidden_dim: hidden width; defaults to ``4 * dim``.
        out_dim: output width; defaults to ``dim``.
        act: activation name (see ``make_act``).
        bias: whether the two linear layers have a bias.
        drop: dropout after the activation.
    """

    def __init__(
        self, dim: int, hidden_dim: int | None = None, out_dim: int | None = None, act: str = "gelu",
        bias: bool = True, drop: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            _check_width(f"Mlp: {name}", value)
        hidden_dim = hidden_dim or 4 * dim
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = make_act(act)
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the MLP.

        Args:
            x: [B, L, D] tokens.

        Returns:
            [B, L, out_dim] tokens.
        """
        return self.fc2(self.drop(self.act(self.fc1(x))))  # [B, L, out_dim]


class GatedMlp(nn.Module):
    """``fc2(value * act(gate))`` with ``value, gate = fc1(x).chunk(2)`` (SwiGLU with ``act="silu"``).

    Args:
        dim: input width (D).
        hidden_dim: hidden width; defaults to ``int(8 * dim / 3)`` rounded up to a multiple of ``multiple_of``.
        out_dim: output width; defaults to ``dim``.
        act: activation applied to the gate (see ``make_act``).
        bias: whether the two linear layers have a bias.
        multiple_of: rounding of the default hidden width.
    """

    def __init__(
        self, dim: int, hidden_dim: int | None = None, out_dim: int | None = None, act: str = "silu",
        bias: bool = False, multiple_of: int = 128,
    ) -> None:
        super().__init__()
        for name, value in (("dim", dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim),
                            ("multiple_of", multiple_of)):
            _check_width(f"GatedMlp: {name}", value)
        if hidden_dim is None:
            hidden_dim = -(-int(8 * dim / 3) // multiple_of) * multiple_of
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the gated MLP.

        Args:
            x: [B, L, D] tokens.

        Returns:
            [B, L, out_dim] tokens.
        """
        value, gate = self.fc1(x).chunk(2, dim=-1)  # [B, L, H] each
        return self.fc2(value * self.act(gate))  # [B, L, out_dim]
