"""Every error a user causes is one clear line: the real entry points in subprocesses.

Each case is a careless command (missing or damaged data, an impossible batch, a wrong path or
RUN_DIR, a value a constructor refuses): exit code, the message, no traceback, nothing written
but the failed run's own directory, and the time to the error (printed with ``-s``).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers.cli_runs import run_hugnc, start_hugnc, wait_for_file

from hugnc.errors import EXIT_INTERRUPTED, EXIT_USER


def _damaged_fashion_mnist(tmp: Path, source: Path) -> list[str]:
    """A copy of the Fashion-MNIST files with the training images cut short."""
    shutil.copytree(source, tmp / "data")
    images = next((tmp / "data").rglob("train-images-idx3-ubyte"))
    images.write_bytes(images.read_bytes()[:100_000])
    return [f"paths.data_dir={tmp / 'data'}", f"data.debian_dir={tmp / 'no_debian'}"]


class _WritesAFile:
    """Unpickling it creates a file: what a malicious checkpoint can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def _checkpoint_that_runs_code(tmp: Path, source: Path) -> list[str]:
    import torch

    torch.save({"state_dict": {}, "payload": _WritesAFile(tmp / "payload_ran")}, tmp / "x.ckpt")
    return [f"ckpt_path={tmp / 'x.ckpt'}"]


def _a_sweep(tmp: Path, source: Path) -> list[str]:
    (tmp / "sweep" / "0" / ".hydra").mkdir(parents=True)
    (tmp / "sweep" / "0" / ".hydra" / "overrides.yaml").write_text("- loss.alpha=0.1\n")
    return ["sweep"]


def _a_run(tmp: Path, source: Path) -> list[str]:
    (tmp / "run" / ".hydra").mkdir(parents=True)
    (tmp / "run" / ".hydra" / "config.yaml").write_text("seed: 0\n")
    return ["run"]


def _file_in_the_way(tmp: Path, source: Path) -> list[str]:
    (tmp / "notes.txt").write_text("a file where the logs should go")
    return [f"paths.log_dir={tmp / 'notes.txt' / 'logs'}"]


@dataclass
class Case:
    """A command line (``args`` plus what ``setup`` adds), what it must print and exit with,
    and whether the failed run keeps its own directory (errors found while running)."""

    args: list[str]
    expected: str
    module: str = "hugnc"
    setup: Callable[[Path, Path], list[str]] = field(default=lambda tmp, source: [])
    exit_code: int = EXIT_USER
    leaves_failed_run: bool = False
    env: dict[str, str] = field(default_factory=dict)


