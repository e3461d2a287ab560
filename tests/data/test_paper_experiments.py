"""conf/experiment/paper/*: every paper experiment composes with the paper's settings for every
loss, and runs end to end (fast_dev_run) on the data fixtures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fixture_overrides import CIFAR_LT, FAST_RUN, IMAGENET, MNIST, NO_DOWNLOAD

from hugnc.config import config_dir
from hugnc.continual import train_continual
from hugnc.train import train

LOSSES = ["ce", "mhe_hug", "mhs_hug", "mgd_hug"]
PAPER_WEIGHTS = {"mhe_hug": (0.15, 0.015), "mhs_hug": (0.15, 0.015), "mgd_hug": (0.15, 0.03)}
# Paper experiment -> overrides pointing it at the fixtures of `data_root`, never a download
# (long-tailed runs use ratio 2; the paper ratios are checked on the composed config).
CIFAR = NO_DOWNLOAD
PAPER = {
    "cifar10": CIFAR,
    "cifar10_robustness": CIFAR,
    "cifar100": CIFAR,
    "cifar100_gnc_d64": CIFAR,
    "cifar100_gnc_d128": CIFAR,
    "mnist_2d": MNIST,
    "cifar10_lt_r10": CIFAR_LT,
    "cifar10_lt_r50": CIFAR_LT,
    "cifar10_lt_r100": CIFAR_LT,
    "cifar100_lt_r10": CIFAR_LT,
    "cifar100_lt_r50": CIFAR_LT,
    "cifar100_lt_r100": CIFAR_LT,
    "imagenet": IMAGENET,
    "split_cifar10": CIFAR,
    "split_cifar100": CIFAR,
}


def _config_name(name: str) -> str:
    return "continual" if name.startswith("split_") else "train"


def test_every_paper_experiment_is_covered() -> None:
    shipped = {path.stem for path in (config_dir() / "experiment" / "paper").glob("*.yaml")}
    assert shipped == set(PAPER)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_settings(compose_cfg, name: str, loss: str) -> None:
    cfg = compose_cfg(f"experiment=paper/{name}", f"loss={loss}", config_name=_config_name(name))
    # The continual driver's own config names its outputs (logs/continual/).
    assert cfg.task_name == ("continual" if name.startswith("split_") else f"paper_{name}")
    assert cfg.data.batch_size == 512
    assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.nesterov is False
    if loss in PAPER_WEIGHTS:
        assert (cfg.loss.alpha, cfg.loss.beta) == PAPER_WEIGHTS[loss]
        assert cfg.head._target_ == "hugnc.models.ProxyHead"
    else:
        assert cfg.head._target_ == "hugnc.models.LinearHead"
    if name == "imagenet":
        assert cfg.model.arch == "resnet50" and cfg.trainer.max_epochs == 90
        assert list(cfg.scheduler.factory.milestones) == [30, 60, 80]
        assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.2, 1e-4)
        return
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (0.1, 2e-4)
    if name.startswith("split_"):
        assert cfg.data.num_tasks == 5 and cfg.data.scenario == "class"
        assert cfg.scheduler.factory.T_max == cfg.trainer.max_epochs == 50
        return
    assert cfg.trainer.max_epochs == 200
    assert list(cfg.scheduler.factory.milestones) == [60, 120, 180]
    if name == "cifar10_robustness":
        attacks = cfg.callbacks.robustness
        assert (attacks.eps, attacks.alpha) == ("8/255", "2/255"), attacks
    if name == "mnist_2d":
        assert cfg.model.feature_dim == 2 and cfg.model.widths == [32, 64, 128]
        return
    assert cfg.model._target_ == "hugnc.models.CifarResNet" and cfg.model.depth == 18
    assert cfg.data.num_classes == (100 if "cifar100" in name else 10)
    if "_gnc_d" in name:
        assert cfg.model.feature_dim == int(name.rsplit("_d", 1)[1])
    if "_lt_r" in name:
        ratio = int(name.rsplit("_r", 1)[1])
        assert cfg.data.imb_type == "exp" and cfg.data.imb_factor == pytest.approx(1 / ratio)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_experiment_runs(
    compose_cfg, data_root: Path, cifar_md5_ignored, name: str, loss: str
) -> None:
    data_dir = data_root / "imagenet" if name == "imagenet" else data_root
    cfg = compose_cfg(
        f"experiment=paper/{name}",
        f"loss={loss}",
        f"data.data_dir={data_dir}",
        *PAPER[name],
        *FAST_RUN,
        config_name=_config_name(name),
    )
    if name.startswith("split_"):
        result = train_continual(cfg)
        assert len(result["accuracy_matrix"]) == 5
        return
    metrics = train(cfg)
    assert {"train/loss", "val/acc", "test/acc"} <= metrics.keys()
    if name == "cifar10_robustness":
        robust = {f"test/robust_acc/{attack}" for attack in ("fgsm", "pgd10", "pgd20")}
        assert robust <= metrics.keys(), metrics.keys()
    assert all(math.isfinite(value) for value in metrics.values()), metrics
