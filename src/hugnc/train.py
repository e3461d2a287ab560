"""instantiate -> fit -> test: the whole experiment, driven by a composed Hydra config."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

import torch
from hydra.utils import instantiate
from lightning import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from hugnc.arguments import NonNegativeInt
from hugnc.callbacks.preemption import PreemptionCheckpoint
from hugnc.errors import user_facing
from hugnc.host_memory import retain_freed_host_memory
from hugnc.loggers import finish_loggers
from hugnc.module import HUGClassifier
from hugnc.run_dir import write_status
from hugnc.schema import Problem

if TYPE_CHECKING:
    from hugnc.data import ContinualDataModule, ImageDataModule


log = logging.getLogger(__name__)


class SchedulerKeys(TypedDict, total=False):
    """The ``scheduler`` group's own key (``factory`` is a ``_target_`` node)."""

    interval: Literal["epoch", "step"]


class RunGroups(TypedDict):
    """The groups this module builds objects from: a run needs each (their keys are checked
    against their ``_target_``)."""

    data: dict[str, Any]
    model: dict[str, Any]
    loss: dict[str, Any]
    head: dict[str, Any]
    optimizer: dict[str, Any]
    trainer: dict[str, Any]


class RunKeys(RunGroups, total=False):
    """The keys of ``conf/train.yaml`` that this module reads itself (no constructor takes them):
    their types, ranges and choices, for the config check (:mod:`hugnc.schema`)."""

    task_name: str
    seed: NonNegativeInt
    test: bool
    ckpt_path: str | None
    channels_last: bool
    compile: bool
    matmul_precision: Literal["highest", "high", "medium"]
    retain_host_memory: bool
    optimized_metric: str
    scheduler: SchedulerKeys | None


def compile_sync_batchnorm_problem(cfg: DictConfig) -> Problem | None:
    """``compile=true`` with ``trainer.sync_batchnorm=true`` is refused: every SyncBatchNorm layer
    all-reduces its batch statistics inside the forward, which torch.compile cannot keep in one
    graph (a graph break and a collective per layer), so compiling buys nothing there."""
    if not (cfg.get("compile", False) and OmegaConf.select(cfg, "trainer.sync_batchnorm")):
        return None
    return Problem(
        "compile",
        "torch.compile does not combine with trainer.sync_batchnorm=true (SyncBatchNorm's "
        "all-reduce breaks the compiled graph at every layer); use compile=false, or "
        "trainer.sync_batchnorm=false (per-GPU batch statistics)",
        True,
    )


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers); ``null`` -> []."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None]


def log_lightning_through_root() -> None:
    """Send Lightning's messages to the root logger's handlers only, when it has any (a Hydra job:
    the console and the job's log file).

    Lightning gives its loggers console handlers of their own, and whether its sub-loggers also
    propagate depends on whether the root logger had handlers when ``lightning`` was first
    imported: under Hydra every message would otherwise print twice, or miss the log file.
    """
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True


def configure_process(cfg: DictConfig) -> None:
    """The process-wide numeric and memory settings of ``cfg``: float32 matmul precision, and
    glibc's malloc keeping freed host memory (``retain_host_memory``, :mod:`hugnc.host_memory`)."""
    torch.set_float32_matmul_precision(cfg.matmul_precision)
    # .get: configs of runs saved before the switch existed (resume).
    if cfg.get("retain_host_memory", False):
        retain_freed_host_memory()


def build_module(cfg: DictConfig, input_shape: tuple[int, int, int]) -> HUGClassifier:
    """The LightningModule described by ``cfg`` (model, head, loss, optimizer, scheduler groups).

    ``input_shape`` is the datamodule's ``(C, H, W)``, so any model config fits any data config.
    """
    backbone = instantiate(cfg.model, input_shape=input_shape)
    head = instantiate(cfg.head, feature_dim=backbone.feature_dim, num_classes=cfg.data.num_classes)
    return HUGClassifier(
        backbone=backbone,
        head=head,
        criterion=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler.factory) if cfg.scheduler else None,
        scheduler_interval=cfg.scheduler.interval if cfg.scheduler else "epoch",
        num_classes=cfg.data.num_classes,
        # .get: configs of runs saved before these switches existed (hugnc-geometry, resume).
        channels_last=cfg.get("channels_last", False),
        compile=cfg.get("compile", False),
    )


