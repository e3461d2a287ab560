"""Each data= option brings its model (the paper's, or common practice) unless model= is given."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from hugnc.config import config_dir
from hugnc.models import CifarResNet, LeNetPlusPlus, TorchvisionResNet

CIFAR = ["cifar10", "cifar100", "cifar10_lt", "cifar100_lt", "split_cifar10", "split_cifar100"]
FASHION = ["fashion_mnist", "fashion_mnist_lt", "split_fashion_mnist"]
#: data option -> (backbone class, feature dimension, LeNet++ widths and kernel or None)
EXPECTED = {
    **{name: (CifarResNet, 512, None) for name in CIFAR},
    "imagenet": (TorchvisionResNet, 2048, None),
    "mnist": (LeNetPlusPlus, 2, ([32, 64, 128], 5)),
    "mnist5k": (LeNetPlusPlus, 2, ([32, 64, 128], 5)),
    **{name: (LeNetPlusPlus, 2, ([16, 32, 64], 3)) for name in FASHION},
}
INPUT = {"imagenet": (3, 32, 32), "mnist": (1, 28, 28), "mnist5k": (1, 28, 28)}


def _backbone(cfg, name: str):
    shape = INPUT.get(name, (1, 28, 28) if "mnist" in name else (3, 32, 32))
    return instantiate(cfg.model, input_shape=shape)


def test_every_data_option_has_a_default_model() -> None:
    options = {p.stem for p in (config_dir() / "data").glob("*.yaml")}
    assert options == set(EXPECTED)
    assert options == {p.stem for p in (config_dir() / "model" / "for_data").glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_data_brings_its_model_and_command_line_model_wins(compose_cfg, name: str) -> None:
    config_name = "continual" if name.startswith("split_") else "train"
    kind, dim, lenet = EXPECTED[name]
    backbone = _backbone(compose_cfg(f"data={name}", config_name=config_name), name)
    assert type(backbone) is kind and backbone.feature_dim == dim
    if lenet is not None:
        widths, kernel = lenet
        cfg = compose_cfg(f"data={name}", config_name=config_name)
        assert list(cfg.model.widths) == widths and cfg.model.kernel_size == kernel

    # model= on the command line always wins, in both directions ...
    other = "lenet_pp" if kind is not LeNetPlusPlus else "resnet18"
    cfg = compose_cfg(f"data={name}", f"model={other}", config_name=config_name)
    expected_target = "LeNetPlusPlus" if other == "lenet_pp" else "CifarResNet"
    assert cfg.model._target_ == f"hugnc.models.{expected_target}"
    # ... and so does model.feature_dim, on the data's own model.
    cfg = compose_cfg(f"data={name}", "model.feature_dim=16", config_name=config_name)
    backbone = _backbone(cfg, name)
    assert type(backbone) is kind and backbone.feature_dim == 16


@pytest.mark.parametrize(
    ("overrides", "target", "dim"),
    [
        (["experiment=paper/cifar10"], "CifarResNet", None),
        (["experiment=paper/cifar10", "model=lenet_pp"], "LeNetPlusPlus", 2),
        (["experiment=paper/cifar100_gnc_d64"], "CifarResNet", 64),
        (["experiment=paper/mnist_2d"], "LeNetPlusPlus", 2),
        (["experiment=paper/imagenet"], "TorchvisionResNet", None),
        (["experiment=quickstart", "data=cifar10"], "LeNetPlusPlus", 2),
        (["experiment=paper_budget", "model.feature_dim=2"], "LeNetPlusPlus", 2),
        (["data=cifar10", "experiment=results"], "LeNetPlusPlus", 2),
    ],
)
def test_experiments_keep_or_override_the_data_model(
    compose_cfg, overrides: list[str], target: str, dim: int | None
) -> None:
    cfg = compose_cfg(*overrides)
    assert cfg.model._target_ == f"hugnc.models.{target}" and cfg.model.feature_dim == dim


def test_each_job_of_a_multirun_gets_its_data_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Composed as the basic sweeper composes each job (Hydra's loader, the config check's job
    list)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hugnc.config import config_dir
    from hugnc.preflight import sweep_jobs

    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for overrides, expected in [
            (["data=cifar10,mnist"], ["CifarResNet", "LeNetPlusPlus"]),
            (["data=cifar10,mnist", "model=resnet18"], ["CifarResNet", "CifarResNet"]),
        ]:
            master = loader.load_configuration("train", overrides, run_mode=RunMode.MULTIRUN)
            jobs = sweep_jobs(master)
            targets = [
                loader.load_sweep_config(master, job.overrides).model._target_ for job in jobs
            ]
            assert targets == [f"hugnc.models.{name}" for name in expected]
