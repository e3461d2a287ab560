"""benchmarks/bench_training.py runs end to end and prints its table (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_training_benchmark_prints_every_row_and_verdict() -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_training.py"),
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
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "host memory retained" in out and "overrides model.widths=[4,8,16]" in out
    for row in ("(1) raw loop", "(1') raw loop, on-device", "(2) lightning", "(3) lightning, on"):
        assert row in out
    assert "(2)/(1) step time" in out and "95% CI" in out
    assert "(3)/(2) img/s" in out
    assert "data path alone, ms per batch" in out
