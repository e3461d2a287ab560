"""The pipelines of ``experiments/`` are not installed: they import from the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pipeline_env(tmp_path: Path, fashion_mnist_dir: Path) -> dict[str, str]:
    """The environment of a ``python -m experiments.results`` subprocess started from ``tmp_path``:
    the repository root on ``PYTHONPATH`` (``experiments`` is not installed), real Fashion-MNIST,
    logs in ``tmp_path``, one thread per process."""
    path = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return os.environ | {
        "PYTHONPATH": os.pathsep.join(path),
        "HUGNC_DATA_DIR": str(fashion_mnist_dir),
        "HUGNC_LOG_DIR": str(tmp_path / "logs"),
        "OMP_NUM_THREADS": "1",
    }
