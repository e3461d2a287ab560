"""Stop at the first non-finite training loss with a message that says what happened."""

from __future__ import annotations

from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from torch import Tensor

from hugnc import devices


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class FiniteLossGuard(Callback):
    """Raise :class:`NonFiniteLossError` at the first training step whose loss is NaN/inf.

    The message names that step, every loss term's value there and the likely cause; the
    checkpoints already on disk (``last.ckpt`` is the last good epoch) stay untouched.

    On the CPU each step is read at once. On an accelerator, reading the loss every step would
    make the host wait for the device every step (the queue of launched kernels drains, which
    slows small models markedly), so each step's loss terms stay on the device, in a list, and
    are read together every ``every_n_steps`` steps, before any checkpoint is written and at the
    end of each epoch: the first bad step is still the one reported, found at most
    ``every_n_steps - 1`` steps later, and no checkpoint is written after it. Under DDP the ranks
    agree on the earliest bad step of any rank (one small all-reduce per read) and all stop there.

    Args:
        every_n_steps: on accelerators, steps between reads (1: every step, as on the CPU).
    """

    def __init__(self, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        # Steps not read yet: (epoch, global step, batch index, term names) and the terms'
        # values [T] on the device, "loss" first.
        self._pending: list[tuple[tuple[int, int, int, list[str]], Tensor]] = []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(outputs, dict):
            return
        loss = outputs["loss"].detach()
        terms = {"loss": loss, **outputs.get("loss_terms", {})}
        values = torch.stack([value.detach().float().reshape(()) for value in terms.values()])
        where = (trainer.current_epoch, trainer.global_step, batch_idx, list(terms))
        self._pending.append((where, values))
        if devices.host_reads_are_free(loss.device) or len(self._pending) >= self.every_n_steps:
            self.check(trainer)

    def check(self, trainer: Trainer) -> None:
        """Read the pending steps; raise :class:`NonFiniteLossError` for the first bad one."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        losses = torch.stack([values[0] for _, values in pending])
        # Index of this rank's first bad step (len(pending) if none), then the earliest over all
        # DDP ranks: every rank reaches this check at the same steps, so all of them stop at the
        # same one instead of the others waiting in a collective for the rank that raised.
        positions = torch.arange(len(pending), device=losses.device)
        local_first = torch.where(torch.isfinite(losses), len(pending), positions).min()
        first = int(trainer.strategy.reduce(local_first, reduce_op="min"))  # one device read
        if first == len(pending):
            return
        (epoch, step, batch_idx, names), values = pending[first]
        if bool(torch.isfinite(values[0])):
            terms = "on another DDP rank (its log has the loss terms)"
        else:
            pairs = zip(names, values.tolist(), strict=True)
            terms = ", ".join(f"{name}={value:.4g}" for name, value in pairs)
        detected = pending[-1][0][1]
        late = f" (read at step {detected})" if detected != step else ""
        checkpoint = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none yet"
        raise NonFiniteLossError(
            f"non-finite training loss at epoch {epoch}, step {step} (batch {batch_idx}){late}: "
            f"{terms}. Likely cause: a learning rate or loss weight (loss.alpha / loss.beta) too "
            "large, or 16-bit overflow (try trainer.precision=32-true). Last good checkpoint: "
            f"{checkpoint}"
        )

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self.check(trainer)  # never write weights of a diverged step

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer)
