"""The paper_budget stage's table (``<record>/README.md``, ``<record>/results.csv``: mean ± std
over seeds per loss and d) and the pictures comparing the losses, from the recorded jobs."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from experiments.paper_budget import plan
from experiments.paper_budget.plan import EXPERIMENT, LOSS_LABELS, LOSSES, SETTINGS, BudgetJob
from experiments.paper_budget.records import is_recorded, read_curves
from hugnc import run_dir as layout
from hugnc.plots import dynamics_curves_figure

#: Table columns from each job's final epoch (dynamics history) besides test accuracy.
FINAL_DYNAMICS = ("intra_distance", "effective_lr", "weight_norm", "classifier_min_angle_deg")


def _mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2, kind: str = "f") -> str:
    """``mean ± std`` (sample std) of ``values`` times ``scale``; ``kind`` "g": significant
    digits (for values spanning decades, such as the effective step size)."""
    if not values:
        return "-"
    mean = float(np.mean(values)) * scale
    if len(values) == 1:
        return f"{mean:.{digits}{kind}}"
    return f"{mean:.{digits}{kind}} ± {float(np.std(values, ddof=1)) * scale:.{digits}{kind}}"


def write_summary(record: Path) -> list[Path]:
    """``README.md`` and ``results.csv`` (mean ± std over seeds per loss and d) and the pictures
    ``budget_curve.png`` (val accuracy against optimizer steps) and ``dynamics_by_loss.png``
    (seed 0 of each loss at each d) from the jobs recorded in ``record``."""
    jobs = [job for job in plan.jobs() if is_recorded(record, job)]
    rows = [
        [
            "loss",
            "d",
            "seeds",
            "steps",
            "test acc %",
            "final train acc %",
            *FINAL_DYNAMICS,
            "wall min",
        ]
    ]
    csv_rows = [["loss", "feature_dim", "seed", "steps", "test_acc", "train_acc", *FINAL_DYNAMICS]]
    notes: list[str] = []
    for dim in sorted({d for d, _ in SETTINGS}, reverse=True):
        for loss in LOSSES:
            group = [j for j in jobs if j.loss == loss and j.feature_dim == dim]
            if not group:
                continue
            metrics = [layout.read_status(record / j.name) or {} for j in group]
            histories = [_history(record, j) for j in group]
            finals = [_final(history) for history in histories]
            curves = [read_curves(record / j.name / "curves.csv") for j in group]
            train_acc = [c[-1]["train/acc"] for c in curves if c and "train/acc" in c[-1]]
            steps = [int(c[-1]["step"]) for c in curves if c]
            label = LOSS_LABELS[loss]
            if group[0].deviation:
                notes.append(_deviation_note(len(notes) + 1, group, histories))
                label += f" ({len(notes)})"
            rows.append(
                [
                    label,
                    str(dim),
                    ",".join(str(j.seed) for j in group),
                    str(max(steps)) if steps else "-",
                    _mean_std([m["test/acc"] for m in metrics], 100.0),
                    _mean_std(train_acc, 100.0),
                    *(
                        _mean_std([f[k] for f in finals if k in f], 1.0, 3, "g")
                        for k in FINAL_DYNAMICS
                    ),
                    _mean_std([m["wall_s"] / 60 for m in metrics if "wall_s" in m], 1.0, 0),
                ]
            )
            for job, m, f, c in zip(group, metrics, finals, curves, strict=True):
                csv_rows.append(
                    [
                        loss,
                        str(dim),
                        str(job.seed),
                        str(int(c[-1]["step"])) if c else "",
                        f"{m['test/acc']:.6g}",
                        f"{c[-1].get('train/acc', math.nan):.6g}" if c else "",
                        *(f"{f.get(k, math.nan):.6g}" for k in FINAL_DYNAMICS),
                    ]
                )
    lines = [
        "# Paper budget: CE vs HUG at the paper's number of optimizer steps (Fashion-MNIST)",
        "",
        f"Protocol: `conf/experiment/{EXPERIMENT}.yaml`; {len(jobs)} of {len(plan.jobs())} jobs "
        "recorded. Test accuracy mean ± std over seeds; the other columns at the last epoch.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(row) + " |" for row in rows[1:]),
        *(["", *notes] if notes else []),
    ]
    paths = [record / "README.md", record / "results.csv"]
    paths[0].write_text("\n".join(lines) + "\n")
    with paths[1].open("w", newline="") as handle:
        csv.writer(handle).writerows(csv_rows)
    if jobs:
        paths += [_budget_curve(record, jobs), _dynamics_by_loss(record, jobs)]
    return paths


def _deviation_note(
    number: int, group: Sequence[BudgetJob], histories: Sequence[list[dict[str, float]]]
) -> str:
    """The footnote of a row whose jobs ran with :data:`plan.DEVIATIONS`: the overrides and how
    often gradient clipping bound (mean over the epochs of ``dynamics/clipped_fraction``)."""
    overrides = " ".join(f"`{o}`" for o in group[0].deviation)
    clipped = []
    for job, history in zip(group, histories, strict=True):
        fractions = [
            e["clipped_fraction"] for e in history if e.get("clipped_fraction") is not None
        ]
        if fractions:
            clipped.append(
                f"seed {job.seed}: clipped {100 * np.mean(fractions):.1f}% of steps "
                f"({100 * fractions[0]:.1f}% in epoch 0)"
            )
    return (
        f"({number}) Beyond the protocol, because the paper's optimizer alone diverges here "
        f"(`experiments/paper_budget/plan.py` DEVIATIONS): {overrides}"
        + (f"; {', '.join(clipped)}." if clipped else ".")
    )


def _history(record: Path, job: BudgetJob) -> list[dict[str, float]]:
    """``job``'s recorded ``dynamics_history.json`` ([] if missing)."""
    path = record / job.name / "dynamics_history.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _final(history: list[dict[str, float]]) -> dict[str, float]:
    return {k: v for k, v in (history[-1] if history else {}).items() if v is not None}


def _budget_curve(record: Path, jobs: Sequence[BudgetJob]) -> Path:
    dims = sorted({j.feature_dim for j in jobs}, reverse=True)
    fig, axes = plt.subplots(1, len(dims), figsize=(7 * len(dims), 5), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        for loss in LOSSES:
            curves = [
                read_curves(record / j.name / "curves.csv")
                for j in jobs
                if j.loss == loss and j.feature_dim == dim
            ]
            curves = [[r for r in c if "val/acc" in r] for c in curves]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            steps = np.array([r["step"] for r in curves[0][:length]])
            accuracy = np.array([[r["val/acc"] for r in c[:length]] for c in curves]) * 100
            line = ax.plot(steps, accuracy.mean(0), label=f"{LOSS_LABELS[loss]} (n={len(curves)})")
            if len(curves) > 1:
                ax.fill_between(
                    steps, accuracy.min(0), accuracy.max(0), alpha=0.2, color=line[0].get_color()
                )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(f"d = {dim} (band: min-max over seeds)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("accuracy against optimizer steps, paper weights (Fashion-MNIST)")
    fig.tight_layout()
    path = record / "budget_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _dynamics_by_loss(record: Path, jobs: Sequence[BudgetJob]) -> Path:
    histories: dict[str, Sequence[dict[str, float]]] = {
        f"{job.label} d={job.feature_dim}": history
        for job in jobs
        if job.seed == 0 and (history := _history(record, job))
    }
    fig = dynamics_curves_figure(histories, "training dynamics by loss (seed 0)")
    path = record / "dynamics_by_loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
