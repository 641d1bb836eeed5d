"""``bernoulli_keep_`` against torch's ``bernoulli_``: the same mask and the same generator state afterwards."""

import pytest
import torch

from ssmkit.kernels import bernoulli_cpu
from ssmkit.kernels.bernoulli_cpu import bernoulli_keep_


def _draw_both(n: int, dtype: torch.dtype, keep: float, seed: int, burn: int):
    """torch's mask and ours from the same generator state (after ``burn`` words), then 5 later draws of each."""
    torch.manual_seed(seed)
    torch.rand(burn)  # leave the generator part-way through its 624 words
    start = torch.get_rng_state()
    ref = torch.empty(n, dtype=dtype).bernoulli_(keep)
    ref_after, ref_state = torch.rand(5), torch.get_rng_state()
    torch.set_rng_state(start)
    got = torch.empty(n, dtype=dtype)
    assert bernoulli_keep_(got, keep)
    got_after, got_state = torch.rand(5), torch.get_rng_state()
    return ref, got, ref_after, got_after, ref_state, got_state


# sizes around one twist (312 doubles = 624 words), an odd word left over, and the kernel's 4096-element blocks
@pytest.mark.parametrize("n", [1, 2, 311, 312, 313, 4095, 4096, 4097, 65536 + 7])
@pytest.mark.parametrize("burn", [0, 1, 623])
def test_mask_and_state_equal_torch_bernoulli(n, burn):
    ref, got, ref_after, got_after, ref_state, got_state = _draw_both(n, torch.float32, 0.9, seed=5, burn=burn)
    assert torch.equal(got, ref)
    assert torch.equal(got_after, ref_after)  # the generator was left where bernoulli_ leaves it
    assert torch.equal(got_state, ref_state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_every_float_dtype_and_probability(dtype, keep):
    ref, got, *_, ref_state, got_state = _draw_both(1000, dtype, keep, seed=11, burn=3)
    assert got.dtype == dtype and torch.equal(got, ref)
    assert torch.equal(got_state, ref_state)
    if 0.0 < keep < 1.0:
        assert 0 < int(got.sum()) < got.numel()


def test_refuses_what_it_cannot_draw_and_leaves_the_generator_alone(monkeypatch):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert not bernoulli_keep_(torch.empty(4, 4), 0.5)  # not 1-D
    assert not bernoulli_keep_(torch.empty(8)[::2], 0.5)  # not contiguous
    assert not bernoulli_keep_(torch.empty(8, dtype=torch.int32), 0.5)  # not floating point
    monkeypatch.setattr(bernoulli_cpu, "_STATE_BYTES", 1)  # as if torch's state layout had changed
    assert not bernoulli_keep_(torch.empty(8), 0.5)
    assert torch.equal(torch.get_rng_state(), state)
