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

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from hugnc.run_dir import run_dir_of_checkpoint

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

    Under DDP the ranks agree at every batch end (a signal on any rank stops all of them at the
    same batch; srun signals every task, a little apart) and the checkpoint is saved once,
    collectively, from :meth:`on_exception`; the handler itself runs no collective. Under SLURM
    with Lightning's auto-requeue, SIGUSR1 stays Lightning's
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
        #: Per signal, the handlers called after ours: the previous ones but Lightning's.
        self._chained: dict[signal.Signals, list[Any]] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag here: no collective inside a signal handler. Lightning's own SIGTERM handler
        # broadcasts from it, at whatever point of its collective sequence each rank is (NCCL
        # may pair it with a gradient all-reduce: a hang or garbage); the ranks agree at the
        # next batch end instead (on_train_batch_end).
        self.received = signal.Signals(signum)
        for handler in self._chained.get(self.received, ()):
            handler(signum, frame)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Lightning installs its SIGTERM handler after on_fit_start and restores the process's
        # handlers at teardown: ours goes on top of it now, chains to it, and is removed first.
        if threading.current_thread() is not threading.main_thread():
            return
        environment = trainer._accelerator_connector.cluster_environment
        # SLURM's requeue signal, when Lightning's SLURM environment requeues on it.
        requeue_signal = (
            environment.requeue_signal
            if isinstance(environment, SLURMEnvironment) and environment.auto_requeue
            else None
        )
        connector = trainer._signal_connector
        for signum in self.signals:
            if requeue_signal is not None and signum == requeue_signal:
                continue
            previous = signal.getsignal(signum)
            self._previous[signum] = previous
            # Lightning composes its notifier with the handlers it found (e.g. submitit's):
            # keep those, drop Lightning's own (its broadcast is what must not run here).
            handlers = getattr(previous, "signal_handlers", [previous])
            self._chained[signum] = [
                h for h in handlers if callable(h) and getattr(h, "__self__", None) is not connector
            ]
            signal.signal(signum, self._handle)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._restore()

    def ignore_further_signals(self) -> None:
        """After a preemption was saved: the process is stopping, further preemption signals
        (the other tasks' copies, a scheduler's repeat) must not kill it with their default
        action before it has written its status and exited with ``128 + signum``."""
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                signal.signal(signum, signal.SIG_IGN)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous, self._chained = {}, {}

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.world_size > 1:
            # Every rank, every batch: did any rank get a signal? (One one-element all-reduce
            # and read per step, as Lightning's own per-batch SIGTERM broadcast costs.) Then
            # Lightning's flag is set on every rank and all raise at the end of this batch.
            flag = torch.tensor([0 if self.received is None else 1], device=pl_module.device)
            if int(trainer.strategy.reduce(flag, reduce_op="max").item()):
                trainer._signal_connector.received_sigterm = True
            return
        if self.received is not None:
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
        # Our handler stays until Lightning's teardown puts the process's own handlers back: a
        # second signal meanwhile (srun signals every task, a little apart) is only recorded.
        rank_zero_info(
            f"{signum.name} received at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}: checkpoint saved to {self.path}. Continue with "
            f"`python -m hugnc resume={run_dir_of_checkpoint(self.path)}`."
        )
        # Not raised here: Lightning still has to finalize the loggers and tear down.
        self.saved = PreemptedError(signum, str(self.path))
