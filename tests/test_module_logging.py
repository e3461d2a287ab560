"""HUGClassifier's logged metrics: epoch means of every loss term and the accuracy, exact against
a naive recomputation over the same batches (ragged last batch included)."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning import Callback, Trainer
from torch.utils.data import DataLoader, TensorDataset

from hugnc.losses import CrossEntropyLoss, HUGLoss
from hugnc.models import LinearHead, ProxyHead
from hugnc.module import HUGClassifier

NUM_CLASSES = 4


def _module(hug: bool) -> HUGClassifier:
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    backbone.feature_dim = 3
    head = ProxyHead(3, NUM_CLASSES) if hug else LinearHead(3, NUM_CLASSES)
    criterion = HUGLoss("mhe", alpha=0.1, beta=1.0) if hug else CrossEntropyLoss()
    return HUGClassifier(
        backbone=backbone,
        head=head,
        criterion=criterion,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        num_classes=NUM_CLASSES,
    )


def _loader(samples: int, batch_size: int, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(
        torch.randn(samples, 12, generator=generator),
        torch.randint(0, NUM_CLASSES, (samples,), generator=generator),
    )
    return DataLoader(data, batch_size=batch_size)


class RecordSteps(Callback):
    """Every training step's loss terms, logits and targets, as the module computed them (the
    logits from the head as it was before the step's update)."""

    def __init__(self) -> None:
        self.batches: list[tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.head_before_step = copy.deepcopy(pl_module.head)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            logits = self.head_before_step.logits(outputs["features"])
        self.batches.append((outputs["loss_terms"], logits, outputs["targets"]))


def _trainer(**kwargs) -> Trainer:
    return Trainer(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


@pytest.mark.parametrize("hug", [True, False])
def test_evaluation_metrics_are_sample_weighted_epoch_means(hug: bool) -> None:
    module = _module(hug)
    loader = _loader(samples=22, batch_size=8, seed=1)  # batches of 8, 8 and 6
    metrics = _trainer().test(module, dataloaders=loader, verbose=False)[0]
    module.eval()
    terms: dict[str, list[float]] = {}
    weights, correct = [], 0
    with torch.no_grad():
        for images, targets in loader:  # naive: one batch at a time, as the module's step does
            features = module.features(images)
            logits = module.head.logits(features)
            for name, value in module._loss_terms(features, logits, targets).items():
                terms.setdefault(name, []).append(float(value))
            weights.append(len(targets))
            correct += int((logits.argmax(1) == targets).sum())
    assert set(terms) == ({"loss", "loss_intra", "loss_inter"} if hug else {"loss"})
    for name, values in terms.items():
        expected = sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)
        assert metrics[f"test/{name}"] == pytest.approx(expected, rel=1e-5)
    assert metrics["test/acc"] == pytest.approx(correct / 22, abs=1e-6)


def test_training_epoch_means_match_the_steps_and_reset_each_epoch() -> None:
    module = _module(hug=True)
    recorder = RecordSteps()
    trainer = _trainer(max_epochs=2, callbacks=[recorder], limit_val_batches=0)
    trainer.fit(module, train_dataloaders=_loader(samples=20, batch_size=8, seed=2))
    # Epoch 2's batches only (3 per epoch): the sums start again at each epoch.
    last_epoch = recorder.batches[3:]
    sizes = [len(targets) for _, _, targets in last_epoch]
    assert sizes == [8, 8, 4]
    metrics = trainer.callback_metrics
    for name in ("loss", "loss_intra", "loss_inter"):
        expected = sum(float(t[name]) * n for (t, _, _), n in zip(last_epoch, sizes, strict=True))
        assert float(metrics[f"train/{name}"]) == pytest.approx(expected / 20, rel=1e-5)
    correct = sum(int((logits.argmax(1) == targets).sum()) for _, logits, targets in last_epoch)
    assert float(metrics["train/acc"]) == pytest.approx(correct / 20, abs=1e-6)
    # The per-step loss curve is logged too (last step of the run).
    assert float(metrics["train/loss_step"]) == pytest.approx(float(last_epoch[-1][0]["loss"]))


def test_validation_means_do_not_mix_sanity_check_batches() -> None:
    module = _module(hug=False)
    val = _loader(samples=12, batch_size=4, seed=3)
    trainer = _trainer(max_epochs=1, num_sanity_val_steps=2)
    trainer.fit(module, train_dataloaders=_loader(8, 4, 4), val_dataloaders=val)
    # Validated once after the epoch, with the final weights: the same numbers as a fresh run.
    reference = _trainer().validate(module, dataloaders=val, verbose=False)[0]
    assert float(trainer.callback_metrics["val/loss"]) == pytest.approx(reference["val/loss"])
    assert float(trainer.callback_metrics["val/acc"]) == pytest.approx(reference["val/acc"])


def test_head_and_data_must_agree_on_the_number_of_classes() -> None:
    backbone = torch.nn.Linear(12, 3)
    with pytest.raises(ValueError, match="the head has 4 classes but the data 10"):
        HUGClassifier(
            backbone=backbone,
            head=ProxyHead(3, 4),
            criterion=HUGLoss("mhe", alpha=0.1, beta=1.0),
            optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
            num_classes=10,
        )
