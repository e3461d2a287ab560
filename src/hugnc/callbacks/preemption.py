"""Save a checkpoint when the cluster asks the job to stop (SIGTERM, SIGUSR1), then stop.

Schedulers send SIGTERM (or a configured signal such as SIGUSR1) some seconds before they kill a
job. Lightning alone reacts to SIGTERM only at the end of the epoch (one process) or raises
without saving (DDP), so up to an epoch of work is lost. This callback saves ``last.ckpt`` at the
next batch boundary instead; ``python -m hugnc resume=RUN_DIR`` continues from it.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

log = logging.getLogger(__name__)


class PreemptedError(SIGTERMException):
    """Training stopped on a preemption signal after saving a checkpoint.

    A ``SystemExit`` (as Lightning's own ``SIGTERMException``) whose code is ``128 + signum``, the
    exit status of a process killed by that signal, so schedulers and sweeps see a failed job.
    """

    def __init__(self, signum: int, checkpoint: str) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return (
            f"stopped by {signal.Signals(self.signum).name}; checkpoint saved to {self.checkpoint}"
        )


class PreemptionCheckpoint(Callback):
    """On one of ``signals``, save ``<dirpath>/<filename>.ckpt`` at the next batch end and stop.

    Under DDP the signal may reach rank 0 only: Lightning broadcasts its SIGTERM flag before every
    batch and raises on all ranks, and the checkpoint is saved collectively from
    :meth:`on_exception`. Under SLURM with Lightning's auto-requeue, SIGUSR1 stays Lightning's
    (it saves an ``hpc_ckpt`` and requeues the job).

    Args:
        dirpath: checkpoint directory (the run's ``checkpoints/``).
        filename: checkpoint name without ``.ckpt``; ``last`` is what ``resume=RUN_DIR`` reads.
        signals: signal names to handle, e.g. ``["SIGTERM", "SIGUSR1"]``.
    """

    def __init__(
        self, dirpath: str, filename: str = "last", signals: tuple[str, ...] = ("SIGTERM",)
    ) -> None:
        unknown = [name for name in signals if name not in signal.Signals.__members__]
        if unknown:
            raise ValueError(f"unknown signal names {unknown}; use e.g. SIGTERM, SIGUSR1, SIGUSR2")
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.signals = tuple(signal.Signals[name] for name in signals)
        self.received: signal.Signals | None = None
        #: Set once the checkpoint is written: ``hugnc.train`` reports the run as preempted.
        self.saved: PreemptedError | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)
        previous = self._previous.get(self.received)
        if callable(previous):
            previous(signum, frame)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning installs its SIGTERM handler after on_fit_start and restores the process's
        # handlers at teardown: ours goes on top of it now, chains to it, and is removed first.
        if threading.current_thread() is not threading.main_thread():
            return
        environment = trainer._accelerator_connector.cluster_environment
        slurm_requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        for signum in self.signals:
            if slurm_requeue and signum == environment.requeue_signal:
                continue
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.received is None:
            return
        if trainer.world_size > 1:
            # Lightning's per-batch broadcast stops every rank; make a non-SIGTERM signal count.
            trainer._signal_connector.received_sigterm = True
            return
        raise SIGTERMException()

    def on_exception(
        self, trainer: Trainer, pl_module: LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or self.saved is not None:
            return
        signum = self.received or signal.SIGTERM
        # trainer.save_checkpoint writes a temporary file and renames it: a kill during the save
        # leaves the previous last.ckpt whole.
        trainer.save_checkpoint(self.path)
        self._restore()
        rank_zero_info(
            f"{signum.name} received at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}: checkpoint saved to {self.path}. Continue with "
            f"`python -m hugnc resume={self.path.parent.parent}`."
        )
        # Not raised here: Lightning still has to finalize the loggers and tear down.
        self.saved = PreemptedError(signum, str(self.path))
