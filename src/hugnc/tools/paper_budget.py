"""``hugnc-results --stages paper_budget``: CE vs MHE-, MHS- and MGD-HUG at the paper's step count.

The protocol is ``conf/experiment/paper_budget.yaml`` (the paper's SGD, schedule shape and loss
weights at ~19,800 optimizer steps on Fashion-MNIST). The stage runs 12 jobs, one process each,
in this order: the four losses at d = 64 seed 0, then d = 64 seed 1, then d = 2 seed 0. They take
hours on 2 CPU cores, so the stage is resumable per job and leaves a small, committable record:

- ``<out>/<job>/`` is the job's run directory (checkpoints included; not committed).
- ``<record>/<job>/`` gets the job's small outputs once it has finished (``metrics.json``,
  ``curves.csv`` with one row per epoch, the NC and dynamics histories and pictures,
  ``config.yaml``), and ``<record>/`` the stage's table (``README.md``, ``results.csv``) and the
  pictures comparing the losses (``budget_curve.png``, ``dynamics_by_loss.png``). With
  ``--commit`` each finished job's record is committed at once (only those paths), so a fresh
  clone of the repository knows which jobs are done.
- ``--resume``: a job with a record is done and never runs again; a job whose run directory has
  ``checkpoints/last.ckpt`` continues from it (``python -m hugnc resume=...``); a run directory
  without a checkpoint is moved aside to ``<job>.incomplete-<k>`` and the job starts again.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from omegaconf import OmegaConf

from hugnc.config import config_dir
from hugnc.plots import dynamics_curves_figure
from hugnc.tools.logged_run import run_logged

LOSSES = ("ce", "mhe_hug", "mhs_hug", "mgd_hug")
LOSS_LABELS = {"ce": "CE", "mhe_hug": "MHE-HUG", "mhs_hug": "MHS-HUG", "mgd_hug": "MGD-HUG"}
#: (feature_dim, seed) in running order: seed 0 at d = 64 for every loss first.
SETTINGS = ((64, 0), (64, 1), (2, 0))
EXPERIMENT = "paper_budget"
DEFAULT_OUT = Path("results/paper_budget_runs")
DEFAULT_RECORD = Path("results/paper_budget")
#: The small outputs of a run directory that make up a job's record.
RECORD_FILES = ("metrics.json", "nc_history.json", "dynamics_history.json")
RECORD_PICTURES = "*.png"
#: Exit statuses of an interrupted job (SIGINT, SIGTERM): stop the stage, keep the checkpoint.
INTERRUPTED_EXIT = (130, 143, -2, -15)
#: ``--quick``: a pipeline check, numbers meaningless.
QUICK_OVERRIDES = (
    "data.train_subset=512",
    "trainer.max_epochs=2",
    "+trainer.limit_train_batches=3",
    "+trainer.limit_val_batches=1",
    "+trainer.limit_test_batches=1",
    "callbacks.neural_collapse.max_batches=1",
)

# --- Time model (2 CPU cores, quiet machine, the paper_budget model in float32) -----------------
#: One optimizer step of LeNet++ 16-32-64 (two 3x3 convs per stage) at batch 128, callbacks
#: included (from the MHS-HUG job of 2026-12-02: 29.6 min for 46 epochs, nothing else running).
STEP_S = 0.08
#: Per epoch: validation on 5,000 images and one NC measurement.
EPOCH_EVAL_S = 2.5
#: Per job: process start, data, the test pass and the pictures.
JOB_OVERHEAD_S = 25.0
TRAIN_IMAGES = 55_000


@dataclass(frozen=True)
class BudgetJob:
    """One run of the stage: a loss at one feature dimension and seed."""

    loss: str
    feature_dim: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.loss}_d{self.feature_dim}_s{self.seed}"

    @property
    def label(self) -> str:
        return LOSS_LABELS[self.loss]

    def overrides(self, quick: bool = False) -> list[str]:
        overrides = [
            f"experiment={EXPERIMENT}",
            f"loss={self.loss}",
            f"model.feature_dim={self.feature_dim}",
            f"seed={self.seed}",
        ]
        return overrides + list(QUICK_OVERRIDES if quick else ())


def plan(only: Sequence[str] = ()) -> list[BudgetJob]:
    """The stage's jobs in running order; ``only``: just the jobs of these names.

    Raises:
        ValueError: a name in ``only`` is not a job of the stage.
    """
    jobs = [BudgetJob(loss, dim, seed) for dim, seed in SETTINGS for loss in LOSSES]
    if only:
        names = {job.name for job in jobs}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ValueError(f"unknown paper_budget job(s) {unknown}; jobs: {sorted(names)}")
        jobs = [job for job in jobs if job.name in only]
    return jobs


def job_estimate_s() -> float:
    """Seconds one job takes by the time model, for the protocol's epochs and batch size."""
    protocol = OmegaConf.load(config_dir() / "experiment" / f"{EXPERIMENT}.yaml")
    epochs = int(protocol.trainer.max_epochs)
    steps_per_epoch = math.ceil(TRAIN_IMAGES / int(protocol.data.batch_size))
    return JOB_OVERHEAD_S + epochs * (steps_per_epoch * STEP_S + EPOCH_EVAL_S)


