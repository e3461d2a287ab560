"""Stop at the first non-finite training loss with a message that says what happened."""

from __future__ import annotations

from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(Callback):
    """Raise :class:`NonFiniteLossError` when a training step's loss is NaN/inf.

    The message names the step, every loss term's value and the likely cause. Raising inside the
    step keeps the checkpoints already on disk (``last.ckpt`` is the last good epoch) untouched.

    Args:
        every_n_steps: check every n-th step (each check waits for the device; 1 = every step).
    """

    def __init__(self, every_n_steps: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps or not isinstance(outputs, dict):
            return
        terms = outputs.get("loss_terms", {})
        loss = outputs["loss"].detach()
        if bool(torch.isfinite(loss)):
            return
        values = ", ".join(f"{name}={float(value):.4g}" for name, value in terms.items())
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none yet"
        raise NonFiniteLossError(
            f"non-finite training loss at epoch {trainer.current_epoch}, "
            f"step {trainer.global_step} (batch {batch_idx}): {values or f'loss={float(loss)}'}. "
            "Likely cause: a learning rate or loss weight (loss.alpha / loss.beta) too large, or "
            f"16-bit overflow (try trainer.precision=32-true). Last good checkpoint: {checkpoint}"
        )
