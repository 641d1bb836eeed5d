"""Online inference: recommend(history, k) and the incremental session (one recurrent step per new item)."""

from __future__ import annotations

import pytest
import torch

from ssmkit.recsys.models.mamba4rec import Mamba4Rec


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = Mamba4Rec(30, hidden_size=16, n_layers=2, d_state=4, max_len=20).eval()
    with torch.no_grad():  # away from the init so that the recurrent state matters
        for value in model.state_dict().values():
            value.add_(0.1 * torch.randn_like(value))
    return model


def test_incremental_session_equals_recompute(model):
    history = torch.randint(1, 30, (15,))
    session = model.start_session(history[:4])
    for t in range(4, 16):
        if t > 4:
            session.add(int(history[t - 1]))
        with torch.no_grad():
            full = model.full_sort_scores(history[None, :t], torch.tensor([t]))[0]  # recompute from scratch
        # float32; the step kernel and the scan accumulate in different orders
        torch.testing.assert_close(session.scores(), full, rtol=1e-4, atol=1e-5)
    # the session holds a fixed-size state, whatever the history length
    for layer, cache in zip(model.mamba_layers, session.caches):
        assert cache.ssm_state.shape == (1, layer.mamba.d_inner, layer.mamba.d_state)
        assert cache.conv_state.shape == (1, layer.mamba.d_inner, layer.mamba.d_conv)


def test_recommend_top_k(model):
    items, scores = model.recommend([3, 7, 7, 12], k=5)
    assert items.shape == scores.shape == (5,)
    assert 0 not in items.tolist()
    assert torch.all(scores[:-1] >= scores[1:])
    with torch.no_grad():
        full = model.full_sort_scores(torch.tensor([[3, 7, 7, 12]]), torch.tensor([4]))[0]
    full[0] = -torch.inf
    assert items.tolist() == full.topk(5).indices.tolist()
    session_items, _ = model.start_session([3, 7, 7, 12]).recommend(5)
    assert session_items.tolist() == items.tolist()


def test_recommend_bad_input(model):
    with pytest.raises(ValueError, match="history is empty"):
        model.recommend([], k=3)
    with pytest.raises(ValueError, match="history ids must lie in"):
        model.recommend([3, 30], k=3)
    with pytest.raises(ValueError, match="history ids must lie in"):
        model.recommend([-1, 3], k=3)
    with pytest.raises(TypeError, match="integer"):
        model.recommend([1.5, 2.0], k=3)
    with pytest.raises(ValueError, match="k must be"):
        model.recommend([3], k=0)
    with pytest.raises(ValueError, match="history is empty"):
        model.start_session([])
    with pytest.raises(ValueError, match="no interaction yet"):
        model.start_session().scores()
    with pytest.raises(ValueError, match="item ids must lie in"):
        model.start_session([2]).add(31)
