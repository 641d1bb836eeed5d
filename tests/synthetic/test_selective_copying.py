"""The selective copying data, the SequenceModel and the synthetic CLI (fast_dev_run, resume with ckpt_path last)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssmkit.synthetic.data import (
    FIRST_DATA,
    MARKER,
    NOISE,
    SelectiveCopyingDataModule,
    SelectiveCopyingDataset,
    selective_copying_sample,
)

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "synthetic" / "smoke.yaml")
QUIET = ["--trainer.enable_progress_bar", "false"]


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    """LightningCLI warns when it gets ``args`` while ``sys.argv`` holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["ssmkit"])


@pytest.mark.parametrize("seq_len,num_tokens,vocab_size", [(8, 4, 3), (24, 4, 8), (101, 16, 16)])
def test_sample_layout(seq_len, num_tokens, vocab_size):
    tokens, targets = selective_copying_sample(seq_len, num_tokens, vocab_size, np.random.default_rng(1))
    assert tokens.shape == (seq_len,) and targets.shape == (num_tokens,)
    context = tokens[: seq_len - num_tokens]
    assert torch.all(tokens[seq_len - num_tokens :] == MARKER)
    data = context[context != NOISE]
    assert torch.equal(data, targets), "the data tokens appear in the context in target order"
    assert torch.all((targets >= FIRST_DATA) & (targets < vocab_size))


def test_dataset_is_deterministic_and_splits_differ():
    make = lambda split, seed=0: SelectiveCopyingDataset(8, 64, 8, 16, seed=seed, split=split)  # noqa: E731
    train, again = make("train"), make("train")
    for i in range(len(train)):
        assert all(torch.equal(a, b) for a, b in zip(train[i], again[i]))
    stack = lambda ds: torch.stack([ds[i][0] for i in range(len(ds))])  # noqa: E731
    assert not torch.equal(stack(train), stack(make("val")))
    assert not torch.equal(stack(train), stack(make("train", seed=1)))
    assert len({tuple(train[i][0].tolist()) for i in range(len(train))}) == len(train)


@pytest.mark.parametrize(
    "kwargs,name",
    [(dict(seq_len=8, num_tokens=5, vocab_size=8), "num_tokens"), (dict(seq_len=8, num_tokens=2, vocab_size=2),
     "vocab_size"), (dict(seq_len=1, num_tokens=1, vocab_size=8), "seq_len"),
     (dict(seq_len=8, num_tokens=2, vocab_size=8, batch_size=0), "batch_size")],
)
def test_datamodule_rejects_bad_sizes(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SelectiveCopyingDataModule(**kwargs)


def test_datamodule_batches():
    dm = SelectiveCopyingDataModule(seq_len=24, num_tokens=4, vocab_size=8, num_train=20, num_val=6, batch_size=8)
    dm.setup("fit")
    tokens, targets = next(iter(dm.train_dataloader()))
    assert tokens.shape == (8, 24) and targets.shape == (8, 4) and tokens.dtype == torch.long
    assert sum(len(b[0]) for b in dm.val_dataloader()) == 6


def test_sequence_model_learns_a_fixed_batch():
    """20 AdamW steps on one batch fit it: gradients reach every block through the scan."""
    from ssmkit.synthetic.module import SequenceModel

    torch.manual_seed(0)
    dm = SelectiveCopyingDataModule(seq_len=16, num_tokens=2, vocab_size=6, num_train=16, batch_size=16)
    dm.setup("fit")
    tokens, targets = next(iter(dm.train_dataloader()))
    model = SequenceModel(vocab_size=6, seq_len=16, num_tokens=2, d_model=16, depth=2, d_state=4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-2)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Below the best input-blind loss (uniform over the 4 data tokens): the model reads the tokens it must copy.
    assert min(losses[-5:]) < 0.8 * math.log(6 - FIRST_DATA) < losses[0], losses
    with pytest.raises(ValueError, match="seq_len"):
        model(tokens[:, :-1])


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "synthetic").glob("*.yaml")), ids=lambda p: p.name)
def test_configs_parse(config, capsys):
    """Every synthetic config is valid for the CLI (types, links, interpolations) without building anything."""
    import yaml

    from ssmkit.synthetic.cli import main

    with pytest.raises(SystemExit) as info:
        main(["fit", "-c", str(config), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(config.read_text())
    assert printed["data"]["seq_len"] == written["data"]["seq_len"]
    assert printed["checkpoint"]["save_last"] is True


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_cli_subcommands_fast_dev_run(subcommand, tmp_path):
    from ssmkit.synthetic.cli import main

    cli = main([subcommand, "-c", SMOKE, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir",
                str(tmp_path), *QUIET])
    assert cli.subcommand == subcommand
    if subcommand == "predict":
        predictions = cli.trainer.predict_loop.predictions
        batch = cli.datamodule.batch_size
        assert predictions[0].shape == (batch, cli.datamodule.num_tokens)
    elif subcommand == "fit":
        assert cli.trainer.global_step == 1


def test_fit_resumes_from_last(tmp_path):
    from ssmkit.synthetic.cli import main

    common = ["-c", SMOKE, "--trainer.default_root_dir", str(tmp_path), "--trainer.limit_train_batches", "2", *QUIET]
    first = main(["fit", *common, "--trainer.max_epochs", "1"])
    assert first.trainer.global_step == 2
    first_weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    second = main(["fit", *common, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert Path(second.trainer.ckpt_path) == tmp_path / "checkpoints" / "last.ckpt"
    assert second.trainer.current_epoch == 2 and second.trainer.global_step == 4
    assert any(not torch.equal(first_weights[k], v) for k, v in second.model.state_dict().items())
    resumed = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 4 and resumed["epoch"] == 1
    for run in ("version_0", "version_1"):
        assert (tmp_path / "lightning_logs" / run / "config.yaml").is_file()
