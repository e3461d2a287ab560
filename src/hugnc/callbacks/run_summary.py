"""One line at the start of a fit saying what will run, and the projected wall time after its
first epoch (Lightning's progress bar shows the epoch, not the whole run)."""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timedelta
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from hugnc.callbacks import _lightning

log = logging.getLogger("hugnc")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def describe_criterion(criterion: Any) -> str:
    """``MHE-HUG (alpha=0.15, beta=0.015)``, ``CE (label_smoothing=0.0)``... (any criterion: its
    attributes are read when present)."""
    variant = getattr(criterion, "variant", None)
    if variant is not None:
        return f"{variant.upper()}-HUG (alpha={criterion.alpha:g}, beta={criterion.beta:g})"
    smoothing = getattr(criterion, "label_smoothing", 0.0)
    return "CE" + (f" (label_smoothing={smoothing:g})" if smoothing else "")


class RunSummary(Callback):
    """Logs (rank 0) ``run: <data> | <model> d=<d> | <loss> | <epochs> x <steps> steps |
    <device>, precision <precision>`` when fit starts, and the projected wall time when the
    first epoch of this process ends (epochs left x that epoch's time, validation included)."""

    def __init__(self) -> None:
        self._epoch_start: float | None = None
        self._projected = False

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Every rank: building the training loader below may synchronize the ranks.
        datamodule = _lightning.datamodule(trainer)
        data = getattr(datamodule, "dataset_name", type(datamodule).__name__)
        counts = getattr(datamodule, "class_counts", None)
        images = sum(counts) if counts else None
        epochs = trainer.max_epochs
        total = f"{epochs} epochs"
        # Builds the training loader if it is not yet (as a step-based LR schedule does).
        steps = trainer.estimated_stepping_batches
        if math.isfinite(steps) and epochs and epochs > 0:
            total += f" x {int(steps) // epochs} steps = {int(steps):,} steps"
        backbone = _lightning.backbone(pl_module)
        device = trainer.strategy.root_device.type
        devices = f"{trainer.num_devices} x {device}" if trainer.num_devices > 1 else device
        parts = [
            f"{data}" + (f" ({images:,} training images)" if images else ""),
            f"{type(backbone).__name__} d={backbone.feature_dim}",
            describe_criterion(pl_module.criterion),
            total,
            f"{devices}, precision {trainer.precision}",
        ]
        if trainer.is_global_zero:
            log.info("run: " + " | ".join(parts))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._epoch_start is None:
            self._epoch_start = time.monotonic()

    @rank_zero_only
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._projected or self._epoch_start is None or trainer.sanity_checking:
            return
        self._projected = True
        seconds = time.monotonic() - self._epoch_start
        # None: no epoch limit (Lightning's -1, as with max_steps alone).
        max_epochs = -1 if trainer.max_epochs is None else trainer.max_epochs
        left = max(max_epochs - trainer.current_epoch - 1, 0)
        finish = datetime.now() + timedelta(seconds=seconds * left)
        log.info(
            f"first epoch took {_duration(seconds)}; projected {_duration(seconds * left)} "
            f"for the {left} epochs left (until ~{finish:%Y-%m-%d %H:%M})"
        )
