"""Hypothesis properties of the scans, for every CPU backend: reverse, chunked carry, lengths, decoding steps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ssmkit.kernels import linear_scan, selective_scan, selective_state_update
from tests.kernels.scan_testing import assert_close, make_linear_inputs, make_selective_inputs

BACKENDS = ["naive", "torch", "cpu"]
TOL = 2e-5
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)

problems = st.fixed_dictionaries(dict(
    seqlen=st.integers(1, 24),
    dstate=st.sampled_from([1, 4]),
    groups=st.sampled_from([1, 2]),
    has_D=st.booleans(),
    has_z=st.booleans(),
    has_bias=st.booleans(),
    softplus=st.booleans(),
    seed=st.integers(0, 2**16),
))


def _selective(problem, **overrides):
    x, _ = make_selective_inputs(batch=2, dim=4, **problem)
    return x, problem["softplus"]


def _flip(t):
    return None if t is None else t.flip(1)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(problem=problems)
def test_reverse_equals_flip_scan_flip(backend, problem):
    x, sp = _selective(problem)
    y, s = selective_scan(**x, delta_softplus=sp, reverse=True, return_final_state=True, backend=backend)
    flipped = {k: _flip(v) if k in ("u", "delta", "z", "B", "C") else v for k, v in x.items()}
    y_f, s_f = selective_scan(**flipped, delta_softplus=sp, return_final_state=True, backend=backend)
    assert_close("y", y_f.flip(1), y, TOL)
    assert_close("state", s_f, s, TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(problem=problems, split=st.floats(0.0, 1.0), reverse=st.booleans())
def test_two_halves_with_carried_state_equal_whole(backend, problem, split, reverse):
    x, sp = _selective(problem)
    seqlen = x["u"].shape[1]
    k = min(max(1, round(split * seqlen)), seqlen - 1) if seqlen > 1 else 1
    y, s = selective_scan(**x, delta_softplus=sp, reverse=reverse, return_final_state=True, backend=backend)
    if seqlen == 1:
        return
    seq = ("u", "delta", "z", "B", "C")
    first = {k2: (v[:, :k] if k2 in seq and v is not None else v) for k2, v in x.items()}
    second = {k2: (v[:, k:] if k2 in seq and v is not None else v) for k2, v in x.items()}
    if reverse:  # a reverse scan meets the second part first
        first, second = second, first
    y1, s1 = selective_scan(**first, delta_softplus=sp, reverse=reverse, return_final_state=True, backend=backend)
    second["initial_state"] = s1
    y2, s2 = selective_scan(**second, delta_softplus=sp, reverse=reverse, return_final_state=True, backend=backend)
    y_cat = torch.cat([y2, y1] if reverse else [y1, y2], dim=1)
    assert_close("y", y, y_cat, TOL)
    assert_close("state", s, s2, TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(problem=problems, reverse=st.booleans(), cut=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=2))
def test_lengths_equal_truncation(backend, problem, reverse, cut):
    x, sp = _selective(problem)
    seqlen = x["u"].shape[1]
    lengths = torch.tensor([max(1, round(c * seqlen)) for c in cut])
    y, s = selective_scan(**x, delta_softplus=sp, reverse=reverse, lengths=lengths, return_final_state=True,
                          backend=backend)
    for b, n in enumerate(lengths.tolist()):
        row = {k: (None if v is None else v[b:b + 1, :n] if k in ("u", "delta", "z", "B", "C") else v)
               for k, v in x.items()}
        y_b, s_b = selective_scan(**row, delta_softplus=sp, reverse=reverse, return_final_state=True, backend=backend)
        assert_close("y", y_b[0], y[b, :n], TOL)
        assert torch.all(y[b, n:] == 0)
        assert_close("state", s_b[0], s[b], TOL)


@SETTINGS
@given(problem=problems)
def test_state_update_steps_equal_scan(problem):
    x, sp = _selective(problem)
    y, s = selective_scan(**x, delta_softplus=sp, return_final_state=True, backend="naive")
    state = torch.zeros_like(s)
    groups = x["B"].dim() == 4
    ys = []
    for t in range(x["u"].shape[1]):
        ys.append(selective_state_update(
            state, x["u"][:, t], x["delta"][:, t], x["A"], x["B"][:, t], x["C"][:, t], D=x["D"],
            z=None if x["z"] is None else x["z"][:, t], dt_bias=x["delta_bias"], dt_softplus=sp))
    assert groups == (problem["groups"] > 1)
    assert_close("y", y, torch.stack(ys, dim=1), TOL)
    assert_close("state", s, state, TOL)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(seqlen=st.integers(1, 40), seed=st.integers(0, 2**16), reverse=st.booleans(),
       cut=st.lists(st.floats(0.01, 1.0), min_size=2, max_size=2))
def test_linear_scan_properties(backend, seqlen, seed, reverse, cut):
    x, _ = make_linear_inputs(batch=2, seqlen=seqlen, dim=3, has_init=True, seed=seed)
    h, s = linear_scan(**x, reverse=reverse, return_final_state=True, backend=backend)
    h_f, s_f = linear_scan(x["a"].flip(1), x["b"].flip(1), x["initial_state"], reverse=not reverse,
                           return_final_state=True, backend=backend)
    assert_close("flip", h, h_f.flip(1), TOL)
    assert_close("flip state", s, s_f, TOL)
    lengths = torch.tensor([max(1, round(c * seqlen)) for c in cut])
    h_l, s_l = linear_scan(**x, reverse=reverse, lengths=lengths, return_final_state=True, backend=backend)
    for b, n in enumerate(lengths.tolist()):
        h_b, s_b = linear_scan(x["a"][b:b + 1, :n], x["b"][b:b + 1, :n], x["initial_state"][b:b + 1],
                               reverse=reverse, return_final_state=True, backend=backend)
        assert_close("lengths", h_b[0], h_l[b, :n], TOL)
        assert torch.all(h_l[b, n:] == 0)
        assert_close("lengths state", s_b[0], s_l[b], TOL)
