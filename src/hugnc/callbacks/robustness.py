"""Adversarial robustness on the test loop: clean and FGSM/PGD accuracy (``callbacks=robustness``).

The attacks themselves live in :mod:`hugnc.robustness` (torchattacks, no Lightning); this callback
runs :func:`hugnc.robustness.robust_accuracy` when the test loop ends and logs the numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from hugnc.callbacks._lightning import datamodule as trainer_datamodule
from hugnc.callbacks._lightning import fast_dev_run
from hugnc.data.subsets import split_loader
from hugnc.robustness import (
    DEFAULT_ALPHA,
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    RobustnessResult,
    normalization_stats,
    parse_attacks,
    robust_accuracy,
)


class AdversarialRobustness(Callback):
    """Clean and robust test accuracy under L-inf FGSM/PGD (torchattacks), after each test loop.

    At ``on_test_epoch_end`` it makes its own pass over (a seeded subset of) the test split with
    the tested weights: every batch is attacked by every attack. Logged (already summed over DDP
    ranks) as ``test/clean_acc`` and ``test/robust_acc/<label>`` (``fgsm``, ``pgd10``, ...), so
    they also land in the run's ``metrics.json``. ``test/clean_acc`` is the accuracy on the
    attacked subset (the whole test set when ``max_batches`` is null: then it equals
    ``test/acc``).

    Args:
        attacks: ``"fgsm"``, ``"pgd"`` (10 steps), ``"pgd<steps>"`` or mappings with the fields of
            :class:`hugnc.robustness.AttackSpec` (``{name: pgd, steps: 50, eps: 0.3}``).
        eps: L-inf budget in [0, 1] pixel units for attacks that do not set theirs; a number or a
            fraction string (``"8/255"``, the CIFAR default; MNIST-like data: 0.1 or 0.3).
        alpha: PGD step (pixel units) for attacks that do not set theirs.
        random_start: PGD's random start for attacks that do not set theirs.
        max_batches: cap on the global test batches attacked (``None``: the whole test set).
            Under ``fast_dev_run`` its batch count is used.
        batch_size: global batch size of the pass (default: the datamodule's eval batch size).
        seed: seeds the subset and PGD's random starts (torch's RNG state is restored after).
        mean, std: the images' normalization; default found on the datamodule
            (:func:`hugnc.robustness.normalization_stats`).
    """

    def __init__(
        self,
        attacks: Sequence[str | Mapping[str, Any]] = DEFAULT_ATTACKS,
        eps: float | str = DEFAULT_EPS,
        alpha: float | str = DEFAULT_ALPHA,
        random_start: bool = True,
        max_batches: int | None = None,
        batch_size: int | None = None,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or null, got {max_batches}")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither")
        self.specs = parse_attacks(attacks, eps, alpha, random_start)
        self.max_batches = max_batches
        self.batch_size = batch_size
        self.seed = seed
        self.stats = None if mean is None or std is None else (tuple(mean), tuple(std))
        #: The last result (this rank's counts, before the DDP sum).
        self.last_result: RobustnessResult | None = None

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        datamodule = trainer_datamodule(trainer)
        if datamodule is None:
            rank_zero_warn("AdversarialRobustness needs a datamodule: none given, skipped")
            return
        max_batches = int(fast_dev_run(trainer)) if fast_dev_run(trainer) else self.max_batches
        loader = split_loader(
            datamodule,
            "test",
            max_batches=max_batches,
            batch_size=self.batch_size,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            seed=self.seed,
        )
        mean, std = self.stats or normalization_stats(datamodule)
        device = pl_module.device
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed + trainer.global_rank)
            result = robust_accuracy(
                pl_module,
                loader,
                self.specs,
                mean,
                std,
                device=device,
                forward_context=trainer.precision_plugin.forward_context,
            )
        self.last_result = result
        counts = torch.tensor(
            [result.total, result.clean_correct]
            + [result.robust_correct[spec.label] for spec in self.specs],
            dtype=torch.float64,
            device=device,
        )
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        total = float(counts[0]) or float("nan")
        metrics = {"test/clean_acc": float(counts[1]) / total}
        for index, spec in enumerate(self.specs):
            metrics[f"test/robust_acc/{spec.label}"] = float(counts[2 + index]) / total
        pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        seconds = sum(result.seconds.values())
        lines = [f"adversarial robustness ({int(counts[0])} test images, {seconds:.1f} s):"]
        lines += [f"  {name} = {value:.4f}" for name, value in metrics.items()]
        lines += [f"  {spec.describe()}" for spec in self.specs]
        rank_zero_info("\n".join(lines))


__all__ = ["AdversarialRobustness"]
