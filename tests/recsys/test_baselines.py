"""SASRec against an independent RecBole-style forward (every position of every layer, then gather); GRU4Rec
against each row run unpadded; the three models learn a deterministic next-item rule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssmkit.recsys.models.gru4rec import GRU4Rec
from ssmkit.recsys.models.mamba4rec import Mamba4Rec
from ssmkit.recsys.models.sasrec import SASRec


def recbole_sasrec_forward(sd, item_seq, lengths, n_layers, n_heads, eps=1e-12, causal=True):
    """RecBole SASRec.forward in eval mode from its state_dict keys (extended mask -10000, post-norm layers);
    ``causal=False`` is RecBole's bidirectional mask (PAD keys only), BERT4Rec's; ``lengths=None`` returns every
    position."""
    length = item_seq.shape[1]
    x = sd["item_embedding.weight"][item_seq] + sd["position_embedding.weight"][:length]
    x = F.layer_norm(x, x.shape[-1:], sd["LayerNorm.weight"], sd["LayerNorm.bias"], eps)
    allowed = torch.tril(torch.ones(length, length)) if causal else torch.ones(length, length)
    mask = (1.0 - (item_seq > 0).float()[:, None, None, :] * allowed) * -10000.0  # [B, 1, L, L]
    batch, _, dim = x.shape
    for i in range(n_layers):
        p = f"trm_encoder.layer.{i}."
        a = p + "multi_head_attention."

        def lin(t, name, a=a):
            return t @ sd[name + ".weight"].T + sd[name + ".bias"]

        def split(t):
            return t.view(batch, length, n_heads, dim // n_heads).permute(0, 2, 1, 3)

        q, k, v = split(lin(x, a + "query")), split(lin(x, a + "key")), split(lin(x, a + "value"))
        probs = (q @ k.transpose(-1, -2) / math.sqrt(dim // n_heads) + mask).softmax(-1)
        ctx = (probs @ v).permute(0, 2, 1, 3).reshape(batch, length, dim)
        x = F.layer_norm(lin(ctx, a + "dense") + x, (dim,), sd[a + "LayerNorm.weight"], sd[a + "LayerNorm.bias"], eps)
        f = p + "feed_forward."
        h = lin(F.gelu(lin(x, f + "dense_1")), f + "dense_2")
        x = F.layer_norm(h + x, (dim,), sd[f + "LayerNorm.weight"], sd[f + "LayerNorm.bias"], eps)
    return x if lengths is None else x[torch.arange(batch), lengths - 1]  # [B, L, H] or [B, H]


def _perturbed(model):
    with torch.no_grad():
        for value in model.state_dict().values():
            if value.is_floating_point():
                value.add_(0.1 * torch.randn_like(value))
    return model.eval()


def test_sasrec_matches_recbole_forward():
    torch.manual_seed(0)
    model = _perturbed(SASRec(40, hidden_size=16, inner_size=32, max_len=10))
    lengths = torch.tensor([10, 4, 1, 7])
    item_seq = torch.randint(1, 40, (4, 10)).masked_fill(torch.arange(10) >= lengths[:, None], 0)
    expected = recbole_sasrec_forward(model.state_dict(), item_seq, lengths, n_layers=2, n_heads=2)
    with torch.no_grad():
        torch.testing.assert_close(model(item_seq, lengths), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="max_len=10"):
        model(torch.ones(1, 11, dtype=torch.long), torch.tensor([11]))


def test_gru4rec_padding_does_not_change_the_output():
    torch.manual_seed(0)
    model = _perturbed(GRU4Rec(40, embedding_size=16, hidden_size=24))
    lengths = torch.tensor([9, 3, 1])
    item_seq = torch.randint(1, 40, (3, 9)).masked_fill(torch.arange(9) >= lengths[:, None], 0)
    with torch.no_grad():
        out = model(item_seq, lengths)
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(out[b], model(item_seq[b:b + 1, :n], torch.tensor([n]))[0])


@pytest.mark.parametrize("name", ["mamba4rec", "sasrec", "gru4rec"])
def test_models_learn_a_next_item_rule(name):
    # next item = previous item + 1 (mod 19, ids 1..19): a model that trains must rank it first
    torch.manual_seed(0)
    small = {"mamba4rec": dict(hidden_size=16, d_state=4, dropout=0.0),
             "sasrec": dict(hidden_size=16, inner_size=32, hidden_dropout=0.0, attn_dropout=0.0),
             "gru4rec": dict(embedding_size=16, hidden_size=16, dropout=0.0)}[name]
    model = {"mamba4rec": Mamba4Rec, "sasrec": SASRec, "gru4rec": GRU4Rec}[name](20, max_len=6, **small)
    start = torch.randint(1, 20, (64,))
    seq = (start[:, None] + torch.arange(7) - 1) % 19 + 1  # [64, 7]
    lengths = torch.randint(1, 7, (64,))
    item_seq = seq[:, :6].masked_fill(torch.arange(6) >= lengths[:, None], 0)
    target = seq[torch.arange(64), lengths]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(model.full_sort_scores(item_seq, lengths), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        top1 = model.eval().full_sort_scores(item_seq, lengths)[:, 1:].argmax(1) + 1
    assert (top1 == target).float().mean() > 0.9
