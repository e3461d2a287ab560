"""The results pipeline's plan: the table's settings, the tune grid and its selection, the stages
(their command lines, job counts and estimated times) and the setting configs they read."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from experiments import timing
from hugnc.config import config_dir
from hugnc.tools.report import JobResult

HUG_LOSSES = ("mhe_hug", "mhs_hug", "mgd_hug")
LOSS_LABELS = {"ce": "CE", "mhe_hug": "MHE-HUG", "mhs_hug": "MHS-HUG", "mgd_hug": "MGD-HUG"}
FEATURE_DIMS = (2, 64)
#: feature_dim of the LT and continual stages.
SIDE_DIM = 64
STAGES = ("tune", "main", "lt", "continual")
#: Stages run only when named (hours, not part of the default table): experiments.paper_budget.
SEPARATE_STAGES = ("paper_budget",)
SELECTION_METRIC = "val/acc"
ROBUST_PREFIX = "test/robust_acc/"
ROBUST_OVERRIDES = (
    "callbacks=robustness",
    "callbacks.robustness.eps=0.1",
    "callbacks.robustness.alpha=0.01",
    "callbacks.robustness.attacks=[fgsm,pgd10]",
    "callbacks.robustness.max_batches=2",
)
#: ``--quick``: a pipeline check in about two minutes, numbers meaningless.
QUICK_OVERRIDES = (
    "data.train_subset=512",
    "trainer.max_epochs=1",
    "debug=limit",
    "trainer.limit_train_batches=2",
)
#: ``--quick`` continual stage: 2 tasks instead of 5 (each task's fit has a fixed cost).
QUICK_CONTINUAL_OVERRIDES = ("data.num_tasks=2",)
QUICK_NC_OVERRIDES = (
    "callbacks.neural_collapse.max_batches=1",
    "callbacks.neural_collapse.plots=false",
)
QUICK_TUNE_GRID = {
    "loss": "mhe_hug,mhs_hug,mgd_hug",
    "model.feature_dim": "2,64",
    "loss.alpha": "0.15",
    "loss.beta": "0.3,1.0",
    "optimizer.lr": "0.05",
}


# --- Settings: the table's rows -------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One row of the table: a loss with paper or tuned weights at one feature_dim."""

    loss: str
    weights: str  # "none" (CE) | "paper" | "tuned"
    feature_dim: int
    alpha: float | None = None
    beta: float | None = None
    lr: float | None = None

    @property
    def row(self) -> str:
        """The table row's id, the same for every feature_dim: ``ce``, ``mhe_hug_paper``..."""
        return self.loss if self.weights == "none" else f"{self.loss}_{self.weights}"

    @property
    def name(self) -> str:
        """The config name: ``<row>_d<feature_dim>``."""
        return f"{self.row}_d{self.feature_dim}"

    @property
    def label(self) -> str:
        """Human-readable row label."""
        base = LOSS_LABELS.get(self.loss, self.loss)
        return base if self.weights == "none" else f"{base} ({self.weights})"

    def config_text(self) -> str:
        """The setting as a ``@package _global_`` config for ``+results_setting=<name>``."""
        lines = [
            "# @package _global_",
            "# Written by experiments.results: one row of the results table.",
            "defaults:",
            f"  - override /loss: {self.loss}",
            "model:",
            f"  feature_dim: {self.feature_dim}",
            "results:",
            f"  setting: {self.row}",
            f"  weights: {self.weights}",
        ]
        if self.weights == "tuned":
            lines += ["loss:", f"  alpha: {self.alpha}", f"  beta: {self.beta}"]
            lines += ["optimizer:", f"  lr: {self.lr}"]
        return "\n".join(lines) + "\n"


def settings_for(dim: int, tuned: dict[str, dict[str, Any]]) -> list[Setting]:
    """The 7 settings at ``dim``: CE, then per HUG variant paper and tuned weights.

    ``tuned`` maps ``"<loss>_d<dim>"`` to ``{"alpha", "beta", "lr"}`` (from :func:`select_tuned`);
    settings without an entry are left out.
    """
    settings = [Setting("ce", "none", dim)]
    for loss in HUG_LOSSES:
        settings.append(Setting(loss, "paper", dim))
        if (choice := tuned.get(f"{loss}_d{dim}")) is not None:
            settings.append(
                Setting(loss, "tuned", dim, choice["alpha"], choice["beta"], choice["lr"])
            )
    return settings


