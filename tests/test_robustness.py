"""Adversarial robustness: hugnc.robustness, the callback and `hugnc-attack`, on Fashion-MNIST."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning import Trainer
from torch import nn
from torch.utils.data import TensorDataset

from hugnc.callbacks import AdversarialRobustness
from hugnc.data import FashionMNISTDataModule, split_loader
from hugnc.losses import CrossEntropyLoss, HUGLoss
from hugnc.models import LinearHead, ProxyHead
from hugnc.module import HUGClassifier
from hugnc.robustness import (
    AttackSpec,
    LogitsModel,
    build_attack,
    from_pixels,
    normalization_stats,
    parse_attacks,
    parse_budget,
    robust_accuracy,
    to_pixels,
)
from hugnc.tools.attack import main as attack_main
from hugnc.tools.runs import load_run

FASHION_STATS = ((0.286,), (0.353,))


class _MLP(nn.Sequential):
    """A small backbone with BatchNorm, so eval/train mode matters (as in LeNet++/ResNets)."""

    def __init__(self) -> None:
        super().__init__(
            nn.Flatten(), nn.Linear(784, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16)
        )
        self.feature_dim = 16


@pytest.fixture(scope="module")
def datamodule(fashion_mnist_dir: Path) -> FashionMNISTDataModule:
    dm = FashionMNISTDataModule(
        str(fashion_mnist_dir), batch_size=128, eval_batch_size=250, val_size=0
    )
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module", params=["hug", "ce"])
def trained(request: pytest.FixtureRequest, datamodule: FashionMNISTDataModule) -> HUGClassifier:
    """A HUG (proxy head, cosine logits) or CE model trained 300 steps on real Fashion-MNIST."""
    torch.manual_seed(0)
    if request.param == "hug":
        head, criterion = ProxyHead(16, 10), HUGLoss("mhe", alpha=0.15, beta=1.0)
    else:
        head, criterion = LinearHead(16, 10), CrossEntropyLoss()
    module = HUGClassifier(_MLP(), head, criterion, partial(torch.optim.SGD, lr=0.05), 10)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9)
    module.train()
    for step, (images, targets) in enumerate(datamodule.train_dataloader()):
        features = module.backbone(images)
        loss = module._loss_terms(features, module.head.logits(features), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        module.head.after_optimizer_step()
        if step == 300:
            break
    return module.eval()


def test_budgets_and_attack_specs() -> None:
    assert parse_budget("8/255") == pytest.approx(8 / 255)
    assert parse_budget(" 0.3 ") == 0.3 and parse_budget(1) == 1.0
    for bad in ("-0.1", "1/0", "eight", float("nan")):
        with pytest.raises(ValueError):
            parse_budget(bad)
    with pytest.raises(
        ValueError, match=r"\[0, 1\] pixel units .*got 8; for 8 of 255 levels write 8/255"
    ):
        parse_budget(8)  # a slip for 8/255
    specs = parse_attacks(
        ["fgsm", "pgd", "pgd20", {"name": "pgd", "steps": 5, "eps": "0.3", "label": "big"}],
        eps="8/255",
        alpha="2/255",
        random_start=False,
    )
    assert [s.label for s in specs] == ["fgsm", "pgd10", "pgd20", "big"]
    assert [s.steps for s in specs] == [1, 10, 20, 5]
    assert specs[1].eps == pytest.approx(8 / 255) and specs[1].alpha == pytest.approx(2 / 255)
    assert specs[3].eps == 0.3 and not specs[3].random_start
    assert AttackSpec("fgsm", steps=7, random_start=True) == AttackSpec("fgsm")
    with pytest.raises(ValueError, match="unique"):
        parse_attacks(["pgd10", {"name": "pgd"}])
    with pytest.raises(ValueError, match="unknown attack"):
        parse_attacks(["cw"])
    with pytest.raises(ValueError, match="allows only"):
        parse_attacks([{"name": "pgd", "epsilon": 0.1}])


def test_normalization_stats_of_every_kind_of_datamodule(tmp_path) -> None:
    """Read from the datamodule's mean/std: in-memory datasets, ImageNet (folder + transforms),
    continual splits (their base dataset's); nothing is looked up in transforms."""
    from hugnc.data import CIFAR10DataModule, ContinualDataModule, ImageNetDataModule

    cifar = CIFAR10DataModule(str(tmp_path))
    assert normalization_stats(cifar) == (cifar.mean, cifar.std)
    assert normalization_stats(ImageNetDataModule(str(tmp_path))) == (
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    )
    continual = ContinualDataModule("cifar10", num_tasks=5, data_dir=str(tmp_path))
    assert normalization_stats(continual) == (cifar.mean, cifar.std)
    with pytest.raises(ValueError, match="pass mean and std"):
        normalization_stats(SimpleNamespace(test_set=TensorDataset(torch.zeros(2))))


@pytest.mark.real_data
def test_pixels_round_trip_and_wrapper_reproduce_the_module(
    trained: HUGClassifier, datamodule: FashionMNISTDataModule
) -> None:
    mean, std = normalization_stats(datamodule)
    assert (mean, std) == FASHION_STATS
    images, targets = next(iter(datamodule.test_dataloader()))
    pixels = to_pixels(images, mean, std)
    assert pixels.min() >= 0 and pixels.max() <= 1
    # Fashion-MNIST is uint8 / 255: the pixels are recovered to float32 rounding.
    assert torch.allclose(pixels * 255, (pixels * 255).round(), atol=1e-3)
    assert torch.allclose(from_pixels(pixels, mean, std), images, atol=1e-5)
    model = LogitsModel(trained).eval()
    with torch.no_grad():
        expected = trained(images)
        assert torch.allclose(model(images), expected, atol=1e-5)
        assert torch.allclose(model(from_pixels(pixels, mean, std)), expected, atol=1e-5)
    # torchattacks >= 3.5 takes and returns normalized images, attacking in pixel space.
    attack = build_attack(model, AttackSpec("pgd", eps=0.0, steps=2), mean, std)
    assert torch.allclose(attack.inverse_normalize(images), pixels, atol=1e-5)
    assert torch.allclose(attack(images, targets), images, atol=1e-5)


@pytest.mark.real_data
def test_zero_budget_attacks_equal_clean_accuracy(
    trained: HUGClassifier, datamodule: FashionMNISTDataModule
) -> None:
    specs = parse_attacks(
        [
            {"name": "pgd", "steps": 0, "random_start": False},
            {"name": "pgd", "steps": 3, "eps": 0.0, "label": "pgd3_eps0"},
            {"name": "fgsm", "eps": 0.0},
        ],
        eps=0.1,
        alpha=0.02,
    )
    batches = split_loader(datamodule, "test", max_batches=2)
    trained.train()  # robust_accuracy evaluates in eval mode and restores the mode
    result = robust_accuracy(trained, batches, specs, *FASHION_STATS)
    assert trained.training
    trained.eval()
    assert result.total == 500
    assert result.clean_acc > 0.7
    assert result.robust_correct == {s.label: result.clean_correct for s in specs}
    assert result.max_linf == {s.label: 0.0 for s in specs}


@pytest.mark.real_data
def test_attacks_lower_the_accuracy_within_their_budget(
    trained: HUGClassifier, datamodule: FashionMNISTDataModule
) -> None:
    specs = parse_attacks(["fgsm", "pgd10"], eps=0.1, alpha=0.02)
    batches = split_loader(datamodule, "test", max_batches=2)
    torch.manual_seed(0)
    result = robust_accuracy(trained, batches, specs, *FASHION_STATS)
    clean, fgsm, pgd = result.clean_acc, result.robust_acc("fgsm"), result.robust_acc("pgd10")
    assert clean > 0.7
    assert fgsm < clean - 0.1
    assert pgd <= fgsm and pgd < clean - 0.2
    for spec in specs:  # the budget is used and respected, in [0, 1] pixel units
        assert 0.099 < result.max_linf[spec.label] <= 0.1 + 1e-5
    assert result.metrics() == {
        "test/clean_acc": clean,
        "test/robust_acc/fgsm": fgsm,
        "test/robust_acc/pgd10": pgd,
    }
    assert "pgd10" in result.table() and json.dumps(result.to_json())


@pytest.mark.real_data
def test_callback_logs_clean_and_robust_accuracy(
    trained: HUGClassifier, datamodule: FashionMNISTDataModule
) -> None:
    attacks = ["fgsm", {"name": "pgd", "steps": 3, "random_start": False}]
    callback = AdversarialRobustness(attacks=attacks, eps=0.1, alpha="1/40", max_batches=1)
    trainer = Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_test_batches=1,
        callbacks=[callback],
    )
    trainer.test(trained, datamodule=datamodule, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    expected = robust_accuracy(
        trained,
        split_loader(datamodule, "test", max_batches=1),
        parse_attacks(attacks, eps=0.1, alpha=0.025),
        *FASHION_STATS,
    ).metrics()
    assert set(expected) == {"test/clean_acc", "test/robust_acc/fgsm", "test/robust_acc/pgd3"}
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-6), key
    assert logged["test/robust_acc/pgd3"] < logged["test/clean_acc"]


