"""End-to-end training on composed real configs (fast_dev_run and a short real-data quickstart)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from hugnc.models import ProxyHead
from hugnc.train import build_module, train

LOSSES = ["ce", "mhe_hug", "mhs_hug", "mgd_hug"]
MODELS = ["lenet_pp", "resnet18", "resnet34", "resnet50"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("loss", LOSSES)
def test_fast_dev_run_every_loss_and_model(compose_cfg, loss: str, model: str) -> None:
    cfg = compose_cfg(
        f"loss={loss}",
        f"model={model}",
        "trainer=debug",
        "logger=none",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        "~callbacks.progress_bar",
        "optimizer.lr=0.01",
    )
    metrics = train(cfg)
    assert {"train/loss", "train/acc", "val/acc", "test/acc"} <= metrics.keys()
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    hug = loss != "ce"
    assert ("train/loss_intra" in metrics) == hug and ("train/loss_inter" in metrics) == hug
    assert (
        json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["test/acc"]
        == metrics["test/acc"]
    )


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_config_selects_matching_head(compose_cfg, loss: str) -> None:
    cfg = compose_cfg(f"loss={loss}")
    module = build_module(cfg, input_shape=(1, 28, 28))
    assert isinstance(module.head, ProxyHead) == (loss != "ce")
    assert module.head.classifier.shape == (10, cfg.model.feature_dim)
    assert module.criterion.needs_global_batch == (loss != "ce")


@pytest.mark.real_data
@pytest.mark.slow
def test_quickstart_on_real_fashion_mnist(compose_cfg) -> None:
    cfg = compose_cfg(
        "experiment=quickstart",
        "debug=limit",
        "trainer.limit_train_batches=40",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=4",
        "trainer.max_epochs=2",
        "~callbacks.progress_bar",
    )
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert (run_dir / "feature_geometry_test.png").stat().st_size > 10_000
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    saved = json.loads((run_dir / "metrics.json").read_text())
    # 80 steps of MHE-HUG already beat chance (10%) clearly on real data.
    assert saved["test/acc"] == metrics["test/acc"] > 0.3
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and any(offline_runs[0].glob("*.wandb"))
    # Proxies are back on the unit sphere after the last optimizer step.
    checkpoint = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    norms = checkpoint["state_dict"]["head.proxies"].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(10))


@pytest.mark.slow
@pytest.mark.real_data
def test_same_seed_same_result(compose_cfg) -> None:
    overrides = (
        "loss=mhe_hug",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "debug=limit",
        "trainer.limit_train_batches=5",
        "logger=none",
        "~callbacks.progress_bar",
        "model.widths=[8,8,8]",
        "model.kernel_size=3",
        "data.batch_size=64",
    )
    first = train(compose_cfg(*overrides, "seed=3"))
    second = train(compose_cfg(*overrides, "seed=3"))
    other = train(compose_cfg(*overrides, "seed=4"))
    assert first == second
    assert first["train/loss"] != other["train/loss"]


def test_instantiated_objects_match_config(compose_cfg) -> None:
    cfg = compose_cfg("loss=mgd_hug", "optimizer=sgd", "scheduler=onecycle")
    criterion = instantiate(cfg.loss)
    assert (criterion.variant, criterion.alpha, criterion.beta) == ("mgd", 0.15, 0.03)
    module = build_module(cfg, input_shape=(1, 28, 28))
    assert module.scheduler_interval == "step"
