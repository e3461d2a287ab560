"""A Rich progress bar that reads the logged values from the device every N steps, not every step.

Lightning's bars turn every ``prog_bar=True`` value into a Python number at each batch end
(``.item()``): on a GPU the host then waits for the step to finish, every step, which stalls the
launch queue of small models. This bar advances every batch but refreshes its numbers (the
training loss) only every ``metrics_every_n_steps`` optimizer steps and at epoch ends.
"""

from __future__ import annotations

from typing import Any

from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar


class SyncFreeProgressBar(RichProgressBar):
    """:class:`~lightning.pytorch.callbacks.RichProgressBar` with numbers read every
    ``metrics_every_n_steps`` training steps (1: Lightning's behaviour, a read per step).

    Other arguments go to ``RichProgressBar`` (``refresh_rate``, ``leave``, ``theme``...).
    """

    def __init__(self, metrics_every_n_steps: int = 50, **kwargs: Any) -> None:
        if metrics_every_n_steps < 1:
            raise ValueError(f"metrics_every_n_steps must be >= 1, got {metrics_every_n_steps}")
        super().__init__(**kwargs)
        self.metrics_every_n_steps = metrics_every_n_steps
        self._shown: dict[str, Any] | None = None
        self._shown_step = -1

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        if (
            self._shown is None
            or trainer.global_step - self._shown_step >= self.metrics_every_n_steps
        ):
            self._shown = super().get_metrics(trainer, pl_module)
            self._shown_step = trainer.global_step
        return self._shown

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._shown = None  # the epoch's final numbers
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._shown = None  # the new validation metrics
        super().on_validation_end(trainer, pl_module)