@pytest.mark.real_data
def test_callbacks_robustness_config_adds_the_callback(compose_cfg) -> None:
    cfg = compose_cfg("callbacks=robustness", "logger=csv")
    assert {"model_checkpoint", "neural_collapse", "robustness"} <= set(cfg.callbacks)
    callback = instantiate(cfg.callbacks.robustness)
    assert isinstance(callback, AdversarialRobustness)
    assert [s.label for s in callback.specs] == ["fgsm", "pgd10", "pgd20"]
    assert callback.specs[2].eps == pytest.approx(8 / 255)
    assert callback.specs[2].alpha == pytest.approx(2 / 255)
    assert callback.max_batches is None
    cfg = compose_cfg(
        "callbacks=robustness",
        "callbacks.robustness.eps=0.3",
        "callbacks.robustness.attacks=[fgsm,pgd50]",
    )
    callback = instantiate(cfg.callbacks.robustness)
    assert [(s.label, s.eps, s.steps) for s in callback.specs] == [
        ("fgsm", 0.3, 1),
        ("pgd50", 0.3, 50),
    ]


@pytest.mark.real_data
@pytest.mark.slow
def test_attack_cli_writes_robustness_json(
    tiny_run_dir: Path, tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run_dir)
    script = Path(sys.executable).parent / "hugnc-attack"
    result = subprocess.run(
        [
            str(script),
            str(run_dir),
            "--checkpoint",
            "last",
            "--attack",
            "fgsm",
            "pgd",
            "--steps",
            "0",
            "5",
            "--no-random-start",
            "--eps",
            "0.1",
            "--alpha",
            "1/40",
            "--max-batches",
            "1",
            "--batch-size",
            "200",
            "--data-dir",
            str(fashion_mnist_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((run_dir / "robustness.json").read_text())
    assert saved["samples"] == 200 and saved["checkpoint"].endswith("last.ckpt")
    assert (saved["mean"], saved["std"]) == ([0.286], [0.353])
    attacks = saved["attacks"]
    assert list(attacks) == ["fgsm", "pgd0", "pgd5"]
    assert attacks["pgd5"]["eps"] == 0.1 and attacks["pgd5"]["alpha"] == 0.025
    assert attacks["pgd0"]["robust_acc"] == saved["clean_acc"]
    assert attacks["pgd5"]["robust_acc"] <= saved["clean_acc"]
    assert attacks["fgsm"]["robust_acc"] <= saved["clean_acc"]
    assert "pgd5" in result.stdout and "clean" in result.stdout
    # The numbers of the library on the same checkpoint and test subset (the tiny run's model is
    # barely trained: the in-process tests above check that attacks lower the accuracy).
    run = load_run(run_dir, "last", data_dir=fashion_mnist_dir)
    specs = parse_attacks(["fgsm", "pgd0", "pgd5"], eps=0.1, alpha=0.025, random_start=False)
    batches = split_loader(run.datamodule, "test", max_batches=1, batch_size=200)
    expected = robust_accuracy(run.module, batches, specs, *FASHION_STATS).to_json()
    assert saved["clean_acc"] == expected["clean_acc"]
    for label, values in expected["attacks"].items():
        assert attacks[label]["robust_acc"] == values["robust_acc"], label


def test_attack_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        attack_main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is not a hugnc run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        attack_main([str(tmp_path), "--eps", "eight"])
    assert exit_info.value.code == 2
    assert "--eps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        attack_main([str(tmp_path), "--eps", "8"])
    assert exit_info.value.code == 2
    assert "for 8 of 255 levels write 8/255" in capsys.readouterr().err


@pytest.mark.real_data
def test_attacks_under_float16_autocast_match_float32(
    trained: HUGClassifier, datamodule: FashionMNISTDataModule
) -> None:
    """16-mixed runs the evaluation under float16 autocast without loss scaling: input gradients
    that small underflow to zero in float16 and FGSM/PGD would stall. A model with logits scaled
    down (same predictions, gradients ~1e-5 x smaller) shows it: attacks must still run in float32.
    """
    import copy

    model = copy.deepcopy(trained)
    with torch.no_grad():
        for parameter in model.head.parameters():
            parameter.mul_(1e-5)
        if hasattr(model.head, "scale"):
            model.head.scale = model.head.scale * 1e-5
    specs = parse_attacks(["fgsm"], eps=0.1, alpha=0.02)
    batches = list(split_loader(datamodule, "test", max_batches=1))

    def half() -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.float16)

    reference = robust_accuracy(model, batches, specs, *FASHION_STATS)
    mixed = robust_accuracy(model, batches, specs, *FASHION_STATS, forward_context=half)
    assert reference.robust_acc("fgsm") < reference.clean_acc - 0.1
    assert abs(mixed.clean_acc - reference.clean_acc) <= 0.01
    assert abs(mixed.robust_acc("fgsm") - reference.robust_acc("fgsm")) <= 0.02
