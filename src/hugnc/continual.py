"""Continual learning: one model trained task after task on a split dataset.

``python -m hugnc.continual [overrides]`` (primary config ``conf/continual.yaml``, a ``split_*``
data config). After training on task t the model is tested on every seen task i <= t, which fills
row t of the accuracy matrix ``R[t][i]``; average accuracy and average forgetting follow from R.
Results go to the loggers (``continual/*``) and to ``continual.json`` in the run directory.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict, cast

import hydra
import torch
from hydra.utils import instantiate
from lightning import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from hugnc.config import config_dir
from hugnc.data import ContinualDataModule
from hugnc.launching import register_hydra_plugins, run_job
from hugnc.models.heads import Head
from hugnc.preflight import run_checked
from hugnc.run_dir import write_status
from hugnc.train import (
    RunKeys,
    build_module,
    close_loggers,
    configure_process,
    instantiate_all,
    log_lightning_through_root,
)

Matrix = Sequence[Sequence[float | None]]


class ContinualKeys(TypedDict):
    """The ``continual`` node of ``conf/continual.yaml``."""

    fresh_optimizer: bool


class ContinualRunKeys(RunKeys, total=False):
    """:class:`~hugnc.train.RunKeys` and the ``continual`` node (for the config check)."""

    continual: ContinualKeys


def _measured(matrix: Matrix, t: int, i: int) -> float:
    """R[t][i]; the task loop fills R[t][i] for every i <= t before it is read."""
    value = matrix[t][i]
    assert value is not None, f"R[{t}][{i}] read before it was measured"
    return value


def average_accuracy(matrix: Matrix, t: int | None = None) -> float:
    """Mean accuracy on the tasks seen after task ``t`` (default: the last): mean_i<=t R[t][i].

    ``matrix[t][i]`` is R[t][i], the accuracy on task i after training on task t.
    """
    t = len(matrix) - 1 if t is None else t
    return sum(_measured(matrix, t, i) for i in range(t + 1)) / (t + 1)


def average_forgetting(matrix: Matrix, t: int | None = None) -> float:
    """Average forgetting after task ``t`` (Chaudhry et al. 2018; default t: the last task).

    ``mean over i < t of (max over s in [i, t-1] of R[s][i]) - R[t][i]``: how much each earlier
    task lost from its best accuracy (negative: it improved). 0 after the first task.
    """
    t = len(matrix) - 1 if t is None else t
    if t == 0:
        return 0.0
    return (
        sum(
            max(_measured(matrix, s, i) for s in range(i, t)) - _measured(matrix, t, i)
            for i in range(t)
        )
        / t
    )


class TaskMaskedHead(nn.Module):
    """Task-incremental evaluation: logits of classes outside the current task are masked out.

    Wraps a head (``logits``, ``classifier``, ``after_optimizer_step``); the driver selects the
    classes of the task being trained or tested with :meth:`set_classes`.
    """

    head: Head
    allowed: Tensor

    def __init__(self, head: Head, num_classes: int) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("allowed", torch.ones(num_classes, dtype=torch.bool), persistent=False)

    @property
    def classifier(self) -> Tensor:
        return self.head.classifier

    def set_classes(self, classes: Sequence[int]) -> None:
        self.allowed.fill_(False)
        self.allowed[list(classes)] = True

    def logits(self, features: Tensor) -> Tensor:
        logits = self.head.logits(features)
        return logits.masked_fill(~self.allowed, torch.finfo(logits.dtype).min)

    forward = logits

    def after_optimizer_step(self) -> None:
        self.head.after_optimizer_step()


class CarryOptimizerState(Callback):
    """Hands the optimizers' per-parameter state (momentum, Adam moments) from one fit to the next.

    Hyperparameters (learning rate...) stay those of the new fit's fresh optimizer and scheduler.
    """

    def __init__(self) -> None:
        self.states: list[dict[Any, Any]] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.states is None:
            return
        for optimizer, state in zip(trainer.optimizers, self.states, strict=True):
            fresh = optimizer.state_dict()
            fresh["state"] = state
            optimizer.load_state_dict(fresh)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.states = [copy.deepcopy(opt.state_dict()["state"]) for opt in trainer.optimizers]


def _task_callbacks(cfg: DictConfig, task: int, carry: Callback | None) -> list[Callback]:
    callbacks = instantiate_all(cfg.get("callbacks"))
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            callback.dirpath = str(Path(callback.dirpath) / f"task_{task}")
    return callbacks + ([carry] if carry is not None else [])


def train_continual(cfg: DictConfig) -> dict[str, Any]:
    """Train on every task in turn, test on the seen ones after each; return the results.

    The results (also ``<output_dir>/continual.json``): ``tasks`` (class ids per task),
    ``accuracy_matrix`` (R, ``None`` above the diagonal), ``average_accuracy`` and
    ``average_forgetting`` after the last task and ``per_task`` after each task.
    ``<output_dir>/metrics.json`` gets ``status`` and the final ``continual/*`` scalars, as
    :func:`hugnc.train.train` writes it (sweep reports read it).
    """
    output_dir = Path(cfg.paths.output_dir)
    loggers: list[Logger] = []
    try:
        if cfg.get("ckpt_path"):
            raise ValueError("resuming a continual run (ckpt_path) is not supported")
        log_lightning_through_root()
        seed_everything(cfg.seed, workers=True)
        configure_process(cfg)
        datamodule = instantiate(cfg.data)
        if not isinstance(datamodule, ContinualDataModule):
            raise ValueError(
                "python -m hugnc.continual needs a continual split as data (data=split_cifar10, "
                f"split_cifar100, split_fashion_mnist), got {type(datamodule).__name__}"
            )
        module = build_module(cfg, datamodule.input_shape)
        if datamodule.task_incremental:
            module.head = TaskMaskedHead(module.head, datamodule.num_classes)
        loggers = instantiate_all(cfg.get("logger"))
        hyperparams = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
        for logger in loggers:
            logger.log_hyperparams(hyperparams | {"continual/tasks": datamodule.tasks})
        results = _run_tasks(cfg, datamodule, module, loggers)
    except BaseException as error:
        write_status(output_dir, {"status": "failed", "error": f"{type(error).__name__}: {error}"})
        close_loggers(loggers, failed=True)
        raise
    close_loggers(loggers, failed=False)
    final = {f"continual/{key}": results[key] for key in ("average_accuracy", "average_forgetting")}
    row = results["accuracy_matrix"][-1]
    final |= {f"continual/acc_task_{i}": accuracy for i, accuracy in enumerate(row)}
    write_status(output_dir, {"status": "completed", **final})
    _write_json(output_dir / "continual.json", results)
    return results


def _run_tasks(
    cfg: DictConfig, datamodule: ContinualDataModule, module: LightningModule, loggers: list
) -> dict[str, Any]:
    """The task loop: a Lightning fit per task, then a test on every seen task."""
    num_tasks = datamodule.num_tasks
    R: list[list[float | None]] = [[None] * num_tasks for _ in range(num_tasks)]
    per_task: list[dict[str, float]] = []
    carry = None if cfg.continual.fresh_optimizer else CarryOptimizerState()
    for task in range(num_tasks):
        datamodule.set_task(task)
        if datamodule.task_incremental:
            cast(TaskMaskedHead, module.head).set_classes(datamodule.tasks[task])
        trainer: Trainer = instantiate(
            cfg.trainer, callbacks=_task_callbacks(cfg, task, carry), logger=loggers or False
        )
        trainer.fit(module, datamodule=datamodule)
        for seen in range(task + 1):
            datamodule.eval_task = seen
            if datamodule.task_incremental:
                cast(TaskMaskedHead, module.head).set_classes(datamodule.tasks[seen])
            trainer.test(module, datamodule=datamodule, verbose=False)
            R[task][seen] = float(trainer.callback_metrics["test/acc"])
        summary = {
            "average_accuracy": average_accuracy(R, task),
            "average_forgetting": average_forgetting(R, task),
        }
        per_task.append(summary)
        metrics = {f"continual/{key}": value for key, value in summary.items()}
        metrics |= {f"continual/acc_task_{i}": _measured(R, task, i) for i in range(task + 1)}
        for logger in loggers:
            logger.log_metrics(metrics | {"continual/task": task})
            logger.save()  # logged after the trainer's last flush
        row = [round(_measured(R, task, i), 4) for i in range(task + 1)]
        rank_zero_info(f"after task {task}: R[{task}] = {row}")
    return {
        "dataset": datamodule.dataset,
        "scenario": datamodule.scenario,
        "tasks": datamodule.tasks,
        "accuracy_matrix": R,
        **per_task[-1],
        "per_task": per_task,
    }


@rank_zero_only
def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2))


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="continual")
def _run(cfg: DictConfig) -> float:
    results = run_job(train_continual, cfg)
    # Lightning's stubs type rank_zero_only as a function; it carries the process rank.
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
        print(
            f"average accuracy = {results['average_accuracy']:.4f}, average forgetting = "
            f"{results['average_forgetting']:.4f}; run directory: {cfg.paths.output_dir}"
        )
    return results["average_accuracy"]


def main() -> None:
    register_hydra_plugins()
    run_checked(_run, config_name="continual")


if __name__ == "__main__":
    main()