# --- Records --------------------------------------------------------------------------------------
def _status(directory: Path) -> str:
    """``status`` of ``directory/metrics.json`` (a run directory or a job's record); "" if none."""
    metrics = directory / "metrics.json"
    return json.loads(metrics.read_text()).get("status", "") if metrics.is_file() else ""


def is_recorded(record: Path, job: BudgetJob) -> bool:
    """Whether ``job`` finished and its outputs are in ``record`` (then it never runs again)."""
    return _status(record / job.name) == "completed"


def epoch_curves(run_dir: Path) -> list[dict[str, float]]:
    """One dict per epoch of what the CSV logger wrote during fit (``epoch``, ``step``, metrics).

    A resumed run has one ``csv/version_<n>/metrics.csv`` per process; later versions win for the
    epochs they repeat (the epoch a kill interrupted is trained again after resuming).
    """
    versions = sorted(
        run_dir.glob("csv/version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1])
    )
    epochs: dict[int, dict[str, float]] = {}
    for path in versions:
        restarted: set[int] = set()
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"]))
                # Test metrics (logged once, after fit) are in metrics.json, not the curves.
                values = {
                    k: float(v)
                    for k, v in row.items()
                    if v not in ("", None) and not k.startswith("test/")
                }
                if set(values) <= {"epoch", "step"}:
                    continue
                if epoch not in restarted:  # first row of this epoch in this version
                    restarted.add(epoch)
                    epochs[epoch] = {}
                epochs[epoch] |= values
                epochs[epoch]["step"] = max(values.get("step", 0.0), epochs[epoch].get("step", 0))
    return [epochs[e] for e in sorted(epochs)]


def write_curves(rows: Sequence[dict[str, float]], path: Path) -> None:
    columns = ["epoch", "step", *sorted({k for row in rows for k in row} - {"epoch", "step"})]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: f"{row[k]:.6g}" if k in row else "" for k in columns})


