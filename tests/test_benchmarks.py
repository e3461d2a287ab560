"""benchmarks/bench_training.py runs end to end and prints its table (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> ARGS`` with one thread per process, output captured."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_training_benchmark_prints_every_row_and_verdict() -> None:
    done = run_benchmark(
        "bench_training.py",
        "--quick",
        "--batch-size=32",
        "--warmup=1",
        "--steps=2",
        "--data-batches=2",
        "--setups",
        "cifar",
        "--overrides",
        "model.widths=[4,8,16]",
        "model.convs_per_stage=1",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "host memory retained" in out and "overrides model.widths=[4,8,16]" in out
    for row in ("(1) raw loop", "(1') raw loop, on-device", "(2) lightning", "(3) lightning, on"):
        assert row in out
    assert "(2)/(1) step time" in out and "95% CI" in out
    assert "(3)/(2) img/s" in out
    assert "data path alone, ms per batch" in out


@pytest.mark.slow
def test_gpu_check_smoke_runs_on_the_cpu() -> None:
    """`make gpu-check` on the CPU (--quick): every section prints, the sync count passes."""
    done = run_benchmark("gpu_check.py", "--device", "cpu", "--quick", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "1. syncs per training step" in out and "[ok]" in out.split("2. ")[0]
    assert "2. TF32 vs float32" in out
    for loss in ("ce", "mhe_hug", "mhs_hug", "mgd_hug"):
        assert f"  {loss} " in out
    assert "3. HUG loss fwd+bwd, cpu float32" in out
    assert "4. experiment=quickstart trainer=cpu, 1 epoch end to end: test acc" in out
    assert "5. training step img/s" in out and "6. compiled training steps: not measured" in out
    assert "FAILED" not in out and "skipped" not in out


@pytest.mark.slow
def test_gpu_check_budget_skips_what_is_not_started_and_writes_the_table(tmp_path: Path) -> None:
    """A spent --budget-s skips every section (the table still comes back, exit 0), and --table
    appends the table's lines without the runs' output."""
    table = tmp_path / "gpu_check.txt"
    table.write_text("# header\n")
    done = run_benchmark(
        "gpu_check.py",
        "--device",
        "cpu",
        "--quick",
        "--budget-s",
        "0",
        "--table",
        str(table),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = table.read_text().splitlines()
    assert lines[0] == "# header" and lines[1].startswith("# hugnc GPU check: ")
    skipped = [line for line in lines if line.endswith("skipped (--budget-s 0 s spent)")]
    assert [line.split(".")[0] for line in skipped] == ["1", "2", "3", "4", "5", "6"]
    assert lines[-1].startswith("# done in ")


def test_gpu_check_reports_a_failing_section_and_measures_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One failing section is a FAILED row with its first line (exit 1); the others still run."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import gpu_check

    def broken(*args: object) -> list[str]:
        raise RuntimeError("no TF32 here\nsecond line")

    monkeypatch.setattr(gpu_check, "check_syncs", lambda *a: "syncs measured")
    monkeypatch.setattr(gpu_check, "check_tf32", broken)
    monkeypatch.setattr(gpu_check, "check_losses", lambda *a: "losses measured")
    monkeypatch.setattr(gpu_check, "check_quickstart", lambda *a: "quickstart measured")
    monkeypatch.setattr(gpu_check, "check_throughput", lambda *a, **k: ["img/s measured"])
    table = tmp_path / "table.txt"
    arguments = ["--device", "cpu", "--data", str(tmp_path / "data"), "--table", str(table)]
    assert gpu_check.main(arguments) == 1
    lines = table.read_text().splitlines()
    assert "2. FAILED (RuntimeError: no TF32 here; traceback in the log)" in lines
    assert [line for line in lines if line.endswith("measured")] == [
        "1. syncs measured",
        "3. losses measured",
        "4. quickstart measured",
        "5. img/s measured",
        "6. img/s measured",
    ]


@pytest.mark.slow
def test_sweep_benchmark_prints_both_launchers_and_the_ratio(fashion_mnist_dir: Path) -> None:
    """benchmarks/bench_sweep.py: a 2-job sweep under each launcher, every job completed."""
    done = run_benchmark(
        "bench_sweep.py",
        "--jobs=2",
        "--quick",
        f"--data-dir={fashion_mnist_dir}",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "basic launcher, 1 job at a time x 2 threads" in out
    assert "ray launcher, 2 jobs at a time x 1 thread" in out
    assert "basic/ray wall time: " in out
