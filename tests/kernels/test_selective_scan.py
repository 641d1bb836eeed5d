"""Every CPU-capable backend against the naive reference over the parametrized grid (outputs, states, gradients)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.scan_testing import check_linear_backend, check_selective_backend, flag_sets

LENGTHS = [1, 7, 64, 129, 1000]
STATES = [1, 4, 16]
GROUPS = [1, 2]
FLAGS = flag_sets()


def _grid():
    for L in LENGTHS:
        for N in STATES:
            for G in GROUPS:
                for i, flags in enumerate(FLAGS):
                    if L == 1000 and i % 2 == 1:  # the long rows keep two flag sets (all-on and mixed)
                        continue
                    yield pytest.param(L, N, G, flags, id=f"L{L}-N{N}-G{G}-f{i}")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("L,N,G,flags", list(_grid()))
def test_selective_scan_matches_naive(backend, L, N, G, flags):
    flags = dict(flags)
    reverse = flags.pop("reverse")
    check_selective_backend(backend, reverse=reverse, batch=2, seqlen=L, dim=4 * G, dstate=N, groups=G,
                            seed=L * 31 + N, **flags)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_selective_scan_bf16(backend):
    check_selective_backend(backend, seqlen=129, dim=16, dstate=16, groups=2, dtype=torch.bfloat16,
                            has_init=True, has_lengths=True)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("reverse,has_init,has_lengths", [(False, False, False), (True, True, True),
                                                          (False, True, True), (True, False, False)])
def test_linear_scan_matches_naive(backend, L, reverse, has_init, has_lengths):
    check_linear_backend(backend, reverse=reverse, seqlen=L, dim=16, has_init=has_init, has_lengths=has_lengths,
                         seed=L)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_linear_scan_bf16(backend):
    check_linear_backend(backend, seqlen=129, dim=16, dtype=torch.bfloat16, has_init=True, has_lengths=True)