def record_job(run_dir: Path, record: Path, job: BudgetJob, wall_s: float | None) -> Path:
    """Copy a finished job's small outputs from ``run_dir`` to ``record/<job>`` (no checkpoints)."""
    target = record / job.name
    target.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    for picture in run_dir.glob(RECORD_PICTURES):
        shutil.copy2(picture, target / picture.name)
    if (run_dir / ".hydra" / "config.yaml").is_file():
        shutil.copy2(run_dir / ".hydra" / "config.yaml", target / "config.yaml")
    curves = epoch_curves(run_dir)
    # The logger's step is where Lightning logged; the dynamics history has the optimizer steps
    # done by each epoch's end, which is what the budget curve is plotted against.
    history_file = run_dir / "dynamics_history.json"
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    steps = {int(entry["epoch"]): entry["step"] for entry in history}
    for row in curves:
        row["step"] = steps.get(int(row["epoch"]), row["step"])
    write_curves(curves, target / "curves.csv")
    if wall_s is not None:
        metrics = json.loads((target / "metrics.json").read_text())
        metrics["wall_s"] = metrics.get("wall_s", 0.0) + wall_s
        (target / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return target


def _read_curves(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]


# --- Summary: table and pictures ------------------------------------------------------------------
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
    jobs = [job for job in plan() if is_recorded(record, job)]
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
    for dim in sorted({d for d, _ in SETTINGS}, reverse=True):
        for loss in LOSSES:
            group = [j for j in jobs if j.loss == loss and j.feature_dim == dim]
            if not group:
                continue
            metrics = [json.loads((record / j.name / "metrics.json").read_text()) for j in group]
            finals = [_final(record / j.name / "dynamics_history.json") for j in group]
            curves = [_read_curves(record / j.name / "curves.csv") for j in group]
            train_acc = [c[-1]["train/acc"] for c in curves if c and "train/acc" in c[-1]]
            steps = [int(c[-1]["step"]) for c in curves if c]
            rows.append(
                [
                    LOSS_LABELS[loss],
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
        f"Protocol: `conf/experiment/{EXPERIMENT}.yaml`; {len(jobs)} of {len(plan())} jobs "
        "recorded. Test accuracy mean ± std over seeds; the other columns at the last epoch.",
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
        *("| " + " | ".join(row) + " |" for row in rows[1:]),
    ]
    paths = [record / "README.md", record / "results.csv"]
    paths[0].write_text("\n".join(lines) + "\n")
    with paths[1].open("w", newline="") as handle:
        csv.writer(handle).writerows(csv_rows)
    if jobs:
        paths += [_budget_curve(record, jobs), _dynamics_by_loss(record, jobs)]
    return paths


def _final(path: Path) -> dict[str, float]:
    history = json.loads(path.read_text()) if path.is_file() else []
    return {k: v for k, v in (history[-1] if history else {}).items() if v is not None}


def _budget_curve(record: Path, jobs: Sequence[BudgetJob]) -> Path:
    dims = sorted({j.feature_dim for j in jobs}, reverse=True)
    fig, axes = plt.subplots(1, len(dims), figsize=(7 * len(dims), 5), squeeze=False)
    for ax, dim in zip(axes[0], dims, strict=True):
        for loss in LOSSES:
            curves = [
                _read_curves(record / j.name / "curves.csv")
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
    histories = {}
    for job in jobs:
        path = record / job.name / "dynamics_history.json"
        if job.seed == 0 and path.is_file():
            histories[f"{job.label} d={job.feature_dim}"] = json.loads(path.read_text())
    fig = dynamics_curves_figure(histories, "training dynamics by loss (seed 0)")
    path = record / "dynamics_by_loss.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --- Running --------------------------------------------------------------------------------------
def commit(paths: Sequence[Path], message: str, attempts: int = 20) -> bool:
    """Commit exactly ``paths`` (``git commit --only``) in the repository holding them; other
    staged or unstaged changes stay as they are. Retries while another git command holds the
    index lock. Returns whether a commit was made."""
    repo = paths[0].resolve().parent
    for attempt in range(attempts):
        names = [str(p.resolve()) for p in paths if p.exists()]
        add = subprocess.run(["git", "-C", str(repo), "add", "--", *names], capture_output=True)
        done = add.returncode == 0 and (
            subprocess.run(
                ["git", "-C", str(repo), "commit", "-q", "-m", message, "--only", "--", *names],
                capture_output=True,
                text=True,
            ).returncode
            == 0
        )
        if done:
            return True
        if attempt + 1 < attempts:
            time.sleep(3)
    print(f"[paper_budget] could not commit {[str(p) for p in paths]}", flush=True)
    return False


def _aside(run_dir: Path) -> Path:
    k = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.incomplete-{k}")).exists():
        k += 1
    run_dir.rename(aside)
    return aside


def job_command(job: BudgetJob, run_dir: Path, quick: bool) -> list[str]:
    """``python -m hugnc`` continuing ``run_dir`` from its last checkpoint, else starting it."""
    if (run_dir / "checkpoints" / "last.ckpt").is_file():
        return [sys.executable, "-m", "hugnc", f"resume={run_dir.resolve()}"]
    return [
        sys.executable,
        "-m",
        "hugnc",
        *job.overrides(quick),
        f"hydra.run.dir={run_dir.resolve()}",
    ]


def run(
    jobs: Sequence[BudgetJob],
    out: Path,
    record: Path,
    env: dict[str, str],
    quick: bool = False,
    commit_records: bool = False,
) -> int:
    """Run the jobs not yet recorded, one process each; returns 0 (all recorded), 1 (some job
    failed) or 2 (interrupted: continue with ``--resume``)."""
    out.mkdir(parents=True, exist_ok=True)
    record.mkdir(parents=True, exist_ok=True)
    todo = [job for job in jobs if not is_recorded(record, job)]
    per_job = job_estimate_s() if not quick else 15.0
    print(
        f"[paper_budget] {len(jobs) - len(todo)} of {len(jobs)} jobs recorded in {record}; "
        f"{len(todo)} to run, estimated {per_job / 60:.0f} min each, "
        f"{len(todo) * per_job / 3600:.1f} h in all (2 CPU cores, quiet machine)",
        flush=True,
    )
    failed = []
    for job in todo:
        run_dir = out / job.name
        wall_s: float | None = None
        if _status(run_dir) != "completed":
            if run_dir.exists() and not (run_dir / "checkpoints" / "last.ckpt").is_file():
                print(f"[paper_budget] {job.name}: no checkpoint; moved to {_aside(run_dir).name}")
            command = job_command(job, run_dir, quick)
            started = time.monotonic()
            print(f"[paper_budget] {job.name}: {' '.join(command[2:])}", flush=True)
            code = run_logged(command, out / f"{job.name}.log", env)
            wall_s = time.monotonic() - started
            if code in INTERRUPTED_EXIT:
                print(
                    f"[paper_budget] {job.name} interrupted (exit {code}); continue with --resume"
                )
                return 2
            if _status(run_dir) != "completed":
                print(f"[paper_budget] {job.name} FAILED (exit {code}); see {out / job.name}.log")
                failed.append(job.name)
                continue
        target = record_job(run_dir, record, job, wall_s)
        summary = write_summary(record)
        accuracy = json.loads((target / "metrics.json").read_text()).get("test/acc", math.nan)
        print(
            f"[paper_budget] {job.name} finished: test acc {100 * accuracy:.2f}%"
            + (f" in {wall_s / 60:.1f} min" if wall_s else ""),
            flush=True,
        )
        if commit_records:
            commit(
                [target, *summary],
                f"paper_budget: {job.name} finished (test acc {100 * accuracy:.2f}%)",
            )
    if failed:
        print(f"[paper_budget] failed: {failed}; run again with --resume", flush=True)
        return 1
    return 0
