"""Every conf/data/*.yaml end to end: a fast_dev_run with cross-entropy and with a HUG loss."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixture_overrides import CIFAR_LT, FAST_RUN, IMAGENET, MNIST, NO_DOWNLOAD
from hydra.utils import instantiate

from hugnc.config import config_dir
from hugnc.continual import train_continual
from hugnc.data import ContinualDataModule, ImageDataModule
from hugnc.train import train

# Overrides that point each config at the fixtures of `data_root` (never a download).
FIXTURE = {
    "cifar10": NO_DOWNLOAD,
    "cifar100": NO_DOWNLOAD,
    "cifar10_lt": CIFAR_LT,
    "cifar100_lt": CIFAR_LT,
    "fashion_mnist": NO_DOWNLOAD,
    "fashion_mnist_lt": NO_DOWNLOAD,  # the real data, ratio 100
    "mnist": MNIST,
    "mnist5k": [],
    "imagenet": IMAGENET,
    "split_cifar10": NO_DOWNLOAD,
    "split_cifar100": NO_DOWNLOAD,
    "split_fashion_mnist": NO_DOWNLOAD,
}
# NC metrics and their pictures take seconds per test loop: measured in one case of each kind.
FAST = [*FAST_RUN, "model=lenet_pp", "model.widths=[8,8,8]", "model.kernel_size=3"]


def test_every_data_config_is_covered() -> None:
    configs = {path.stem for path in (config_dir() / "data").glob("*.yaml")}
    assert configs == set(FIXTURE)


def _compose(compose_cfg, name: str, data_root: Path, *extra: str):
    data_dir = data_root / "imagenet" if name == "imagenet" else data_root
    return compose_cfg(
        f"data={name}",
        f"data.data_dir={data_dir}",
        *FIXTURE[name],
        *FAST,
        *extra,
        config_name="continual" if name.startswith("split_") else "train",
    )


@pytest.mark.parametrize("loss", ["ce", "mhe_hug"])
@pytest.mark.parametrize("name", sorted(n for n in FIXTURE if not n.startswith("split_")))
def test_fast_dev_run(compose_cfg, data_root: Path, cifar_md5_ignored, name: str, loss: str):
    cfg = _compose(compose_cfg, name, data_root, f"loss={loss}")
    metrics = train(cfg)
    assert {"train/loss", "val/acc", "test/acc"} <= metrics.keys()
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, ImageDataModule)
    assert datamodule.num_classes == cfg.data.num_classes


@pytest.mark.parametrize("loss", ["ce", "mgd_hug"])
@pytest.mark.parametrize("name", sorted(n for n in FIXTURE if n.startswith("split_")))
def test_fast_dev_run_continual(
    compose_cfg, data_root: Path, cifar_md5_ignored, name: str, loss: str
) -> None:
    cfg = _compose(compose_cfg, name, data_root, f"loss={loss}")
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, ContinualDataModule) and datamodule.num_tasks == 5
    results = train_continual(cfg)
    matrix = results["accuracy_matrix"]
    assert len(matrix) == 5 and all(value is not None for value in matrix[-1])
    assert math.isfinite(results["average_accuracy"] + results["average_forgetting"])


@pytest.mark.parametrize("name", ["cifar10", "split_cifar10"])
def test_default_callbacks_on_new_datasets(
    compose_cfg, data_root: Path, cifar_md5_ignored, name: str
) -> None:
    """The NC metrics callback on the batched in-memory datasets and on continual splits."""
    overrides = [o for o in FAST if o != "~callbacks.neural_collapse"]
    continual = name.startswith("split_")
    cfg = compose_cfg(
        f"data={name}",
        f"data.data_dir={data_root}",
        *FIXTURE[name],
        *overrides,
        *(["data.num_tasks=2"] if continual else []),
        "model.feature_dim=2",
        config_name="continual" if continual else "train",
    )
    if continual:
        assert len(train_continual(cfg)["accuracy_matrix"]) == 2
    else:
        metrics = train(cfg)
        assert any(key.startswith("test/nc") for key in metrics), "no NC metrics"


@pytest.mark.parametrize(
    ("name", "values"),
    [
        ("cifar10", {"batch_size": 512, "val_size": 0, "augment": True, "num_classes": 10}),
        ("cifar100", {"batch_size": 512, "num_classes": 100, "augment": True}),
        ("cifar10_lt", {"imb_type": "exp", "imb_factor": 0.01, "num_classes": 10}),
        ("cifar100_lt", {"imb_type": "exp", "imb_factor": 0.01, "num_classes": 100}),
        ("fashion_mnist_lt", {"imb_factor": 0.01, "val_size": 0}),
        ("imagenet", {"image_size": 224, "num_workers": 8, "persistent_workers": True}),
        ("split_cifar100", {"num_tasks": 5, "scenario": "class", "dataset": "cifar100"}),
    ],
)
def test_config_defaults(compose_cfg, name: str, values: dict) -> None:
    cfg = compose_cfg(f"data={name}")
    assert {key: cfg.data[key] for key in values} == values


def test_mnist_defaults_to_the_2d_lenet(compose_cfg) -> None:
    cfg = compose_cfg("data=mnist")
    assert cfg.model._target_ == "hugnc.models.LeNetPlusPlus" and cfg.model.feature_dim == 2


def test_continual_command_line(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hugnc.continual",
            *FAST,
            "data.num_tasks=2",
            "data.download=false",
        ],
        cwd=tmp_path,
        env=os.environ | {"HUGNC_DATA_DIR": str(fashion_mnist_dir), "HYDRA_FULL_ERROR": "0"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "continual" / "runs").iterdir()
    assert f"run directory: {run_dir.resolve()}" in result.stdout
    assert "average accuracy = " in result.stdout
    results = json.loads((run_dir / "continual.json").read_text())
    assert len(results["accuracy_matrix"]) == 2 and results["dataset"] == "fashion_mnist"
