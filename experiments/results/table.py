"""The results table: reads the stages' sweeps in ``<out>`` and writes ``<out>/README.md``,
``<out>/results.csv``, hugnc-report's per-stage ``report.*`` and ``summary.*`` and the tuning
heatmaps ``<out>/tune/heatmap_val_acc_*.png``."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from experiments.results.plan import (
    FEATURE_DIMS,
    HUG_LOSSES,
    LOSS_LABELS,
    ROBUST_PREFIX,
    SELECTION_METRIC,
    SIDE_DIM,
    TUNE_KEYS,
    Setting,
    settings_for,
)
from hugnc.plots import sweep_heatmap_figure
from hugnc.tools.report import (
    GroupSummary,
    JobResult,
    collect_local,
    heatmap_grid,
    summarize,
    write_summary,
    write_tables,
)

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


def _plain(summary: GroupSummary | None, metric: str, digits: int, scale: float = 1.0) -> str:
    """``mean ± std`` of ``metric`` over the group's seeds (``mean`` alone for one seed)."""
    if summary is None or metric not in summary.stats:
        return "-"
    mean, std, count = summary.stats[metric]
    if count > 1 and not math.isnan(std):
        return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"
    return f"{scale * mean:.{digits}f}"


def _percent(summary: GroupSummary | None, metric: str) -> str:
    return _plain(summary, metric, digits=2, scale=100.0)


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
    lines += ["", tuned_sentence(tuned), ""]
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


def tuned_sentence(tuned: dict[str, dict[str, Any]]) -> str:
    """The README's sentence naming the tuned weights (printed after the tune stage too)."""
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