def write_settings(out: Path, stages: Sequence[Stage]) -> None:
    """The setting configs every stage picks with ``+results_setting=<name>``."""
    conf = out / "conf" / "results_setting"
    conf.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        for setting in stage.settings:
            (conf / f"{setting.name}.yaml").write_text(setting.config_text())


# --- Tuning selection -----------------------------------------------------------------------------
TUNE_KEYS = ("loss.alpha", "loss.beta", "optimizer.lr")


def select_tuned(
    jobs: Sequence[JobResult], metric: str = SELECTION_METRIC
) -> dict[str, dict[str, Any]]:
    """Per ``<loss>_d<feature_dim>`` the (alpha, beta, lr) cell with the best mean ``metric``.

    Only validation metrics are allowed: choosing on test would make the "tuned" rows optimistic.
    Failed jobs are ignored; a cell's value is the mean over its completed jobs (seeds); ties go
    to the cell seen first. Returns ``{"mhe_hug_d2": {"alpha", "beta", "lr", "val/acc", "n"}}``.

    Raises:
        ValueError: ``metric`` is not a validation metric (``val/...``).
    """
    if not metric.startswith("val/"):
        raise ValueError(f"tuning must select on a validation metric (val/...), not {metric!r}")
    cells: dict[str, dict[tuple[str, ...], list[float]]] = {}
    for job in jobs:
        if job.status != "completed" or metric not in job.metrics:
            continue
        values = [job.value(key) for key in ("loss", "model.feature_dim", *TUNE_KEYS)]
        if any(value is None for value in values):
            continue
        loss, dim, *weights = (str(v) for v in values)
        group = cells.setdefault(f"{loss}_d{dim}", {})
        group.setdefault(tuple(weights), []).append(job.metrics[metric])
    chosen = {}
    for key, group in cells.items():
        best, scores = max(group.items(), key=lambda item: sum(item[1]) / len(item[1]))
        alpha, beta, lr = (float(v) for v in best)
        chosen[key] = {
            "alpha": alpha,
            "beta": beta,
            "lr": lr,
            metric: sum(scores) / len(scores),
            "n": len(scores),
        }
    return chosen


# --- Stages ---------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One multirun: its command line, the jobs it must produce and an estimate of its time."""

    name: str
    module: str
    overrides: list[str]
    expected_jobs: int
    estimate_s: float
    settings: list[Setting] = field(default_factory=list)

    def command(self, out: Path, jobs_at_once: int = 1, gpus: int = 0) -> list[str]:
        """The subprocess command (absolute sweep dir and config search path).

        ``gpus`` > 0 trains on the GPU (``trainer=gpu``) and runs one job per GPU through
        ``hydra/launcher=ray`` (the machine's cores shared among them); else ``jobs_at_once`` > 1
        runs that many CPU jobs concurrently through Ray, one core each.
        """
        overrides = [*self.overrides, f"hydra.sweep.dir={out.resolve() / self.name}"]
        if gpus > 0:
            overrides += [
                "trainer=gpu",
                "hydra/launcher=ray",
                f"hydra.launcher.ray.init.num_gpus={gpus}",
                f"hydra.launcher.ray.remote.num_cpus={max(1, (os.cpu_count() or 1) // gpus)}",
            ]
        elif jobs_at_once > 1:
            overrides += [
                "hydra/launcher=ray",
                f"hydra.launcher.ray.init.num_cpus={jobs_at_once}",
                "hydra.launcher.ray.remote.num_cpus=1",
            ]
        if self.settings:
            conf = (out.resolve() / "conf").as_uri()
            overrides += [
                f"hydra.searchpath=[{conf}]",
                "+results_setting=" + ",".join(s.name for s in self.settings),
            ]
        return [sys.executable, "-m", self.module, "-m", *overrides]


@dataclass
class Options:
    """What the plan depends on (stored in ``<out>/plan.json``; a resume must match it)."""

    epochs: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    quick: bool = False
    robustness: bool = False
    logger: str = "csv"


