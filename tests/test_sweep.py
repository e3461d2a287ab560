"""Sweeps: per-job outputs and W&B runs, failed jobs recorded, `hugnc-report` tables/heatmaps."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.cli_runs import run_hugnc

from hugnc.tools.report import collect_local, collect_wandb, heatmap_grid, main, swept_keys


def test_collect_local_reports_failed_and_killed_jobs(fake_sweep: Path) -> None:
    jobs = collect_local(fake_sweep)
    assert [job.name for job in jobs] == [str(n) for n in range(8)]
    statuses = {
        (j.params["loss.alpha"], j.params["loss.beta"], j.params["seed"]): j.status for j in jobs
    }
    assert statuses[("0.15", "1.0", "1")] == "failed"
    assert statuses[("0.1", "1.0", "1")] == "failed"
    assert sum(s == "completed" for s in statuses.values()) == 6
    assert swept_keys(jobs) == ["loss.alpha", "loss.beta", "seed"]  # trainer=cpu is not swept
    failed = next(j for j in jobs if j.error.startswith("FloatingPointError"))
    assert failed.metrics == {}


def test_heatmap_grid_averages_seeds_and_counts_failures(fake_sweep: Path) -> None:
    x_values, y_values, means, failed = heatmap_grid(
        collect_local(fake_sweep), "test/acc", "loss.alpha", "loss.beta"
    )
    assert (x_values, y_values) == (["0.1", "0.15"], ["0.015", "1.0"])
    assert means[0][0] == pytest.approx(0.5 + 0.015 / 4 + 0.1 + 0.005)  # mean of seeds 0 and 1
    assert means[1][1] == pytest.approx(0.5 + 0.25 + 0.15)  # only seed 0 completed
    assert failed == [[0, 0], [1, 1]]


def test_report_cli_writes_tables_and_heatmap(
    fake_sweep: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([str(fake_sweep)]) == 0
    lines = (fake_sweep / "report.csv").read_text().splitlines()
    assert lines[0] == "job,status,loss.alpha,loss.beta,seed,test/acc,val/acc,error"
    assert len(lines) == 9 and sum(",failed," in line for line in lines) == 2
    assert "| 7 | failed | 0.15 | 1.0 | 1 |" in (fake_sweep / "report.md").read_text()
    assert (fake_sweep / "heatmap_test_acc.png").stat().st_size > 5000
    assert "8 jobs, 2 failed" in capsys.readouterr().out


def test_report_cli_clear_error_for_a_non_sweep_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no sweep jobs in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--wandb", "me/hugnc"])  # --group missing


def test_collect_wandb_uses_group_tags_and_states() -> None:
    runs = [
        SimpleNamespace(
            name="a",
            tags=["loss.alpha=0.1", "loss.beta=1.0"],
            state="finished",
            config={"loss": {"alpha": 0.1, "beta": 1.0}},
            summary={"test/acc": 0.8, "note": "x"},
        ),
        SimpleNamespace(
            name="b",
            tags=["loss.alpha=0.2", "loss.beta=1.0"],
            state="crashed",
            config={"loss": {"alpha": 0.2, "beta": 1.0}},
            summary={},
        ),
    ]
    calls = []

    class FakeApi:
        def runs(self, path, filters):
            calls.append((path, filters))
            return runs

    jobs = collect_wandb("me/hugnc", "sweep-1", api=FakeApi())
    assert calls == [("me/hugnc", {"group": "sweep-1"})]
    assert [(j.params["loss.alpha"], j.status) for j in jobs] == [
        ("0.1", "completed"),
        ("0.2", "failed"),
    ]
    assert jobs[0].metrics == {"test/acc": 0.8}


@pytest.mark.slow
def test_real_sweep_continues_after_a_failing_job(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    result = run_hugnc(
        "-m",
        "trainer=debug",
        "loss.alpha=0.15,-1",
        "loss.beta=0.5,1.0",
        "data.batch_size=8",
        "~callbacks.progress_bar",
        "~callbacks.neural_collapse",
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
        # alpha=-1 would now be refused before the sweep starts (tests/test_config_validation
        # .py); without the check it is a job that fails inside the sweep, as wanted here.
        env={"HUGNC_SKIP_CONFIG_CHECK": "1"},
    )
    # Hydra runs every job, then hugnc reports the first failure: a value the loss refuses is the
    # user's to fix, so exit 2 (hugnc/errors.py) and one line, not a traceback.
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = collect_local(sweep)
    assert [j.status for j in jobs] == ["completed", "completed", "failed", "failed"]
    assert "alpha must be >= 0" in jobs[2].error
    for job_dir in (sweep / j.name for j in jobs):
        runs = (
            list((job_dir / "wandb").glob("offline-run-*")) if (job_dir / "wandb").exists() else []
        )
        assert len(runs) <= 1
    completed_runs = [
        next((sweep / j.name / "wandb").glob("offline-run-*"))
        for j in jobs
        if j.status == "completed"
    ]
    assert len(completed_runs) == 2
    for run in completed_runs:  # one W&B group per sweep, named after its directory
        assert f'"group":"{sweep.name}"'.encode() in next(run.glob("*.wandb")).read_bytes()
    assert main([str(sweep)]) == 0
    _, _, means, failed = heatmap_grid(jobs, "test/acc", "loss.alpha", "loss.beta")
    # Columns sorted numerically: alpha=-1 (failed) first.
    assert failed == [[1, 0], [1, 0]] and all(math.isnan(row[0]) for row in means)
