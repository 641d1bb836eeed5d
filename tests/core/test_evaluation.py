"""The shared evaluate arguments: defaults, the checks that name the argument, the output folder."""

from __future__ import annotations

import pytest

from ssmkit.core.evaluation import cpu_name, device_description, evaluation_parser, output_folder


def _parser():
    return evaluation_parser("ssmkit test evaluate", None, "a YAML", default_seeds=[7])


def test_defaults_and_unknown_arguments_are_left_as_overrides():
    opts, overrides = _parser().parse_known_args(["-c", "x.yaml", "--trainer.max_epochs", "2"])
    assert (opts.config, opts.ckpt, opts.seeds, opts.out) == ("x.yaml", None, [7], None)
    assert overrides == ["--trainer.max_epochs", "2"]


def test_output_folder_from_out_then_config_then_default(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"trainer:\n  default_root_dir: {tmp_path / 'from_config'}\n")
    parser = _parser()
    assert output_folder(parser, parser.parse_args(["-c", str(config)]), "unused") == tmp_path / "from_config"
    assert (tmp_path / "from_config").is_dir()
    out = tmp_path / "given"
    assert output_folder(parser, parser.parse_args(["-c", str(config), "--out", str(out)]), "unused") == out
    bare = tmp_path / "bare.yaml"
    bare.write_text("model: {}\n")
    assert output_folder(parser, parser.parse_args(["-c", str(bare)]), str(tmp_path / "dflt")) == tmp_path / "dflt"


@pytest.mark.parametrize("argv, message", [(["-c", "missing.yaml"], "--config: expected an existing YAML file"),
                                           (["--ckpt", "missing.ckpt"], "--ckpt: expected an existing checkpoint")])
def test_missing_files_are_named(tmp_path, capsys, argv, message):
    config = tmp_path / "c.yaml"
    config.write_text("model: {}\n")
    parser = _parser()
    argv = argv if argv[0] == "-c" else ["-c", str(config), *argv]
    with pytest.raises(SystemExit):
        output_folder(parser, parser.parse_args(argv), str(tmp_path))
    assert message in capsys.readouterr().err


def test_device_description_names_the_cpu_and_threads():
    text = device_description("cpu")
    assert text.startswith("CPU ") and cpu_name() in text and "torch thread" in text
