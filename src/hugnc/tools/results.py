"""``hugnc-results``: the Fashion-MNIST results table of the README, on CPU (``make results``).

Runs four stages as Hydra multiruns (subprocesses ``python -m hugnc -m ...`` and
``python -m hugnc.continual -m ...``), each into ``<out>/<stage>`` (``hydra.sweep.dir``):

``tune``
    per HUG variant (MHE, MHS, MGD) and feature_dim (2, 64) a grid over alpha, beta and lr
    (``conf/sweep/results_tune.yaml``), without any test run; the best cell on ``val/acc`` (the
    held-out training images, mean over the cell's jobs) is the "tuned" setting.
``main``
    7 settings -- CE, each HUG variant with the paper's alpha/beta (the loss configs) and with the
    tuned alpha/beta/lr -- x feature_dim 2 and 64 x seeds (default 0, 1, 2), full training set.
``lt``
    the 7 settings at feature_dim 64, first seed, Fashion-MNIST-LT with imbalance ratio 100.
``continual``
    the 7 settings at feature_dim 64, first seed, split Fashion-MNIST (5 tasks).

Every setting is a config file written to ``<out>/conf/results_setting/<name>.yaml`` and picked
with ``+results_setting=<name>`` (``hydra.searchpath``), so each stage is one multirun and every
job's config says which table row it belongs to (``results.setting``, ``results.weights``).
Afterwards ``<out>/README.md`` and ``<out>/results.csv`` hold the table (mean ± std over seeds of
test accuracy, test NC1, minimum proxy angle vs its optimum, robust accuracy when logged, LT
accuracy, continual average accuracy and forgetting), ``<out>/tune/heatmap_*.png`` the tuning
grids and ``<out>/tuned.json`` the chosen weights. Each stage directory also gets hugnc-report's
``report.md`` and ``summary.md``.

A new run never touches an existing directory (``--out`` must not exist, default
``results/<date>_<time>``). ``--resume --out DIR`` continues a killed run: stages whose jobs all
finished are skipped, an unfinished stage is moved to ``<stage>.incomplete-<k>`` and run again.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from omegaconf import OmegaConf

from hugnc.config import config_dir
from hugnc.plots import sweep_heatmap_figure
from hugnc.tools import paper_budget
from hugnc.tools.logged_run import run_logged
from hugnc.tools.report import (
    GroupSummary,
    JobResult,
    collect_local,
    heatmap_grid,
    summarize,
    write_summary,
    write_tables,
)

# --- Time model -----------------------------------------------------------------------------------
# Measured with the results model (LeNet++ 3x3 16-32-64, two convs per stage, batch 256) on 2 CPU
# cores of a quiet machine: one epoch over the 55,000 training images takes ~20 s including the
# validation pass and the NC measurement, i.e. ~3,000 training images/s plus ~8,000 evaluated
# images/s and ~1 s per NC measurement (10 batches of 1024); a job inside a multirun costs ~7 s
# beyond that (data, model, trainer, pictures, metrics.json) and each process ~10 s (imports,
# config check of all jobs). A loaded machine is proportionally slower.
TRAIN_IMAGES_PER_S = 3000.0
EVAL_IMAGES_PER_S = 8000.0
NC_MEASUREMENT_S = 1.0
JOB_OVERHEAD_S = 7.0
PROCESS_STARTUP_S = 10.0
#: PGD/FGSM on ``ROBUST_BATCHES`` test batches of 1024: ~11 gradient passes per image.
ROBUST_S_PER_JOB = 8.0

FULL_TRAIN_IMAGES = 55_000  # 60,000 minus the 5,000 validation images
VAL_IMAGES = 5_000
TEST_IMAGES = 10_000
LT_TRAIN_IMAGES = 14_900  # sum_i int(5,500-ish * 0.01^(i/9)) over 10 classes
NUM_TASKS = 5

HUG_LOSSES = ("mhe_hug", "mhs_hug", "mgd_hug")
LOSS_LABELS = {"ce": "CE", "mhe_hug": "MHE-HUG", "mhs_hug": "MHS-HUG", "mgd_hug": "MGD-HUG"}
FEATURE_DIMS = (2, 64)
#: feature_dim of the LT and continual stages.
SIDE_DIM = 64
STAGES = ("tune", "main", "lt", "continual")
#: Stages run only when named (hours, not part of the default table): hugnc.tools.paper_budget.
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
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
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
#: Exit statuses after which a job counts as interrupted (run again), not as finished.
INTERRUPTED = ("SIGTERM", "KeyboardInterrupt", "no metrics.json")


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
            "# Written by hugnc-results: one row of the results table.",
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

    def command(self, out: Path) -> list[str]:
        """The subprocess command (absolute sweep dir and config search path)."""
        overrides = [*self.overrides, f"hydra.sweep.dir={out.resolve() / self.name}"]
        if self.settings:
            conf = (out.resolve() / "conf").as_uri()
            overrides += [
                f"hydra.searchpath=[{conf}]",
                "+results_setting=" + ",".join(s.name for s in self.settings),
            ]
        return [sys.executable, "-m", self.module, "-m", *overrides]


def _load_conf(relative: str) -> Any:
    return OmegaConf.load(config_dir() / relative)


def _epochs(relative: str, default: int) -> int:
    return int(OmegaConf.select(_load_conf(relative), "trainer.max_epochs", default=default))


def _job_seconds(
    epochs: int, train_images: float, nc: bool = True, test: bool = True, val: int = VAL_IMAGES
) -> float:
    epoch = train_images / TRAIN_IMAGES_PER_S + val / EVAL_IMAGES_PER_S
    epoch += NC_MEASUREMENT_S if nc else 0.0
    tail = (TEST_IMAGES / EVAL_IMAGES_PER_S + (NC_MEASUREMENT_S if nc else 0.0)) if test else 0.0
    return JOB_OVERHEAD_S + epochs * epoch + tail


def _continual_seconds(epochs: int) -> float:
    per_task_train = FULL_TRAIN_IMAGES / NUM_TASKS
    total = JOB_OVERHEAD_S
    for task in range(NUM_TASKS):
        total += 2.0  # trainer set-up of the task's fit
        total += epochs * (
            per_task_train / TRAIN_IMAGES_PER_S
            + VAL_IMAGES / NUM_TASKS / EVAL_IMAGES_PER_S
            + NC_MEASUREMENT_S
        )
        total += (task + 1) * (TEST_IMAGES / NUM_TASKS / EVAL_IMAGES_PER_S + 0.5)
    return total


@dataclass
class Options:
    """What the plan depends on (stored in ``<out>/plan.json``; a resume must match it)."""

    epochs: int | None = None
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    quick: bool = False
    robustness: bool = False
    logger: str = "csv"


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
    scale = 0.05 if options.quick else 1.0  # for the estimate only

    grid = tune_grid(options)
    tune_jobs = math.prod(len(v.split(",")) for v in grid.values())
    tune_epochs = _epochs("sweep/results_tune.yaml", 2)
    tune_subset = OmegaConf.select(_load_conf("sweep/results_tune.yaml"), "data.train_subset")
    tune = Stage(
        "tune",
        "hugnc",
        ["experiment=results", "sweep=results_tune", *common]
        + [f"{key}={value}" for key, value in grid.items()],
        tune_jobs,
        PROCESS_STARTUP_S
        + tune_jobs
        * scale
        * _job_seconds(tune_epochs, tune_subset or FULL_TRAIN_IMAGES, nc=False, test=False),
    )

    main_epochs = options.epochs or _epochs("experiment/results.yaml", 3)
    main_settings = [s for dim in FEATURE_DIMS for s in settings_for(dim, tuned)]
    main_jobs = len(main_settings) * len(options.seeds)
    robust = list(ROBUST_OVERRIDES) if options.robustness else []
    main = Stage(
        "main",
        "hugnc",
        ["experiment=results", "sweep=results_main", *common, *nc_quick, *robust]
        + [f"trainer.max_epochs={main_epochs}"] * (options.epochs is not None and not options.quick)
        + ["seed=" + ",".join(str(s) for s in options.seeds)],
        main_jobs,
        PROCESS_STARTUP_S
        + main_jobs
        * scale
        * (
            _job_seconds(main_epochs, FULL_TRAIN_IMAGES)
            + (ROBUST_S_PER_JOB if options.robustness else 0.0)
        ),
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
        PROCESS_STARTUP_S + len(side_settings) * scale * _job_seconds(lt_epochs, LT_TRAIN_IMAGES),
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
        PROCESS_STARTUP_S + len(side_settings) * scale * _continual_seconds(continual_epochs),
        side_settings,
    )
    return [tune, main, lt, continual]


def stage_finished(stage_dir: Path, expected_jobs: int) -> bool:
    """Whether all ``expected_jobs`` jobs of a stage ran to their end (completed, or failed for a
    reason of their own such as a NaN loss -- running them again would fail again), i.e. not
    killed or interrupted."""
    try:
        jobs = collect_local(stage_dir)
    except FileNotFoundError:
        return False
    if len(jobs) != expected_jobs:
        return False
    return all(
        job.status == "completed"
        or (job.status == "failed" and not any(s in job.error for s in INTERRUPTED))
        for job in jobs
    )


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def run_stage(stage: Stage, out: Path, env: dict[str, str]) -> tuple[bool, float]:
    """Run (or skip) one stage; returns (finished, elapsed seconds)."""
    stage_dir = out / stage.name
    if stage_dir.exists():
        if stage_finished(stage_dir, stage.expected_jobs):
            print(f"[{stage.name}] all {stage.expected_jobs} jobs finished before: skipped")
            return True, 0.0
        k = 1
        while (aside := out / f"{stage.name}.incomplete-{k}").exists():
            k += 1
        stage_dir.rename(aside)
        print(f"[{stage.name}] unfinished; moved to {aside.name}, running it again")
    log_path = out / f"{stage.name}.log"
    command = stage.command(out)
    print(
        f"[{stage.name}] {stage.expected_jobs} jobs, estimated {_minutes(stage.estimate_s)}; "
        f"log: {log_path}",
        flush=True,
    )
    start = time.monotonic()
    returncode = run_logged(command, log_path, env)
    elapsed = time.monotonic() - start
    finished = stage_finished(stage_dir, stage.expected_jobs)
    try:
        jobs = collect_local(stage_dir)
        failed = sum(job.status != "completed" for job in jobs)
        counts = f"{len(jobs)} jobs, {failed} failed"
    except FileNotFoundError:
        counts = "no jobs"
    print(
        f"[{stage.name}] done in {_minutes(elapsed)} (exit {returncode}; {counts})"
        + ("" if finished else f"; UNFINISHED, see {log_path}"),
        flush=True,
    )
    return finished, elapsed


# --- The table ------------------------------------------------------------------------------------
ACC = "test/acc"
NC1 = "test/nc/nc1"
ANGLE = "test/gnc/proxies_min_angle_deg"
OPTIMUM = "test/gnc/optimal_min_angle_deg"
CONTINUAL_ACC = "continual/average_accuracy"
CONTINUAL_FORGETTING = "continual/average_forgetting"
GROUP_BY = ("results.setting", "model.feature_dim")


def _stage_jobs(out: Path, stage: str) -> list[JobResult]:
    try:
        return collect_local(out / stage)
    except FileNotFoundError:
        return []


def _percent(summary: GroupSummary | None, metric: str) -> str:
    if summary is None or metric not in summary.stats:
        return "-"
    mean, std, count = summary.stats[metric]
    if count > 1 and not math.isnan(std):
        return f"{100 * mean:.2f} ± {100 * std:.2f}"
    return f"{100 * mean:.2f}"


def _plain(summary: GroupSummary | None, metric: str, digits: int) -> str:
    if summary is None or metric not in summary.stats:
        return "-"
    mean, std, count = summary.stats[metric]
    if count > 1 and not math.isnan(std):
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def _weights_text(setting: Setting, jobs: Sequence[JobResult]) -> str:
    if setting.loss == "ce":
        lr = next((j.value("optimizer.lr") for j in jobs), None)
        return f"- / - / {lr}" if lr else "-"
    job = next(iter(jobs), None)
    if job is None:
        return "-"
    return " / ".join(str(job.value(k)) for k in TUNE_KEYS)


def _by_group(
    jobs: Sequence[JobResult], metrics: Sequence[str]
) -> tuple[dict[tuple[str, str], GroupSummary], dict[tuple[str, str], list[JobResult]]]:
    summaries = {
        (s.keys[GROUP_BY[0]], s.keys[GROUP_BY[1]]): s for s in summarize(jobs, GROUP_BY, metrics)
    }
    members: dict[tuple[str, str], list[JobResult]] = {}
    for job in jobs:
        key = (job.value(GROUP_BY[0]) or "", job.value(GROUP_BY[1]) or "")
        members.setdefault(key, []).append(job)
    return summaries, members


def write_results(
    out: Path, tuned: dict[str, dict[str, Any]], header: Sequence[str] = ()
) -> tuple[Path, Path]:
    """``<out>/README.md`` and ``<out>/results.csv`` from whatever stages exist in ``out``;
    per stage also hugnc-report's ``report.*`` and ``summary.*``; tuning heatmaps."""
    main_jobs = _stage_jobs(out, "main")
    robust = sorted({m for j in main_jobs for m in j.metrics if m.startswith(ROBUST_PREFIX)})
    main_metrics = [ACC, NC1, ANGLE, OPTIMUM, *robust]
    main_summary, main_members = _by_group(main_jobs, main_metrics)
    lt_summary, lt_members = _by_group(_stage_jobs(out, "lt"), [ACC])
    cont_summary, cont_members = _by_group(
        _stage_jobs(out, "continual"), [CONTINUAL_ACC, CONTINUAL_FORGETTING]
    )
    for stage, metrics in (
        ("tune", [SELECTION_METRIC]),
        ("main", main_metrics),
        ("lt", [ACC]),
        ("continual", [CONTINUAL_ACC, CONTINUAL_FORGETTING]),
    ):
        jobs = _stage_jobs(out, stage)
        if jobs:
            write_tables(jobs, metrics, out / stage)
            keys = ["loss", "model.feature_dim", *TUNE_KEYS] if stage == "tune" else GROUP_BY
            write_summary(summarize(jobs, keys, metrics), keys, metrics, out / stage)
    heatmaps = write_tune_heatmaps(out, tuned)

    lines = ["# Results: HUG vs CE on Fashion-MNIST (CPU, `make results`)", "", *header]
    lines += ["", _tuned_sentence(tuned), ""]
    lines += [
        "## Fashion-MNIST, test set (mean ± std over seeds)",
        "",
        "Accuracy in %. NC1 = tr(Σ_W Σ_B⁺)/K on the test features. Min proxy angle: smallest "
        "angle between class proxies (CE: classifier rows), in degrees, and its optimum "
        "(d = 2: 360/K; d ≥ K-1: arccos(-1/(K-1))).",
        "",
    ]
    columns = ["setting", "d", "alpha / beta / lr", "n", "test acc", "test NC1", "min proxy angle"]
    columns += ["optimum", *(f"robust acc {m.removeprefix(ROBUST_PREFIX)}" for m in robust)]
    columns += ["failed"]
    rows: list[list[str]] = [columns]
    csv_rows: list[list[str]] = [
        ["stage", "setting", "feature_dim", "n", "failed", "metric", "mean", "std"]
    ]
    for dim in FEATURE_DIMS:
        for setting in settings_for(dim, tuned):
            key = (setting.row, str(dim))
            summary, members = main_summary.get(key), main_members.get(key, [])
            rows.append(
                [
                    setting.label,
                    str(dim),
                    _weights_text(setting, members),
                    str(summary.completed if summary else 0),
                    _percent(summary, ACC),
                    _plain(summary, NC1, 3),
                    _plain(summary, ANGLE, 1),
                    _plain(summary, OPTIMUM, 1),
                    *(_percent(summary, m) for m in robust),
                    str(summary.failed if summary else 0),
                ]
            )
            csv_rows += _csv_rows("main", setting, summary, main_metrics)
    lines += _markdown(rows)
    lines += [
        "",
        f"## Long tail and continual learning (d = {SIDE_DIM}, one seed)",
        "",
        "Fashion-MNIST-LT: imbalance ratio 100 (exponential profile), balanced test set. "
        "Split Fashion-MNIST: 5 tasks of 2 classes, class-incremental; average accuracy over "
        "the 5 tasks after the last one, average forgetting (Chaudhry et al. 2018).",
        "",
    ]
    rows = [
        [
            "setting",
            "alpha / beta / lr",
            "LT test acc",
            "continual avg acc",
            "continual forgetting",
            "failed",
        ]
    ]
    for setting in settings_for(SIDE_DIM, tuned):
        key = (setting.row, str(SIDE_DIM))
        lt, cont = lt_summary.get(key), cont_summary.get(key)
        members = lt_members.get(key, []) or cont_members.get(key, [])
        failed = (lt.failed if lt else 0) + (cont.failed if cont else 0)
        rows.append(
            [
                setting.label,
                _weights_text(setting, members),
                _percent(lt, ACC),
                _percent(cont, CONTINUAL_ACC),
                _percent(cont, CONTINUAL_FORGETTING),
                str(failed),
            ]
        )
        csv_rows += _csv_rows("lt", setting, lt, [ACC])
        csv_rows += _csv_rows("continual", setting, cont, [CONTINUAL_ACC, CONTINUAL_FORGETTING])
    lines += _markdown(rows)
    if heatmaps:
        lines += [
            "",
            "## Tuning (val/acc on the held-out training images, at the chosen lr)",
            "",
        ]
        lines += [f"![{p.stem}]({p.relative_to(out).as_posix()})" for p in heatmaps]
    readme, csv_path = out / "README.md", out / "results.csv"
    readme.write_text("\n".join(lines) + "\n")
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows(csv_rows)
    return readme, csv_path


