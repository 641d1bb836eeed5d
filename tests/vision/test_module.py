"""ImageClassifier: warm-up + cosine per step, timm weight-decay groups, mixup, EMA, channels_last, global metrics."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from ssmkit.vision.module import ImageClassifier, build_model, warmup_cosine

# a 1-block ViT from timm (tests must not depend on the ssmkit vision models)
TINY = dict(patch_size=4, embed_dim=16, depth=1, num_heads=2)


def tiny_classifier(**kwargs) -> ImageClassifier:
    return ImageClassifier("deit_tiny_patch16_224", TINY, num_classes=4, in_chans=1, img_size=8, **kwargs)


def tiny_loaders(n: int = 24, batch_size: int = 4) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))
    return (DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True),
            DataLoader(data, batch_size=batch_size))


def tiny_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


def test_warmup_cosine_shape():
    lr = dict(total=100, warmup=10, lr=1e-3, warmup_lr=1e-6, min_lr=1e-5)
    assert warmup_cosine(0, **lr) == pytest.approx(1e-6)
    assert warmup_cosine(5, **lr) == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6))
    assert warmup_cosine(10, **lr) == pytest.approx(1e-3)
    assert warmup_cosine(55, **lr) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))
    assert warmup_cosine(100, **lr) == pytest.approx(1e-5)
    after = [warmup_cosine(s, **lr) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_schedule_steps_per_optimizer_step():
    model = tiny_classifier(lr=1e-2, warmup_lr=1e-4, min_lr=1e-3, warmup_epochs=1)
    train, val = tiny_loaders()
    lrs = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    tiny_trainer(max_epochs=2, callbacks=[Record()], num_sanity_val_steps=0).fit(model, train, val)
    expected = [warmup_cosine(s, 12, 6, 1e-2, 1e-4, 1e-3) for s in range(12)]  # 6 steps per epoch
    assert lrs == pytest.approx(expected)


def test_weight_decay_groups_follow_timm():
    model = tiny_classifier(weight_decay=0.05, no_weight_decay=("*.proj.weight",))
    model.trainer = tiny_trainer(max_epochs=1)
    names = {id(p): n for n, p in model.model.named_parameters()}
    groups = model.configure_optimizers()["optimizer"].param_groups
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    free = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"} <= free
    assert {"patch_embed.proj.weight", "blocks.0.attn.proj.weight"} <= free  # the no_weight_decay pattern
    assert {"blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "head.weight"} <= decayed
    assert decayed | free == set(names.values()) and not decayed & free


def test_mixup_soft_targets_and_odd_batch():
    torch.manual_seed(0)
    model = tiny_classifier(mixup_alpha=0.8, cutmix_alpha=1.0)
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    loss = model.training_step((x, y), 0)
    assert torch.isfinite(loss) and loss.requires_grad
    with pytest.raises(ValueError, match="even batch size"):
        model.training_step((x[:3], y[:3]), 0)
    plain = tiny_classifier(label_smoothing=0.0)
    logits = plain(x)
    torch.testing.assert_close(plain.training_step((x, y), 0), torch.nn.functional.cross_entropy(logits, y))


def test_ema_is_updated_validated_and_not_optimized():
    model = tiny_classifier(ema_decay=0.5, lr=1e-2, warmup_epochs=0)
    start = [p.detach().clone() for p in model.ema.module.parameters()]
    train, val = tiny_loaders()
    trainer = tiny_trainer(max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(model, train, val)
    assert {"val/top1", "val/top5", "val_ema/top1", "val_ema/top5"} <= set(trainer.callback_metrics)
    assert not any(p.requires_grad for p in model.ema.parameters())
    optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimized & {id(p) for p in model.ema.parameters()}
    ema, raw = list(model.ema.module.parameters()), list(model.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(ema, start)), "the EMA moved"
    assert any(not torch.equal(a, b) for a, b in zip(ema, raw)), "the EMA lags the model"
    assert "ema.module.pos_embed" in model.state_dict()


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    plain = tiny_classifier()
    fast = tiny_classifier(channels_last=True)
    fast.model.load_state_dict(plain.model.state_dict())
    x = torch.randn(2, 1, 8, 8)
    assert fast.model.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(x), plain(x))


def test_top1_top5_are_global_over_batches():
    model = tiny_classifier()
    top1, top5 = model.metrics["val_top1"], model.metrics["val_top5"]
    logits = torch.tensor([[4.0, 3, 2, 1], [1, 4, 3, 2], [1, 2, 3, 4]])
    top1.update(logits[:2], torch.tensor([0, 0]))
    top1.update(logits[2:], torch.tensor([3]))
    assert float(top1.compute()) == pytest.approx(2 / 3)
    top5.update(logits, torch.tensor([3, 0, 0]))  # 4 classes: top-5 is top-4, always right
    assert float(top5.compute()) == pytest.approx(1.0)


def test_build_model_names_and_bad_arguments():
    vit = build_model("deit_tiny_patch16_224", num_classes=3, in_chans=1, img_size=8, **TINY)
    assert vit(torch.randn(1, 1, 8, 8)).shape == (1, 3)
    convnet = build_model("resnet10t", num_classes=3, in_chans=1, img_size=None)
    assert convnet(torch.randn(2, 1, 16, 16)).shape == (2, 3)  # a timm model without img_size
    with pytest.raises(ValueError, match="'not_a_model' is neither an ssmkit model"):
        build_model("not_a_model")
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        tiny_classifier(label_smoothing=1.5)
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        tiny_classifier(ema_decay=1.0)


def test_vim_through_the_ssmkit_registry():
    """The colleague's Vim (ssmkit registry first, then timm), with the data-linked sizes and a backend."""
    model = ImageClassifier("vim_tiny_patch16_224", dict(depth=2, embed_dim=32, patch_size=4, stride=4,
                                                         backend="torch"), num_classes=10, in_chans=1, img_size=8)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
