"""`python -m experiments.results`: the plan and its budget, tuning on val only, resuming, a real
quick run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from experiments.results import plan, runner, table
from hugnc.config import config_dir
from hugnc.tools.report import JobResult


def _tune_job(loss: str, dim: int, alpha: str, beta: str, lr: str, val: float, test: float):
    params = {
        "loss": loss,
        "model.feature_dim": str(dim),
        "loss.alpha": alpha,
        "loss.beta": beta,
        "optimizer.lr": lr,
    }
    return JobResult("j", params, "completed", {"val/acc": val, "test/acc": test})


def test_select_tuned_uses_validation_never_test() -> None:
    jobs = [
        # Best on test, worse on val: must not be chosen.
        _tune_job("mhe_hug", 2, "0.15", "0.3", "0.05", val=0.70, test=0.99),
        _tune_job("mhe_hug", 2, "0.5", "1.0", "0.1", val=0.80, test=0.60),
        # Two seeds of one cell: their mean (0.75) loses to 0.80.
        _tune_job("mhe_hug", 2, "0.15", "3.0", "0.1", val=0.90, test=0.5),
        _tune_job("mhe_hug", 2, "0.15", "3.0", "0.1", val=0.60, test=0.5),
        _tune_job("mgd_hug", 64, "0.15", "0.3", "0.05", val=0.5, test=0.1),
        JobResult("nan", {**_tune_job("mgd_hug", 64, "9", "9", "9", 0, 0).params}, "failed"),
    ]
    chosen = plan.select_tuned(jobs)
    assert chosen["mhe_hug_d2"] == {"alpha": 0.5, "beta": 1.0, "lr": 0.1, "val/acc": 0.8, "n": 1}
    assert chosen["mgd_hug_d64"]["beta"] == 0.3  # the failed cell is ignored
    assert set(chosen) == {"mhe_hug_d2", "mgd_hug_d64"}
    with pytest.raises(ValueError, match="validation metric"):
        plan.select_tuned(jobs, metric="test/acc")


def test_default_plan_fits_the_budget_and_never_tests_while_tuning() -> None:
    stages = plan.build_stages(plan.Options(), {})
    assert [(s.name, s.expected_jobs) for s in stages] == [
        ("tune", 72),
        ("main", 42),
        ("lt", 7),
        ("continual", 7),
    ]
    total_minutes = sum(s.estimate_s for s in stages) / 60
    assert 60 < total_minutes < 90
    tune_conf = yaml.safe_load((config_dir() / "sweep" / "results_tune.yaml").read_text())
    assert tune_conf["test"] is False
    main = stages[1]
    assert {s.name for s in main.settings} == {
        f"{row}_d{d}"
        for d in (2, 64)
        for row in ["ce"]
        + [f"{v}_hug_{w}" for v in ("mhe", "mhs", "mgd") for w in ("paper", "tuned")]
    }
    command = main.command(Path("out"))
    assert command[1:4] == ["-m", "hugnc", "-m"]
    assert f"hydra.sweep.dir={Path('out').resolve() / 'main'}" in command
    assert "seed=0,1,2" in command
    assert not any(o.startswith("hydra/launcher") for o in command)
    concurrent = main.command(Path("out"), jobs_at_once=2)
    assert sorted(concurrent) == sorted(
        [
            *command,
            "hydra/launcher=ray",
            "hydra.launcher.ray.init.num_cpus=2",
            "hydra.launcher.ray.remote.num_cpus=1",
        ]
    )
    assert stages[3].module == "hugnc.continual"


def test_on_a_gpu_machine_every_results_job_gets_one_gpu(compose_cfg) -> None:
    """``--gpus 4``: the jobs train on the GPU, Ray holds the 4 GPUs and gives each job one
    (checked on the composed config of a main-stage job: no GPU here)."""
    command = plan.build_stages(plan.Options(None, [0], False, False, "csv"), {})[1].command(
        Path("out"), gpus=4
    )
    job = [o for o in command[4:] if not o.startswith(("hydra.sweep.dir", "hydra.searchpath"))]
    job = [o.split(",")[0] if o.startswith(("+results_setting=", "seed=")) else o for o in job]
    cfg = compose_cfg(*[o for o in job if not o.startswith("+results_setting")])
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == 1
    ray = OmegaConf.to_container(cfg.hydra.launcher.ray, resolve=True)
    assert ray["init"]["num_gpus"] == 4
    assert ray["remote"]["num_gpus"] == 1
    assert ray["remote"]["num_cpus"] == max(1, (os.cpu_count() or 1) // 4)


def test_setting_config_carries_tuned_weights() -> None:
    text = plan.Setting("mgd_hug", "tuned", 64, 0.5, 3.0, 0.1).config_text()
    config = yaml.safe_load(text)
    assert config["defaults"] == [{"override /loss": "mgd_hug"}]
    assert config["loss"] == {"alpha": 0.5, "beta": 3.0}
    assert config["optimizer"] == {"lr": 0.1}
    assert config["results"] == {"setting": "mgd_hug_tuned", "weights": "tuned"}
    paper = yaml.safe_load(plan.Setting("mhe_hug", "paper", 2).config_text())
    assert "alpha" not in paper.get("loss", {}) and paper["model"] == {"feature_dim": 2}


def _job_dir(stage: Path, num: int, metrics: dict | None) -> None:
    job = stage / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={num}"]))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def test_stage_finished_only_when_every_job_ran_to_its_end(tmp_path: Path) -> None:
    stage = tmp_path / "main"
    assert not runner.stage_finished(stage, 2)
    _job_dir(stage, 0, {"status": "completed", "test/acc": 0.9})
    _job_dir(stage, 1, {"status": "failed", "error": "FloatingPointError: loss is nan"})
    assert runner.stage_finished(stage, 2)  # a NaN job would fail again: finished
    assert not runner.stage_finished(stage, 3)  # a job never started
    (stage / "1" / "metrics.json").write_text(json.dumps({"status": "failed", "error": "SIGTERM"}))
    assert not runner.stage_finished(stage, 2)  # killed: run again
    (stage / "1" / "metrics.json").unlink()
    assert not runner.stage_finished(stage, 2)


def test_existing_results_dir_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "results" / "old"
    out.mkdir(parents=True)
    (out / "README.md").write_text("the measured table")
    with pytest.raises(SystemExit, match="exists; nothing was changed"):
        runner.main(["--quick", "--out", str(out)])
    with pytest.raises(SystemExit, match="needs a results directory"):
        runner.main(["--quick", "--out", str(out), "--resume"])
    assert [p.name for p in out.iterdir()] == ["README.md"]
    assert (out / "README.md").read_text() == "the measured table"
    capsys.readouterr()
    assert runner.main(["--dry-run"]) == 0
    assert "total     ~" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.real_data
def test_quick_results_end_to_end_and_resume(tmp_path: Path, pipeline_env: dict) -> None:
    out = tmp_path / "results" / "quick"
    env = pipeline_env
    command = [sys.executable, "-m", "experiments.results", "--quick", "--out", str(out)]
    first = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    logs = "\n".join(p.read_text()[-3000:] for p in out.glob("*.log"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:] + logs
    for stage in ("tune", "main", "lt", "continual"):
        assert f"[{stage}] done in" in first.stdout

    tuned = json.loads((out / "tuned.json").read_text())
    assert set(tuned) == {f"{v}_hug_d{d}" for v in ("mhe", "mhs", "mgd") for d in (2, 64)}
    # The tune jobs never ran a test.
    tune_metrics = [json.loads(p.read_text()) for p in (out / "tune").glob("*/metrics.json")]
    assert len(tune_metrics) == 12
    assert all("val/acc" in m and not any(k.startswith("test/") for k in m) for m in tune_metrics)

    readme = (out / "README.md").read_text()
    main_table, side_table = readme.split("## Long tail")[0], readme.split("## Long tail")[1]
    labels = ["CE"] + [f"{v}-HUG ({w})" for v in ("MHE", "MHS", "MGD") for w in ("paper", "tuned")]
    for label in labels:
        for dim in (2, 64):
            (row,) = [
                line for line in main_table.splitlines() if line.startswith(f"| {label} | {dim} |")
            ]
            cells = [c.strip() for c in row.strip("|").split("|")]
            # setting, d, weights, n, acc, NC1, angle, optimum, failed
            assert cells[3] == "1" and cells[-1] == "0", row
            for number in cells[4:8]:
                float(number)
        (row,) = [line for line in side_table.splitlines() if line.startswith(f"| {label} |")]
        cells = [c.strip() for c in row.strip("|").split("|")]
        for number in cells[2:5]:  # LT acc, continual acc, forgetting
            float(number)
    assert "Tuned weights, chosen on val/acc" in readme
    assert len(list((out / "tune").glob("heatmap_val_acc_*.png"))) == 6
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "stage,setting,feature_dim,n,failed,metric,mean,std"
    assert len(csv_lines) == 1 + 14 * 4 + 7 + 7 * 2

    # A rerun of the finished directory skips every stage and touches no job.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/metrics.json")}
    start = time.monotonic()
    again = subprocess.run(
        [*command, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert time.monotonic() - start < 60
    for stage in ("tune", "main", "lt", "continual"):
        assert f"[{stage}] all" in again.stdout and "skipped" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/metrics.json")} == stamps
    # Resuming with another plan is refused.
    other = subprocess.run(
        [*command, "--resume", "--seeds", "0,1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode != 0 and "was planned with" in other.stderr


def test_table_has_robust_columns_when_logged_and_marks_missing_rows(tmp_path: Path) -> None:
    for num, acc in enumerate((0.90, 0.92)):
        job = tmp_path / "main" / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(
            yaml.safe_dump(["+results_setting=ce_d2", f"seed={num}"])
        )
        (job / ".hydra" / "config.yaml").write_text(
            yaml.safe_dump(
                {
                    "model": {"feature_dim": 2},
                    "optimizer": {"lr": 0.05},
                    "results": {"setting": "ce", "weights": "none"},
                }
            )
        )
        metrics = {"status": "completed", "test/acc": acc, "test/nc/nc1": 0.5}
        metrics |= {"test/robust_acc/pgd10": acc / 2}
        (job / "metrics.json").write_text(json.dumps(metrics))
    readme, csv_path = table.write_results(tmp_path, {})
    text = readme.read_text()
    assert "| robust acc pgd10 | failed |" in text
    (row,) = [line for line in text.splitlines() if line.startswith("| CE | 2 |")]
    assert row.startswith(
        "| CE | 2 | - / - / 0.05 | 2 | 91.00 ± 1.41 | 0.500 ± 0.000 | - | - | 45.50 ± 0.71 |"
    )
    assert "| MHE-HUG (paper) | 2 | - | 0 | - |" in text  # not run: no numbers, no crash
    assert "Tuned weights: none" in text
    assert "main,ce,2,2,0,test/acc,0.91," in csv_path.read_text()