def _csv_rows(
    stage: str, setting: Setting, summary: GroupSummary | None, metrics: Sequence[str]
) -> list[list[str]]:
    rows = []
    for metric in metrics:
        mean, std, _ = (summary.stats if summary else {}).get(metric, (math.nan, math.nan, 0))
        rows.append(
            [
                stage,
                setting.row,
                str(setting.feature_dim),
                str(summary.completed if summary else 0),
                str(summary.failed if summary else 0),
                metric,
                "" if math.isnan(mean) else f"{mean:.6g}",
                "" if math.isnan(std) else f"{std:.6g}",
            ]
        )
    return rows


def _markdown(rows: Sequence[Sequence[str]]) -> list[str]:
    header, *body = rows
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in body]


def _tuned_sentence(tuned: dict[str, dict[str, Any]]) -> str:
    if not tuned:
        return "Tuned weights: none (the tune stage has not run)."
    parts = []
    for loss in HUG_LOSSES:
        for dim in FEATURE_DIMS:
            if (c := tuned.get(f"{loss}_d{dim}")) is not None:
                parts.append(
                    f"{LOSS_LABELS[loss]} d={dim}: alpha={c['alpha']:g}, beta={c['beta']:g}, "
                    f"lr={c['lr']:g} (val acc {100 * c[SELECTION_METRIC]:.2f}%)"
                )
    return (
        "Tuned weights, chosen on val/acc of the 5,000 held-out training images (never on "
        "test): " + "; ".join(parts) + "."
    )


