"""The real command line: `python -m hugnc ...` in subprocesses, as users run it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers.cli_runs import run_hugnc

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return run_hugnc(*args, cwd=cwd, env=env, timeout=timeout)


def test_help_lists_config_groups(tmp_path: Path) -> None:
    result = run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for group in (
        "loss: ce, mgd_hug, mhe_hug, mhs_hug",
        "trainer:",
        "logger: csv, none, wandb",
        "experiment: paper_budget, quickstart",
    ):
        assert group in result.stdout
    # hugnc's own header first: what it does, the first commands, the README sections.
    assert result.stdout.startswith("hugnc: train image classifiers with the Hyperspherical")
    assert "powered by Hydra" not in result.stdout
    assert "python -m hugnc loss=mgd_hug data=cifar10_lt" in result.stdout
    assert "README.md sections:" in result.stdout


def test_start_line_says_what_runs_and_first_epoch_projects_the_time(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    result = run_cli(
        "loss=mgd_hug",
        "logger=csv",
        "trainer.max_epochs=3",
        "debug=limit",
        "trainer.limit_train_batches=2",
        "test=false",
        "~callbacks.neural_collapse",
        cwd=tmp_path,
        env={"HUGNC_DATA_DIR": str(fashion_mnist_dir)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    (start,) = [line for line in output.splitlines() if " - run: " in line]
    for part in (
        "Fashion-MNIST (55,000 training images)",
        "LeNetPlusPlus d=2",
        "MGD-HUG (alpha=0.15, beta=0.03)",
        "3 epochs x 2 steps = 6 steps",
        "cpu, precision 32-true",
    ):
        assert part in start, start
    (projection,) = [line for line in output.splitlines() if "first epoch took" in line]
    assert "for the 2 epochs left (until ~" in projection


def test_cfg_job_shows_composed_overrides(tmp_path: Path) -> None:
    result = run_cli("--cfg", "job", "loss=mgd_hug", "loss.alpha=0.2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "variant: mgd" in result.stdout and "alpha: 0.2" in result.stdout
    assert not (tmp_path / "logs").exists()  # --cfg prints, writes nothing


def test_unknown_option_fails_before_writing(tmp_path: Path) -> None:
    result = run_cli("loss=mhe", cwd=tmp_path)
    assert result.returncode != 0
    assert "mhe_hug" in result.stderr  # Hydra lists the available options
    assert not (tmp_path / "logs").exists()


def test_debug_run_from_another_directory(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    result = run_cli(
        "trainer=debug",
        "logger=csv",
        "loss=mhs_hug",
        "~callbacks.progress_bar",
        "data.batch_size=8",
        cwd=tmp_path,
        env={"HUGNC_DATA_DIR": str(fashion_mnist_dir)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(run_dirs) == 1
    assert f"run directory: {run_dirs[0].resolve()}" in result.stdout
    assert "test/acc = " in result.stdout
    assert (run_dirs[0] / "metrics.json").is_file() and (
        run_dirs[0] / ".hydra" / "config.yaml"
    ).is_file()


def test_runs_started_in_the_same_second_get_distinct_directories(tmp_path: Path) -> None:
    args = [sys.executable, "-m", "hugnc", "--cfg", "all", "--resolve", "-p", "hydra.run.dir"]
    procs = [
        subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    dirs = [proc.communicate(timeout=120)[0].strip() for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    assert dirs[0] != dirs[1], dirs


def test_installed_wheel_finds_its_configs(tmp_path: Path) -> None:
    """A non-editable install (configs inside the package) composes from any directory."""
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO_ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("hugnc-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert (site / "hugnc" / "conf" / "train.yaml").is_file()
    for package in (REPO_ROOT / "src" / "hugnc").glob("*/__init__.py"):
        assert (site / "hugnc" / package.parent.name / "__init__.py").is_file(), (
            f"{package.parent.name} not in wheel"
        )
    shipped = {
        p.relative_to(site / "hugnc" / "conf") for p in (site / "hugnc" / "conf").rglob("*.yaml")
    }
    assert shipped == {
        p.relative_to(REPO_ROOT / "conf") for p in (REPO_ROOT / "conf").rglob("*.yaml")
    }
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import hugnc.config, sys; print(hugnc.config.config_dir());"
            " sys.argv=['hugnc','--cfg','job','loss=ce']; from hugnc.__main__ import main; main()",
        ],
        cwd=elsewhere,
        env=os.environ | {"PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == str(site / "hugnc" / "conf")
    assert "_target_: hugnc.models.LinearHead" in result.stdout


@pytest.mark.parametrize("override", ["loss.alpha=-1", "loss.mhe_power=-2"])
def test_invalid_loss_weight_is_one_clear_error(tmp_path: Path, override: str) -> None:
    result = run_cli("trainer=debug", "logger=none", override, cwd=tmp_path)
    assert result.returncode != 0
    assert "must be >= 0" in result.stderr