def train(cfg: DictConfig, extra_callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Train, then test on the best checkpoint (or the last weights); return the final metrics.

    ``extra_callbacks`` join the configured ones (probes of tests and benchmarks).

    ``<output_dir>/metrics.json`` gets the metrics and ``"status": "completed"``, or
    ``"status": "failed"`` and the error if anything raised (sweep reports list failed jobs), or
    ``"status": "preempted"`` when a signal or the scheduler stopped it (it continues later).
    """
    output_dir = Path(cfg.paths.output_dir)
    loggers: list[Logger] = []
    callbacks: list[Callback] = []
    trainer: Trainer | None = None
    try:
        log_lightning_through_root()
        seed_everything(cfg.seed, workers=True)
        configure_process(cfg)
        datamodule: ImageDataModule | ContinualDataModule = instantiate(cfg.data)
        module = build_module(cfg, datamodule.input_shape)
        callbacks = [*instantiate_all(cfg.get("callbacks")), *extra_callbacks]
        loggers = instantiate_all(cfg.get("logger"))
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
        assert trainer is not None
        for logger in loggers:
            logger.log_hyperparams(cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True)))

        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if cfg.test:
            # fast_dev_run keeps no checkpoint, so "best" only when a checkpoint exists.
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if isinstance(checkpoint, ModelCheckpoint) else ""
            trainer.test(module, datamodule=datamodule, ckpt_path="best" if best else None)
            metrics |= {k: float(v) for k, v in trainer.callback_metrics.items()}
    except SIGTERMException as error:
        saver = preemption_saver(callbacks)
        preempted = saver.saved if saver is not None else None
        if saver is not None:
            saver.ignore_further_signals()
        status = {"status": "preempted", "checkpoint": preempted.checkpoint} if preempted else {}
        write_status(output_dir, status or {"status": "failed", "error": "SIGTERMException"})
        close_loggers(loggers, failed=True)
        if preempted is not None:
            raise preempted from error
        raise
    except BaseException as error:
        if isinstance(error, SystemExit) and isinstance(error.__context__, KeyboardInterrupt):
            # Lightning answers Ctrl-C with its own shutdown, then exit(1): it was the user's.
            error = KeyboardInterrupt()
        if isinstance(error, SystemExit):
            # Stopped from outside, e.g. submitit's requeue on SLURM's timeout signal: the exit
            # code is the scheduler's (the local executor requeues on 144), the job not failed.
            stopped = f"SystemExit({error.code}) during training (a scheduler's requeue?)"
            write_status(output_dir, {"status": "preempted", "error": stopped})
        else:
            shown = user_facing(error)
            line = f"{type(error).__name__}: {shown.line if shown else error}"
            write_status(output_dir, {"status": "failed", "error": line})
        close_loggers(loggers, failed=True)
        raise error
    close_loggers(loggers, failed=False)
    write_status(output_dir, {"status": "completed", **metrics})
    return metrics


def preemption_saver(callbacks: Sequence[Callback]) -> PreemptionCheckpoint | None:
    """The preemption callback that saved a checkpoint on a signal, or ``None``."""
    return next(
        (c for c in callbacks if isinstance(c, PreemptionCheckpoint) and c.saved is not None), None
    )


def close_loggers(loggers: list[Logger], failed: bool) -> None:
    """Finish every logger (W&B: as failed or finished) and log what they say (sync command).

    Logged only: Hydra's job logging (``hydra/job_logging``) shows INFO records on the console
    and writes them to the run's log file, so a print as well would show the line twice.
    """
    for line in finish_loggers(loggers, failed):
        log.info(line)