def write_tune_heatmaps(out: Path, tuned: dict[str, dict[str, Any]]) -> list[Path]:
    """Per HUG variant and feature_dim: val/acc over alpha x beta at the chosen lr."""
    jobs = _stage_jobs(out, "tune")
    paths = []
    for key, choice in tuned.items():
        loss, _, dim = key.rpartition("_d")
        cell_jobs = [
            j
            for j in jobs
            if j.value("loss") == loss
            and j.value("model.feature_dim") == dim
            and _same(j.value("optimizer.lr"), choice["lr"])
        ]
        if not cell_jobs:
            continue
        x_values, y_values, means, failed = heatmap_grid(
            cell_jobs, SELECTION_METRIC, "loss.beta", "loss.alpha"
        )
        figure = sweep_heatmap_figure(
            means,
            failed,
            x_values,
            y_values,
            "loss.beta",
            "loss.alpha",
            f"{SELECTION_METRIC} {LOSS_LABELS.get(loss, loss)} d={dim} lr={choice['lr']:g}",
        )
        path = out / "tune" / f"heatmap_val_acc_{key}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def _same(value: str | None, number: float) -> bool:
    try:
        return value is not None and math.isclose(float(value), number)
    except ValueError:
        return False


# --- Driver ---------------------------------------------------------------------------------------
def write_settings(out: Path, stages: Sequence[Stage]) -> None:
    """The setting configs every stage picks with ``+results_setting=<name>``."""
    conf = out / "conf" / "results_setting"
    conf.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        for setting in stage.settings:
            (conf / f"{setting.name}.yaml").write_text(setting.config_text())


