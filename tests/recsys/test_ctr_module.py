"""CTRPredictor: loss as thuml/DARE, table-size check, the CTR evaluate command on the smoke config, the configs."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ssmkit.recsys import ctr_evaluate
from ssmkit.recsys.ctr_data import CTRDataModule
from ssmkit.recsys.ctr_module import CTRPredictor
from ssmkit.recsys.models.dare import DARE

CONFIGS = sorted(Path("configs/recsys").glob("dare/*.yaml")) + sorted(Path("configs/recsys").glob("twin/*.yaml"))
SMOKE = "configs/recsys/ctr_smoke.yaml"


def small_data() -> CTRDataModule:
    return CTRDataModule(dataset="synthetic", synthetic=dict(num_users=4, num_items=30, length=100), max_length=16,
                         min_interactions=94, batch_size=32, eval_batch_size=64)


def test_training_loss_is_main_plus_aux_plus_l2() -> None:
    data = small_data()
    data.setup("fit")
    module = CTRPredictor("dare", data.num_items, data.num_categories, model_kwargs={"top_k": 4}, weight_decay=0.5)
    batch = next(iter(data.train_dataloader()))
    torch.manual_seed(0)
    loss = module.training_step(batch, 0)
    torch.manual_seed(0)
    logits = module(batch, return_aux=True)  # [B, 2]
    label = batch["label"].float()
    expected = (F.binary_cross_entropy_with_logits(logits[:, 0], label)
                + F.binary_cross_entropy_with_logits(logits[:, 1], label) + 0.5 * module.model.l2_penalty())
    torch.testing.assert_close(loss, expected)


def test_tables_smaller_than_the_data_are_refused_before_training(tmp_path) -> None:
    data = small_data()
    module = CTRPredictor("twin", num_items=10, num_categories=data.num_categories)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        default_root_dir=tmp_path)
    with pytest.raises(ValueError, match=f"model.init_args.num_items=10 but the data needs {data.num_items} "):
        trainer.fit(module, datamodule=data)


def test_evaluate_smoke_config_writes_json_and_markdown(tmp_path) -> None:
    result = ctr_evaluate.main(["-c", SMOKE, "--seeds", "0", "--out", str(tmp_path), "--trainer.max_epochs", "1",
                                "--trainer.enable_progress_bar", "false"])
    saved = json.loads((tmp_path / "evaluation.json").read_text())
    assert saved["model"] == "dare" and saved["samples"]["test"] == 36
    for name in ("auc", "gauc"):
        assert 0.0 <= saved["runs"][0][name] <= 1.0
    assert saved["runs"][0]["logloss"] > 0 and saved["auc_std"] == 0.0
    assert "| mean ± std |" in (tmp_path / "evaluation.md").read_text()
    assert result["clis"][0].model.hparams.model_name == "dare"


@pytest.mark.parametrize("path", [*CONFIGS, Path(SMOKE)], ids=lambda p: str(p))
def test_configs_name_real_arguments(path: Path) -> None:
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    model, data = cfg["model"], cfg["data"]
    assert model["class_path"] == "ssmkit.recsys.ctr_module.CTRPredictor"
    assert data["class_path"] == "ssmkit.recsys.ctr_data.CTRDataModule"
    assert set(model["init_args"]) <= set(inspect.signature(CTRPredictor).parameters)
    assert set(model["init_args"].get("model_kwargs", {})) <= set(inspect.signature(DARE).parameters)
    assert set(data["init_args"]) <= set(inspect.signature(CTRDataModule).parameters)
    if data["init_args"]["dataset"] == "synthetic":
        built = CTRDataModule(**data["init_args"])
        assert (built.num_items, built.num_categories) == (model["init_args"]["num_items"],
                                                           model["init_args"]["num_categories"])