QUICK = ["logger=none", "debug=fdr"]
CASES = {
    "no-data-and-no-way-to-fetch-it": Case(
        [*QUICK, "data.download=false"],
        "Fashion-MNIST not found",
        setup=lambda tmp, _: [f"paths.data_dir={tmp / 'nodata'}", f"data.debian_dir={tmp / 'x'}"],
    ),
    "damaged-data-file": Case(
        QUICK,
        "is damaged",
        setup=_damaged_fashion_mnist,
        leaves_failed_run=True,
    ),
    "batch-not-divisible-by-ranks": Case(
        [*QUICK, "trainer=ddp_cpu", "data.batch_size=7"],
        "data.batch_size=7 is not divisible by the world size 2",
    ),
    "val-size-leaves-no-training-data": Case(
        [*QUICK, "data.val_size=60000"], "data.val_size=60000 leaves no training images"
    ),
    "constructor-refuses-a-value": Case(
        [*QUICK, "loss.alpha=-1"],
        "loss: HUGLoss: alpha must be >= 0, got -1",
        leaves_failed_run=True,
        env={"HUGNC_SKIP_CONFIG_CHECK": "1"},
    ),
    "resume-of-no-run": Case(["resume=/nonexistent/run"], "resume=/nonexistent/run"),
    "checkpoint-from-elsewhere-names-code": Case(
        QUICK,
        "would run code named in the file. Only if you made it yourself: HUGNC_TRUST_CHECKPOINT=1",
        setup=_checkpoint_that_runs_code,
        leaves_failed_run=True,
    ),
    "missing-checkpoint": Case(["ckpt_path=gone.ckpt"], "ckpt_path=gone.ckpt: no such file"),
    "log-dir-under-a-file": Case(QUICK, "is a file, not a directory", setup=_file_in_the_way),
    "unknown-option": Case(["loss=mhe"], "loss=mhe: no such option"),
    "continual-bad-task-count": Case(
        ["data.num_tasks=0"], "data.num_tasks = 0: must be >= 1", module="hugnc.continual"
    ),
    "ufm-bad-learning-rate": Case(["ufm.lr=0"], "ufm.lr = 0: must be > 0", module="hugnc.ufm"),
    "geometry-on-a-directory-that-is-no-run": Case(
        ["."], "is not a hugnc run directory", module="hugnc.tools.geometry"
    ),
    "geometry-on-a-sweep": Case(
        [], "it is a sweep: give one of its jobs", module="hugnc.tools.geometry", setup=_a_sweep
    ),
    "report-on-one-run": Case(
        [], "run is one run, not a sweep", module="hugnc.tools.report", setup=_a_run
    ),
    "report-on-no-sweep": Case(
        ["nowhere"], "no sweep jobs in nowhere", module="hugnc.tools.report"
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_user_errors_are_one_line(tmp_path: Path, fashion_mnist_dir: Path, case: Case) -> None:
    before = set(tmp_path.iterdir())
    args = [*case.args, *case.setup(tmp_path, fashion_mnist_dir)]
    made = set(tmp_path.iterdir()) - before
    started = time.perf_counter()
    result = run_hugnc(
        *args,
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
        module=case.module,
        env={"HUGNC_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1", **case.env},
    )
    seconds = time.perf_counter() - started
    output = result.stdout + result.stderr
    assert result.returncode == case.exit_code, output[-3000:]
    assert case.expected in result.stderr, output[-3000:]
    assert "Traceback" not in output
    hugnc_lines = [line for line in result.stderr.splitlines() if line.startswith("hugnc")]
    assert hugnc_lines and case.expected in " ".join(hugnc_lines)
    written = set(tmp_path.iterdir()) - before - made
    if case.leaves_failed_run:
        (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    else:
        assert written == set(), written
    assert not (tmp_path / "payload_ran").exists()
    print(f"\n{case.module} {' '.join(case.args)}: exit {result.returncode} in {seconds:.1f} s")


def test_debug_shows_the_traceback(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    """``HUGNC_DEBUG=1``: the same user error with the traceback behind it."""
    result = run_hugnc(
        *QUICK,
        "loss.alpha=-1",
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
        env={
            "HUGNC_LOG_DIR": str(tmp_path / "logs"),
            "HUGNC_SKIP_CONFIG_CHECK": "1",
            "HUGNC_DEBUG": "1",
        },
    )
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "alpha must be >= 0" in result.stderr


def test_a_sweep_job_error_is_one_line_and_the_other_jobs_run(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    """A user error in one job of a multirun: one line in the sweep's output, a failed row with
    that line in ``hugnc-report``, the other job completed."""
    result = run_hugnc(
        "-m",
        *QUICK,
        "loss.alpha=0.1,-1",
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
        env={"HUGNC_LOG_DIR": str(tmp_path / "logs"), "HUGNC_SKIP_CONFIG_CHECK": "1"},
    )
    output = result.stdout + result.stderr
    assert result.returncode == EXIT_USER, output[-3000:]
    assert "Traceback" not in output
    line = "loss: HUGLoss: alpha must be >= 0, got -1"
    assert f"hugnc: sweep job 1 failed: {line}" in output
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"
    report = run_hugnc(str(sweep), cwd=tmp_path, module="hugnc.tools.report")
    assert report.returncode == 0, report.stderr
    (failed_row,) = [row for row in report.stdout.splitlines() if row.startswith("| 1 | failed")]
    assert line in failed_row


def test_ctrl_c_during_training_is_one_line_and_keeps_the_checkpoint(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    """Ctrl-C: Lightning shuts down and exits 1 itself; hugnc says it was an interrupt (130) in
    one line, metrics.json records it and last.ckpt stays."""
    run = tmp_path / "run"
    proc = start_hugnc(
        "logger=none",
        "data.train_subset=256",
        "data.batch_size=128",
        "trainer.max_epochs=1000",
        "~callbacks.neural_collapse",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell starts background jobs (CI's, nohup's) with SIGINT ignored, and Python then
        # never raises KeyboardInterrupt: give the run the terminal's default, as a user has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    wait_for_file(proc, run / "checkpoints" / "last.ckpt")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert "hugnc: interrupted (Ctrl-C)" in stderr and "Traceback" not in stdout + stderr
    status = json.loads((run / "metrics.json").read_text())
    assert status["status"] == "failed" and "interrupted" in status["error"]
    assert (run / "checkpoints" / "last.ckpt").is_file()