def _load_conf(relative: str) -> Any:
    return OmegaConf.load(config_dir() / relative)


def _epochs(relative: str, default: int) -> int:
    return int(OmegaConf.select(_load_conf(relative), "trainer.max_epochs", default=default))


def tune_grid(options: Options) -> dict[str, str]:
    """The tune stage's swept keys and comma lists (``conf/sweep/results_tune.yaml``)."""
    if options.quick:
        return dict(QUICK_TUNE_GRID)
    params = _load_conf("sweep/results_tune.yaml").hydra.sweeper.params
    return {str(key): str(value) for key, value in params.items()}


def build_stages(options: Options, tuned: dict[str, dict[str, Any]]) -> list[Stage]:
    """The four stages for ``options``; settings use ``tuned`` (may be empty before tuning: the
    tuned rows are then planned with placeholder weights, only their count matters)."""
    placeholder = {
        f"{loss}_d{dim}": {"alpha": 0.0, "beta": 0.0, "lr": 0.0}
        for loss in HUG_LOSSES
        for dim in FEATURE_DIMS
    }
    tuned = placeholder | tuned
    common = [f"logger={options.logger}"]
    nc_quick: list[str] = []
    if options.quick:
        common += list(QUICK_OVERRIDES)
        nc_quick = list(QUICK_NC_OVERRIDES)
    scale = timing.QUICK_SCALE if options.quick else 1.0  # for the estimate only
    startup = timing.PROCESS_STARTUP_S

    grid = tune_grid(options)
    tune_jobs = math.prod(len(v.split(",")) for v in grid.values())
    tune_epochs = _epochs("sweep/results_tune.yaml", 2)
    tune_subset = OmegaConf.select(_load_conf("sweep/results_tune.yaml"), "data.train_subset")
    tune_job_s = timing.job_seconds(
        tune_epochs, tune_subset or timing.FULL_TRAIN_IMAGES, nc=False, test=False
    )
    tune = Stage(
        "tune",
        "hugnc",
        ["experiment=results", "sweep=results_tune", *common]
        + [f"{key}={value}" for key, value in grid.items()],
        tune_jobs,
        startup + tune_jobs * scale * tune_job_s,
    )

    main_epochs = options.epochs or _epochs("experiment/results.yaml", 3)
    main_settings = [s for dim in FEATURE_DIMS for s in settings_for(dim, tuned)]
    main_jobs = len(main_settings) * len(options.seeds)
    robust = list(ROBUST_OVERRIDES) if options.robustness else []
    main_job_s = timing.job_seconds(main_epochs, timing.FULL_TRAIN_IMAGES)
    main_job_s += timing.ROBUST_S_PER_JOB if options.robustness else 0.0
    main = Stage(
        "main",
        "hugnc",
        ["experiment=results", "sweep=results_main", *common, *nc_quick, *robust]
        + [f"trainer.max_epochs={main_epochs}"] * (options.epochs is not None and not options.quick)
        + ["seed=" + ",".join(str(s) for s in options.seeds)],
        main_jobs,
        startup + main_jobs * scale * main_job_s,
        main_settings,
    )

    side_settings = settings_for(SIDE_DIM, tuned)
    seed = f"seed={options.seeds[0]}"
    lt_epochs = _epochs("sweep/results_lt.yaml", 5)
    lt = Stage(
        "lt",
        "hugnc",
        [
            "experiment=results",
            "data=fashion_mnist_lt",
            "sweep=results_lt",
            *common,
            *nc_quick,
            seed,
        ],
        len(side_settings),
        startup
        + len(side_settings) * scale * timing.job_seconds(lt_epochs, timing.LT_TRAIN_IMAGES),
        side_settings,
    )
    continual_epochs = _epochs("sweep/results_continual.yaml", 2)
    continual = Stage(
        "continual",
        "hugnc.continual",
        [
            "experiment=results",
            "data=split_fashion_mnist",
            "sweep=results_continual",
            *common,
            *nc_quick,
            *(QUICK_CONTINUAL_OVERRIDES if options.quick else ()),
            seed,
        ],
        len(side_settings),
        startup + len(side_settings) * scale * timing.continual_seconds(continual_epochs),
        side_settings,
    )
    return [tune, main, lt, continual]
