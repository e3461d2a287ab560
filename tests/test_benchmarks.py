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
    assert "4. HUG loss fwd+bwd, cpu float32" in out
    assert "5. experiment=quickstart trainer=cpu, 1 epoch end to end: test acc" in out


@pytest.mark.slow
def test_sweep_benchmark_prints_both_launchers_and_the_ratio(fashion_mnist_dir: Path) -> None:
    """benchmarks/bench_sweep.py: a 2-job sweep under each launcher, every job completed."""
    done = run_benchmark(
        "bench_sweep.py",
        "--jobs=2",
        f"--data-dir={fashion_mnist_dir}",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "basic launcher, 1 job at a time x 2 threads" in out
    assert "ray launcher, 2 jobs at a time x 1 thread" in out
    assert "basic/ray wall time: " in out
