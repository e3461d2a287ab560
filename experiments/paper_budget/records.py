"""A finished paper_budget job's record: its small outputs copied out of the run directory
(no checkpoints), with the per-epoch curves merged from the CSV logger's versions; and an
interrupted job's run directory parked beside the records (with its last checkpoint only), so a
fresh clone continues it where it stopped."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from experiments.paper_budget.plan import BudgetJob
from hugnc import run_dir as layout

#: The small outputs of a run directory that make up a job's record.
RECORD_FILES = (layout.METRICS_FILE, "nc_history.json", "dynamics_history.json")
RECORD_PICTURES = "*.png"
#: ``<record>/unfinished/<job>``: an interrupted job's run directory, kept with the records.
UNFINISHED = "unfinished"
#: ``<run dir>/<this>``: seconds the job's interrupted attempts ran (the stage's clock); parked
#: with the run directory, so a resumed job's ``wall_s`` counts every attempt.
INTERRUPTED_WALL = "interrupted_wall_s"


def status(directory: Path) -> str:
    """``status`` of ``directory/metrics.json`` (a run directory or a job's record); "" if none."""
    content = layout.read_status(directory)
    return str(content.get("status", "")) if content else ""


def is_recorded(record: Path, job: BudgetJob) -> bool:
    """Whether ``job`` finished and its outputs are in ``record`` (then it never runs again)."""
    return status(record / job.name) == "completed"


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


def read_curves(path: Path) -> list[dict[str, float]]:
    """A record's ``curves.csv`` as written by :func:`write_curves` ([] if missing)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]


def record_job(run_dir: Path, record: Path, job: BudgetJob, wall_s: float | None) -> Path:
    """Copy a finished job's small outputs from ``run_dir`` to ``record/<job>`` (no checkpoints)."""
    target = record / job.name
    target.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    for picture in run_dir.glob(RECORD_PICTURES):
        shutil.copy2(picture, target / picture.name)
    if layout.config_file(run_dir).is_file():
        shutil.copy2(layout.config_file(run_dir), target / "config.yaml")
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
        metrics = layout.read_status(target) or {}
        metrics["wall_s"] = metrics.get("wall_s", 0.0) + wall_s + interrupted_wall(run_dir)
        layout.metrics_file(target).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return target


def interrupted_wall(run_dir: Path) -> float:
    """Seconds the interrupted attempts of ``run_dir``'s job ran (0 if none)."""
    path = run_dir / INTERRUPTED_WALL
    return float(path.read_text()) if path.is_file() else 0.0


def add_interrupted_wall(run_dir: Path, wall_s: float) -> None:
    """Count an interrupted attempt of ``wall_s`` seconds in ``run_dir``."""
    (run_dir / INTERRUPTED_WALL).write_text(f"{interrupted_wall(run_dir) + wall_s:.1f}\n")


def parked_dir(record: Path, job: BudgetJob) -> Path:
    """Where ``job``'s interrupted run directory is parked in ``record``."""
    return record / UNFINISHED / job.name


def _all_but_the_last_checkpoint(directory: str, names: list[str]) -> list[str]:
    if Path(directory).name != layout.CHECKPOINT_DIR:
        return []
    return [name for name in names if name != layout.LAST_CHECKPOINT]


def park(run_dir: Path, record: Path, job: BudgetJob) -> Path | None:
    """Copy an interrupted job's ``run_dir`` to :func:`parked_dir` with ``checkpoints/last.ckpt``
    as its only checkpoint (a LeNet++ checkpoint is ~1 MB), replacing an older parked copy.
    Returns the parked directory, or ``None`` when there is no checkpoint to continue from."""
    if not layout.last_checkpoint(run_dir).is_file():
        return None
    target = parked_dir(record, job)
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(run_dir, target, ignore=_all_but_the_last_checkpoint)
    return target


def unpark(record: Path, job: BudgetJob, run_dir: Path) -> bool:
    """Restore ``job``'s parked run directory to ``run_dir`` when this clone has none (the job
    then continues from its parked checkpoint); returns whether it did."""
    parked = parked_dir(record, job)
    if run_dir.exists() or not layout.last_checkpoint(parked).is_file():
        return False
    shutil.copytree(parked, run_dir)
    return True