def _parse_stages(text: Sequence[str]) -> list[str]:
    names = [name for item in text for name in item.split(",") if name]
    unknown = [name for name in names if name not in STAGES + SEPARATE_STAGES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {unknown}; choose from {STAGES + SEPARATE_STAGES}"
        )
    if any(name in SEPARATE_STAGES for name in names) and len(set(names)) > 1:
        raise argparse.ArgumentTypeError(
            f"{SEPARATE_STAGES} run on their own: --stages paper_budget, then the others"
        )
    return [name for name in STAGES + SEPARATE_STAGES if name in names]


def _prepare_out(args: argparse.Namespace, options: Options) -> Path:
    out = Path(args.out or f"results/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    plan_file = out / "plan.json"
    if args.resume:
        if not plan_file.is_file():
            raise SystemExit(f"hugnc-results: --resume needs a hugnc-results directory: {out}")
        stored = json.loads(plan_file.read_text())
        if stored != asdict(options):
            raise SystemExit(
                f"hugnc-results: {out} was planned with {stored}, not {asdict(options)}; "
                "resume with the same --epochs/--seeds/--quick/--robustness/--logger"
            )
        return out
    if out.exists():
        raise SystemExit(
            f"hugnc-results: {out} exists; nothing was changed. Continue it with "
            f"--resume --out {out}, or choose another --out"
        )
    out.mkdir(parents=True)
    plan_file.write_text(json.dumps(asdict(options), indent=2))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hugnc-results", description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="results directory (default results/<date>_<time>)")
    parser.add_argument("--resume", action="store_true", help="continue an existing --out")
    parser.add_argument("--epochs", type=int, help="main-stage epochs (default 3, the config's)")
    parser.add_argument(
        "--seeds",
        help="main-stage seeds, e.g. 0,1,2 (the default; --quick: 0); lt/continual: the first",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=list(STAGES),
        help=f"stages to run, of {', '.join(STAGES)} (default all)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny pipeline check (tests)")
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="main stage: FGSM/PGD-10 robust accuracy (eps 0.1, 2 test batches; ~+6 min)",
    )
    parser.add_argument("--logger", default="csv", help="logger config (csv | none | wandb)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    budget = parser.add_argument_group("paper_budget stage")
    budget.add_argument(
        "--record",
        default=str(paper_budget.DEFAULT_RECORD),
        help=f"where finished jobs' small outputs go (default {paper_budget.DEFAULT_RECORD})",
    )
    budget.add_argument(
        "--commit", action="store_true", help="git-commit each finished job's record at once"
    )
    budget.add_argument("--only", help="comma-separated job names, e.g. ce_d64_s0,mhe_hug_d64_s0")
    args = parser.parse_args(argv)
    try:
        stage_names = _parse_stages(args.stages)
        seeds_text = args.seeds or ("0" if args.quick else "0,1,2")
        seeds = [int(s) for s in seeds_text.split(",") if s]
    except (argparse.ArgumentTypeError, ValueError) as error:
        parser.error(str(error))
    if not seeds:
        parser.error("--seeds needs at least one seed")
    if stage_names == ["paper_budget"]:
        return _run_paper_budget(args, parser)
    options = Options(args.epochs, seeds, args.quick, args.robustness, args.logger)

    stages = [s for s in build_stages(options, {}) if s.name in stage_names]
    total = sum(s.estimate_s for s in stages)
    print("hugnc-results plan (time model in hugnc.tools.results; 2 CPU cores, quiet machine):")
    for stage in stages:
        print(f"  {stage.name:<9} {stage.expected_jobs:>3} jobs  ~{_minutes(stage.estimate_s)}")
    print(f"  total     ~{_minutes(total)}", flush=True)
    if args.dry_run:
        return 0

    out = _prepare_out(args, options)
    print(f"results directory: {out}", flush=True)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    tuned_file = out / "tuned.json"
    tuned: dict[str, dict[str, Any]] = (
        json.loads(tuned_file.read_text()) if tuned_file.is_file() else {}
    )
    start = time.monotonic()
    unfinished = []
    for name in stage_names:
        if name != "tune" and not tuned:
            print(f"[{name}] needs the tune stage's choice (tuned.json): run --stages tune first")
            unfinished.append(name)
            continue
        (stage,) = (s for s in build_stages(options, tuned) if s.name == name)
        write_settings(out, [stage])
        finished, _ = run_stage(stage, out, env)
        if not finished:
            unfinished.append(name)
        if name == "tune":
            tuned = select_tuned(collect_local(out / "tune")) if (out / "tune").exists() else {}
            tuned_file.write_text(json.dumps(tuned, indent=2))
            print(_tuned_sentence(tuned), flush=True)
    elapsed = time.monotonic() - start
    header = [
        f"Produced by `hugnc-results` ({'quick check' if options.quick else 'full run'}) into "
        f"`{out}`; this invocation took {_minutes(elapsed)}. Settings: "
        f"`conf/experiment/results.yaml`, `conf/sweep/results_*.yaml`; main-stage seeds "
        f"{','.join(map(str, seeds))}.",
    ]
    if unfinished:
        header.append(f"Unfinished stages: {', '.join(unfinished)} (see <stage>.log).")
    readme, csv_path = write_results(out, tuned, header)
    print(readme.read_text())
    print(f"wrote {readme} and {csv_path} in {_minutes(elapsed)}")
    if unfinished:
        print(f"unfinished stages {unfinished}: continue with hugnc-results --resume --out {out}")
        return 1
    return 0


def _run_paper_budget(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--stages paper_budget``: its own jobs, run directories and committed record."""
    try:
        jobs = paper_budget.plan([n for n in (args.only or "").split(",") if n])
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out) if args.out else paper_budget.DEFAULT_OUT
    record = Path(args.record)
    recorded = [job.name for job in jobs if paper_budget.is_recorded(record, job)]
    estimate = paper_budget.job_estimate_s() * (len(jobs) - len(recorded))
    print(
        f"hugnc-results plan: paper_budget {len(jobs)} jobs ({len(recorded)} recorded), "
        f"~{_minutes(estimate)} for the rest (2 CPU cores, quiet machine)",
        flush=True,
    )
    if args.dry_run:
        return 0
    if not args.resume and (out.exists() or recorded):
        parser.error(
            f"{out if out.exists() else record} holds an earlier paper_budget run; nothing was "
            "changed. Continue it with --resume (finished jobs are kept, killed ones continue "
            "from their last checkpoint), or choose another --out and --record"
        )
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    return paper_budget.run(jobs, out, record, env, quick=args.quick, commit_records=args.commit)


if __name__ == "__main__":
    sys.exit(main())
