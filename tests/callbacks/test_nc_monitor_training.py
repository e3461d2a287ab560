"""NeuralCollapseMonitor in short real trainings on real Fashion-MNIST (composed real configs)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from helpers.outputs import GEOMETRY_PICTURES
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Subset

from hugnc.metrics import NeuralCollapse
from hugnc.run_dir import find_checkpoint
from hugnc.train import build_module, train

pytestmark = pytest.mark.real_data


def metric_names(num_classes: int, dim: int) -> set[str]:
    """The keys NeuralCollapse.compute returns (from a throwaway metric on random data)."""
    metric = NeuralCollapse(num_classes, dim)
    metric.update(
        torch.randn(50, dim), torch.arange(50) % num_classes, torch.randn(50, num_classes)
    )
    return set(metric.compute(torch.randn(num_classes, dim)))


def logged(name: str) -> str:
    return f"gnc/{name[4:]}" if name.startswith("gnc_") else f"nc/{name}"


def samples(dataset, indices) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels at ``indices``, in that order, in one batch."""
    indices = [int(i) for i in indices]
    collate = getattr(dataset, "collate_fn", None)
    loader = DataLoader(Subset(dataset, indices), batch_size=len(indices), collate_fn=collate)
    images, targets = next(iter(loader))
    return images, torch.as_tensor(targets)


def features_of(module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    module.eval()
    with torch.no_grad():
        features = module.backbone(images)
        return features, module.head.logits(features)


def load_weights(module, path: Path) -> int:
    """Load a checkpoint's weights; return its epoch."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    return state["epoch"]


def two_pass_reference(module, images, targets, classifier_dim: int, means=None) -> dict:
    features, logits = features_of(module, images)
    if means is None:
        means = torch.stack([features[targets == c].double().mean(0) for c in range(10)])
    metric = NeuralCollapse(10, classifier_dim, class_means=means)
    metric.update(features, targets, logits)
    return metric.compute(module.head.classifier)


def assert_logged_match(saved: dict, reference: dict, prefix: str = "") -> None:
    """Logged values (float32 in Lightning) equal the reference; NaN values are not logged."""
    for name, value in reference.items():
        key = prefix + logged(name)
        if math.isnan(value):
            assert key not in saved, key
        else:
            assert saved[key] == pytest.approx(value, rel=2e-5, abs=1e-6), key


@pytest.mark.slow
def test_quickstart_logs_nc_gnc_writes_pictures_and_matches_the_metric(compose_cfg) -> None:
    """HUG, d = 2, W&B offline: every nc/* and gnc/* key each epoch, test/nc/* on the test loop,
    the pictures and curves on disk and in W&B, numbers equal to the metric on the same data."""
    cfg = compose_cfg(
        "experiment=quickstart",
        "debug=limit",
        "trainer.limit_train_batches=8",
        "trainer.limit_test_batches=2",
        "trainer.max_epochs=2",
        "~callbacks.progress_bar",
        "callbacks.neural_collapse.max_batches=2",
    )
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    saved = json.loads((run_dir / "metrics.json").read_text())
    defined = {logged(name) for name in metric_names(10, 2)}  # all defined for K = 10, d = 2
    assert defined <= saved.keys()
    assert {f"test/{key}" for key in defined} <= saved.keys()
    assert saved["nc/num_classes_seen"] == 10

    for name in GEOMETRY_PICTURES:
        assert (run_dir / name).stat().st_size > 10_000, name
    history = json.loads((run_dir / "nc_history.json").read_text())
    assert [entry["epoch"] for entry in history] == [0, 1]
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    media = {
        p.parent.name + "/" + p.name.split("_")[0] for p in offline_run.rglob("media/**/*.png")
    }
    assert {"train/feature", "train/class", "test/feature", "test/class", "nc/curves"} <= media

    # Same numbers from the metric on the same data: the documented subset of 2 * 1024 training
    # images (seeded permutation), with the weights of a checkpoint against the measurement of
    # that checkpoint's epoch (taken after validation, when the checkpoint is saved).
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule.input_shape)
    subset = torch.randperm(len(datamodule.train_set), generator=torch.Generator().manual_seed(0))
    train_x, train_y = samples(datamodule.train_set, subset[:2048])
    for checkpoint in (run_dir / "checkpoints").glob("epoch_*.ckpt"):
        epoch = load_weights(module, checkpoint)
        reference = two_pass_reference(module, train_x, train_y, 2)
        assert history[epoch].keys() - {"epoch"} == reference.keys()
        for name, value in reference.items():
            assert history[epoch][name] == pytest.approx(value, rel=1e-9, nan_ok=True), name
    assert history[-1]["nc1"] == pytest.approx(saved["nc/nc1"], rel=1e-6)
    # The test loop: best weights, class means of that training subset, the 2 test batches.
    load_weights(module, find_checkpoint(run_dir, "best"))
    features, _ = features_of(module, train_x)
    means = torch.stack([features[train_y == c].double().mean(0) for c in range(10)])
    test_x, test_y = samples(datamodule.test_set, range(2048))
    reference = two_pass_reference(module, test_x, test_y, 2, means=means)
    assert_logged_match(saved, reference, prefix="test/")
    assert metrics["test/nc/nc4"] == saved["test/nc/nc4"]


def test_ce_3d_on_val_every_second_epoch_without_test(compose_cfg) -> None:
    """Linear head, d = 3 (sphere picture), split=val, every_n_epochs=2 of 3, no test metrics."""
    cfg = compose_cfg(
        "loss=ce",
        "trainer=cpu",
        "logger=csv",
        "trainer.max_epochs=3",
        "debug=limit",
        "~callbacks.progress_bar",
        "model.feature_dim=3",
        "model.widths=[8,8,8]",
        "model.kernel_size=3",
        "data.batch_size=128",
        "data.eval_batch_size=500",
        "callbacks.neural_collapse.split=val",
        "callbacks.neural_collapse.every_n_epochs=2",
        "callbacks.neural_collapse.max_batches=1",
        "callbacks.neural_collapse.test=false",
        "callbacks.neural_collapse.feature_cache_mb=0",
    )
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    history = json.loads((run_dir / "nc_history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]  # epoch 1 periodic, epoch 2 last
    (metrics_csv,) = run_dir.glob("csv/**/metrics.csv")
    rows = [row for row in csv.DictReader(metrics_csv.open()) if row.get("nc/nc1")]
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert {"feature_geometry_val.png", "class_cosines_val.png", "nc_curves.png"} <= {
        p.name for p in run_dir.iterdir()
    }
    assert not list(run_dir.glob("*_test.png"))
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert not any(key.startswith("test/nc/") for key in saved)
    # d = 3 < K - 1: no simplex ETF and no closed-form optimum, so that key is not logged.
    assert "gnc/optimal_min_angle_deg" not in saved and "nc/nc2_etf_means" in saved
    assert saved["nc/nc4"] == pytest.approx(history[-1]["nc4"], rel=1e-6)
