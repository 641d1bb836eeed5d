"""The ``ssmkit`` console script and the shared LightningCLI, run in process on the synthetic domain's smoke config."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ssmkit.core.cli import available_domains, main

ROOT = Path(__file__).resolve().parents[2]
SMOKE = str(ROOT / "configs" / "synthetic" / "smoke.yaml")
QUIET = ["--trainer.enable_progress_bar", "false"]


@pytest.fixture(autouse=True)
def _clean_argv(monkeypatch):
    """LightningCLI warns when it gets ``args`` while ``sys.argv`` holds pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["ssmkit"])


def test_available_domains_are_the_packages_with_a_cli():
    domains = available_domains()
    assert "synthetic" in domains
    assert not {"core", "kernels"} & set(domains)
    assert all((ROOT / "ssmkit" / name / "cli.py").is_file() for name in domains)


def test_unknown_domain_names_the_known_ones():
    with pytest.raises(SystemExit) as info:
        main(["no_such_domain", "fit"])
    message = str(info.value.code)
    assert "'no_such_domain'" in message
    assert all(name in message for name in ["models", "export", *available_domains()])


def test_help_lists_the_domains(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "ssmkit export" in out and "synthetic" in out


def test_models_prints_the_registry(capsys):
    from ssmkit.core.registry import list_models, model_info

    main(["models", "--domain", "synthetic"])
    out = capsys.readouterr().out
    names = list_models(domain="synthetic")
    assert names, "the synthetic domain registers at least one model"
    for name in names:
        assert name in out
        assert model_info(name)["domain"] == "synthetic"
    assert "domain" in out and "summary" in out


def test_export_writes_the_chosen_state_dict(tmp_path):
    from safetensors.torch import load_file

    weights = {"layer.weight": torch.randn(3, 4), "layer.bias": torch.randn(3)}
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": weights, "model_ema": {"layer.bias": torch.zeros(3)}, "epoch": 3}, ckpt)
    out = tmp_path / "model.safetensors"
    main(["export", str(ckpt), str(out), "--key", "state_dict"])
    loaded = load_file(out)
    assert set(loaded) == set(weights)
    for name, tensor in weights.items():
        torch.testing.assert_close(loaded[name], tensor, rtol=0, atol=0)


def test_export_rejects_bad_paths(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out.safetensors")])
    assert "CKPT" in capsys.readouterr().err
    ckpt = tmp_path / "run.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, ckpt)
    with pytest.raises(SystemExit):
        main(["export", str(ckpt), str(tmp_path / "out.pt")])
    assert ".safetensors" in capsys.readouterr().err


def test_fit_saves_the_resolved_config_beside_the_run(tmp_path):
    main(["synthetic", "fit", "-c", SMOKE, "--trainer.default_root_dir", str(tmp_path), "--data.num_train", "32",
          *QUIET])
    # ssmkit.core.cli.main returns None (a console script's return value becomes its exit status).
    config_path = tmp_path / "lightning_logs" / "version_0" / "config.yaml"
    assert config_path.is_file()
    config = yaml.safe_load(config_path.read_text())
    # The command line override, the omegaconf interpolation of smoke.yaml (num_val: ${data.batch_size}), and the
    # checkpoint group with save_last.
    assert config["data"]["num_train"] == 32
    assert isinstance(config["data"]["num_val"], int) and config["data"]["num_val"] == config["data"]["batch_size"]
    assert config["checkpoint"]["save_last"] is True
    assert Path(config["checkpoint"]["dirpath"]) == tmp_path / "checkpoints"
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_trained_checkpoint_exports_into_the_registered_model(tmp_path):
    """fit -> ``ssmkit export --key state_dict --prefix net.`` -> ``create_model(..., pretrained=file)`` (strict)."""
    from ssmkit.core.registry import create_model
    from ssmkit.synthetic.cli import main as synthetic_main

    cli = synthetic_main(["fit", "-c", SMOKE, "--trainer.default_root_dir", str(tmp_path), "--data.num_train", "16",
                          *QUIET])
    out = tmp_path / "selective_copying_mamba.safetensors"
    main(["export", str(tmp_path / "checkpoints" / "last.ckpt"), str(out), "--key", "state_dict", "--prefix", "net."])
    hp = cli.model.hparams
    model = create_model("selective_copying_mamba", pretrained=str(out), vocab_size=hp.vocab_size,
                         d_model=hp.d_model, depth=hp.depth, d_state=hp.d_state)
    for name, tensor in cli.model.net.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=0)


def test_linked_values_come_from_data_and_cannot_be_set_on_the_model(tmp_path, capsys):
    from ssmkit.synthetic.cli import main as synthetic_main

    cli = synthetic_main(["fit", "-c", SMOKE, "--trainer.fast_dev_run", "true", "--data.vocab_size", "11",
                          "--trainer.default_root_dir", str(tmp_path), *QUIET])
    assert cli.model.hparams.vocab_size == 11 and cli.model.net.head.out_features == 11
    assert cli.model.hparams.seq_len == cli.datamodule.seq_len
    with pytest.raises(SystemExit):
        synthetic_main(["fit", "-c", SMOKE, "--model.vocab_size", "11", "--trainer.default_root_dir", str(tmp_path)])


def test_progress_bar_is_rich_unless_disabled(tmp_path):
    from lightning.pytorch.callbacks import RichProgressBar

    from ssmkit.synthetic.cli import main as synthetic_main

    args = ["validate", "-c", SMOKE, "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path)]
    assert isinstance(synthetic_main(args).trainer.progress_bar_callback, RichProgressBar)
    assert synthetic_main([*args, *QUIET]).trainer.progress_bar_callback is None
    own = synthetic_main([*args, "--trainer.callbacks", "lightning.pytorch.callbacks.TQDMProgressBar"])
    assert type(own.trainer.progress_bar_callback).__name__ == "TQDMProgressBar"


def test_run_cli_rejects_malformed_links():
    from ssmkit.core.lightning_cli import _check_links

    assert _check_links([("data.a", "model.a")]) == [("data.a", "model.a", "parse")]
    with pytest.raises(TypeError, match="link"):
        _check_links([("data.a",)])
    with pytest.raises(ValueError, match="apply_on"):
        _check_links([("data.a", "model.a", "later")])


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    """A tiny fit with DDP (gloo) on 2 CPU processes, launched as ``python -m ssmkit.core.cli`` (20-50 s on 2 cores)."""
    command = [sys.executable, "-m", "ssmkit.core.cli", "synthetic", "fit", "-c", SMOKE,
               "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
               "--trainer.default_root_dir", str(tmp_path), *QUIET]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    config = yaml.safe_load((tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text())
    # Each of the 2 ranks sees half of the training samples per epoch.
    per_rank = -(-config["data"]["num_train"] // 2)
    assert last["global_step"] == -(-per_rank // config["data"]["batch_size"])
