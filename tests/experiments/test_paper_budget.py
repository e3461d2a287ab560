"""The paper-budget stage: its protocol, job order, per-job resume, records and commits."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.paper_budget import plan, records
from experiments.paper_budget import runner as budget_runner
from experiments.paper_budget import table as budget_table
from experiments.paper_budget.plan import BudgetJob
from experiments.results import runner

PAPER_WEIGHTS = {"mhe_hug": (0.15, 0.015), "mhs_hug": (0.15, 0.015), "mgd_hug": (0.15, 0.03)}


@pytest.mark.parametrize("loss", plan.LOSSES)
def test_protocol_is_the_papers_optimizer_schedule_and_weights_at_its_step_count(
    compose_cfg, loss: str
) -> None:
    cfg = compose_cfg(*BudgetJob(loss, 64, 0).overrides())
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer.momentum == 0.9
    assert cfg.optimizer.weight_decay == 2e-4
    epochs = cfg.trainer.max_epochs
    # Decays at 30/60/90% of training, as the paper's 60/120/180 of 200 epochs.
    assert [m / epochs for m in cfg.scheduler.factory.milestones] == pytest.approx(
        [0.3, 0.6, 0.9], abs=0.015
    )
    steps = epochs * math.ceil((60_000 - cfg.data.val_size) / cfg.data.batch_size)
    assert steps == pytest.approx(200 * math.ceil(50_000 / 512), rel=0.02)  # ~19,600
    assert cfg.trainer.precision == "32-true"
    assert cfg.model.feature_dim == 64
    if loss == "ce":
        assert cfg.head._target_.endswith("LinearHead")
    else:
        assert (cfg.loss.alpha, cfg.loss.beta) == PAPER_WEIGHTS[loss]
    assert "training_dynamics" in cfg.callbacks


def test_only_ce_at_d2_clips_and_its_row_says_how_often_clipping_bound(
    compose_cfg, tmp_path: Path
) -> None:
    for job in plan.jobs():
        cfg = compose_cfg(*job.overrides())
        clip = cfg.trainer.get("gradient_clip_val")
        assert clip == (5.0 if (job.loss, job.feature_dim) == ("ce", 2) else None), job.name
    # A record of CE d = 2 (clipping) and MHE-HUG d = 2 (none): only CE's row has a note.
    for job, fractions in [
        (BudgetJob("ce", 2, 0), [0.5, 0.1, 0.0]),
        (BudgetJob("mhe_hug", 2, 0), []),
    ]:
        target = tmp_path / job.name
        target.mkdir()
        (target / "metrics.json").write_text(json.dumps({"status": "completed", "test/acc": 0.8}))
        history = [
            {"epoch": e, "step": 10 * (e + 1), "clipped_fraction": f}
            for e, f in enumerate(fractions)
        ]
        (target / "dynamics_history.json").write_text(json.dumps(history))
        records.write_curves([{"epoch": 0, "step": 10, "train/acc": 0.5}], target / "curves.csv")
    budget_table.write_summary(tmp_path)
    table = (tmp_path / "README.md").read_text()
    assert "| CE (1) | 2 | 0 |" in table and "| MHE-HUG | 2 | 0 |" in table
    assert "(1) Beyond the protocol" in table and "`+trainer.gradient_clip_val=5.0`" in table
    assert "seed 0: clipped 20.0% of steps (50.0% in epoch 0)" in table


def test_jobs_run_seed_0_at_d64_for_every_loss_first() -> None:
    jobs = plan.jobs()
    assert len(jobs) == 12 and len({job.name for job in jobs}) == 12
    assert {(j.loss, j.feature_dim, j.seed) for j in jobs[:4]} == {
        (loss, 64, 0) for loss in plan.LOSSES
    }
    assert {(j.feature_dim, j.seed) for j in jobs} == {(64, 0), (64, 1), (2, 0)}
    assert [j.name for j in plan.jobs(["mgd_hug_d2_s0"])] == ["mgd_hug_d2_s0"]
    with pytest.raises(ValueError, match="unknown paper_budget job"):
        plan.jobs(["ce_d3_s0"])


def test_a_killed_job_continues_from_its_checkpoint_else_restarts(tmp_path: Path) -> None:
    job = BudgetJob("mhe_hug", 64, 0)
    run_dir = tmp_path / job.name
    fresh = budget_runner.job_command(job, run_dir, quick=False)
    assert "experiment=paper_budget" in fresh and f"hydra.run.dir={run_dir}" in fresh
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert budget_runner.job_command(job, run_dir, quick=False)[2:] == [
        "hugnc",
        f"resume={run_dir.resolve()}",
    ]


def test_an_interrupted_job_is_parked_and_a_fresh_clone_continues_it(tmp_path: Path) -> None:
    job = BudgetJob("mhs_hug", 64, 1)
    record, run_dir = tmp_path / "record", tmp_path / "runs" / job.name
    assert records.park(run_dir, record, job) is None  # nothing to continue from
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"last")
    (run_dir / "checkpoints" / "epoch_002.ckpt").write_bytes(b"older")
    (run_dir / "csv" / "version_0").mkdir(parents=True)
    (run_dir / "csv" / "version_0" / "metrics.csv").write_text("epoch,step\n0,9\n")
    parked = records.park(run_dir, record, job)
    assert parked == record / "unfinished" / job.name
    assert sorted(p.name for p in (parked / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (parked / "csv" / "version_0" / "metrics.csv").is_file()
    assert not records.is_recorded(record, job)

    fresh = tmp_path / "clone" / job.name  # another clone: no run directory yet
    assert records.unpark(record, job, fresh)
    assert (fresh / "checkpoints" / "last.ckpt").read_bytes() == b"last"
    assert budget_runner.job_command(job, fresh, quick=False)[2:] == [
        "hugnc",
        f"resume={fresh.resolve()}",
    ]
    assert not records.unpark(record, job, fresh)  # an existing run directory is kept


def test_a_resumed_jobs_wall_time_counts_its_interrupted_attempts(tmp_path: Path) -> None:
    job = BudgetJob("mhs_hug", 2, 0)
    record, run_dir = tmp_path / "record", tmp_path / "runs" / job.name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"last")
    records.add_interrupted_wall(run_dir, 600.0)
    records.add_interrupted_wall(run_dir, 60.5)
    parked = records.park(run_dir, record, job)
    fresh = tmp_path / "clone" / job.name
    assert parked is not None and records.unpark(record, job, fresh)
    (fresh / "metrics.json").write_text(json.dumps({"status": "completed", "test/acc": 0.9}))
    target = records.record_job(fresh, record, job, wall_s=100.0)
    assert json.loads((target / "metrics.json").read_text())["wall_s"] == pytest.approx(760.5)


def test_curves_merge_the_csv_versions_of_a_resumed_run(tmp_path: Path) -> None:
    first = tmp_path / "csv" / "version_0"
    second = tmp_path / "csv" / "version_1"
    first.mkdir(parents=True)
    second.mkdir(parents=True)
    # Killed during epoch 1 (after its first validation row was written); resumed from epoch 1.
    (first / "metrics.csv").write_text(
        "epoch,step,train/acc,val/acc,test/acc\n0,9,0.5,,\n0,9,,0.55,\n1,19,,0.6,\n"
    )
    (second / "metrics.csv").write_text(
        "epoch,step,train/acc,val/acc,test/acc\n1,19,0.7,,\n1,19,,0.75,\n2,19,,,0.8\n"
    )
    curves = records.epoch_curves(tmp_path)
    assert curves == [
        {"epoch": 0.0, "step": 9.0, "train/acc": 0.5, "val/acc": 0.55},
        {"epoch": 1.0, "step": 19.0, "train/acc": 0.7, "val/acc": 0.75},
    ]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def test_commit_takes_only_the_record_and_leaves_other_work_alone(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    _git(repo, "config", "user.email", "t@example.org")
    _git(repo, "config", "user.name", "t")
    (repo / "code.py").write_text("v1\n")
    _git(repo, "add", "code.py")
    _git(repo, "commit", "-qm", "start")
    (repo / "code.py").write_text("v2, staged work in progress\n")
    _git(repo, "add", "code.py")
    (repo / "notes.txt").write_text("untracked\n")
    record = repo / "results" / "paper_budget" / "ce_d64_s0"
    record.mkdir(parents=True)
    (record / "metrics.json").write_text("{}")
    assert budget_runner.commit([record], "paper_budget: ce_d64_s0 finished")
    assert _git(repo, "show", "--name-only", "--format=", "HEAD").split() == [
        "results/paper_budget/ce_d64_s0/metrics.json"
    ]
    assert _git(repo, "diff", "--cached", "--name-only").split() == ["code.py"]
    assert "?? notes.txt" in _git(repo, "status", "--short")
    # A parked run, committed, then removed once its job finished: the removal is committed.
    parked = repo / "results" / "paper_budget" / "unfinished" / "ce_d64_s1"
    parked.mkdir(parents=True)
    (parked / "last.ckpt").write_bytes(b"x")
    assert budget_runner.commit([parked], "parked")
    shutil.rmtree(parked)
    assert budget_runner.commit([record, parked], "finished")
    assert _git(repo, "show", "--name-status", "--format=", "HEAD").split() == [
        "D",
        "results/paper_budget/unfinished/ce_d64_s1/last.ckpt",
    ]
    assert _git(repo, "diff", "--cached", "--name-only").split() == ["code.py"]


def test_existing_record_needs_resume_and_dry_run_prints_the_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    record = tmp_path / "record"
    (record / "ce_d64_s0").mkdir(parents=True)
    (record / "ce_d64_s0" / "metrics.json").write_text('{"status": "completed"}')
    args = ["--stages", "paper_budget", "--out", str(tmp_path / "runs"), "--record", str(record)]
    assert runner.main([*args, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "12 jobs (1 recorded)" in printed and "min for the rest" in printed
    with pytest.raises(SystemExit):
        runner.main(args)
    assert "Continue it with --resume" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(SystemExit):
        runner.main(["--stages", "paper_budget,main"])


@pytest.mark.slow
@pytest.mark.real_data
def test_quick_stage_records_jobs_and_resume_skips_them(tmp_path: Path, pipeline_env: dict) -> None:
    out, record = tmp_path / "runs", tmp_path / "record"
    env = pipeline_env
    command = [
        sys.executable,
        "-m",
        "experiments.results",
        "--stages",
        "paper_budget",
        "--quick",
        "--only",
        "ce_d64_s0,mgd_hug_d2_s0",
        "--out",
        str(out),
        "--record",
        str(record),
    ]
    # A run directory without a checkpoint (killed in its first epoch) is moved aside.
    (out / "ce_d64_s0").mkdir(parents=True)
    first = subprocess.run(
        [*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (out / "ce_d64_s0.incomplete-1").is_dir()
    for name in ("ce_d64_s0", "mgd_hug_d2_s0"):
        files = {p.name for p in (record / name).iterdir()}
        assert {"metrics.json", "curves.csv", "dynamics_history.json", "nc_curves.png"} <= files
        assert "dynamics_curves.png" in files and "config.yaml" in files
        assert not any(p.suffix == ".ckpt" for p in (record / name).rglob("*"))
        metrics = json.loads((record / name / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["wall_s"] > 0
    assert "feature_geometry_test.png" in {p.name for p in (record / "mgd_hug_d2_s0").iterdir()}
    table = (record / "README.md").read_text()
    assert "2 of 12 jobs recorded" in table
    assert "| CE | 64 | 0 |" in table and "| MGD-HUG | 2 | 0 |" in table
    assert (record / "budget_curve.png").is_file() and (record / "dynamics_by_loss.png").is_file()

    stamps = {p: p.stat().st_mtime_ns for p in record.rglob("metrics.json")}
    again = subprocess.run(
        [*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 of 2 jobs recorded" in again.stdout and "0 to run" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in record.rglob("metrics.json")} == stamps
