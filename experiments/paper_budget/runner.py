"""Running the paper_budget stage: one process per job not yet recorded, continuing a killed job
from its checkpoint, recording and (``--commit``) committing each finished job."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiments import timing
from experiments.logged_run import run_logged
from experiments.paper_budget.plan import BudgetJob, job_estimate_s
from experiments.paper_budget.records import (
    add_interrupted_wall,
    is_recorded,
    park,
    parked_dir,
    record_job,
    status,
    unpark,
)
from experiments.paper_budget.table import write_summary
from hugnc import run_dir as layout

#: Exit statuses of an interrupted job (SIGINT, SIGTERM): stop the stage, keep the checkpoint.
INTERRUPTED_EXIT = (130, 143, -2, -15)


def commit(paths: Sequence[Path], message: str, attempts: int = 20) -> bool:
    """Commit exactly ``paths`` (``git commit --only``) in the repository holding them; other
    staged or unstaged changes stay as they are. Retries while another git command holds the
    index lock. Returns whether a commit was made."""
    repo = paths[0].resolve().parent
    while not repo.exists():  # a removed path (a parked run once its job finished)
        repo = repo.parent
    for attempt in range(attempts):
        names = [str(p.resolve()) for p in paths if p.exists() or _tracked(p, repo)]
        add = subprocess.run(
            ["git", "-C", str(repo), "add", "-A", "--", *names], capture_output=True
        )
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


def _tracked(path: Path, repo: Path) -> bool:
    listed = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "--", str(path.resolve())],
        capture_output=True,
        text=True,
    )
    return bool(listed.stdout.strip())


def _aside(run_dir: Path) -> Path:
    k = 1
    while (aside := run_dir.with_name(f"{run_dir.name}.incomplete-{k}")).exists():
        k += 1
    run_dir.rename(aside)
    return aside


def job_command(job: BudgetJob, run_dir: Path, quick: bool) -> list[str]:
    """``python -m hugnc`` continuing ``run_dir`` from its last checkpoint, else starting it."""
    if layout.last_checkpoint(run_dir).is_file():
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
    per_job = job_estimate_s(quick)
    print(
        f"[paper_budget] {len(jobs) - len(todo)} of {len(jobs)} jobs recorded in {record}; "
        f"{len(todo)} to run, estimated {per_job / 60:.0f} min each, "
        f"{len(todo) * per_job / 3600:.1f} h in all ({timing.MACHINE})",
        flush=True,
    )
    failed = []
    for job in todo:
        run_dir = out / job.name
        wall_s: float | None = None
        if status(run_dir) != "completed":
            if unpark(record, job, run_dir):
                print(f"[paper_budget] {job.name}: continues from its parked checkpoint")
            if run_dir.exists() and not layout.last_checkpoint(run_dir).is_file():
                print(f"[paper_budget] {job.name}: no checkpoint; moved to {_aside(run_dir).name}")
            command = job_command(job, run_dir, quick)
            started = time.monotonic()
            print(f"[paper_budget] {job.name}: {' '.join(command[2:])}", flush=True)
            code = run_logged(command, out / f"{job.name}.log", env)
            wall_s = time.monotonic() - started
            if code in INTERRUPTED_EXIT:
                if run_dir.is_dir():
                    add_interrupted_wall(run_dir, wall_s)
                parked = park(run_dir, record, job)
                print(
                    f"[paper_budget] {job.name} interrupted (exit {code}); continue with --resume"
                    + (f" (parked in {parked})" if parked else ""),
                    flush=True,
                )
                if parked and commit_records:
                    commit([parked], f"paper_budget: {job.name} interrupted, parked for --resume")
                return 2
            if status(run_dir) != "completed":
                print(f"[paper_budget] {job.name} FAILED (exit {code}); see {out / job.name}.log")
                failed.append(job.name)
                continue
        target = record_job(run_dir, record, job, wall_s)
        summary = write_summary(record)
        parked = parked_dir(record, job)
        if parked.exists():
            shutil.rmtree(parked)
            summary.append(parked)
        accuracy = (layout.read_status(target) or {}).get("test/acc", math.nan)
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
