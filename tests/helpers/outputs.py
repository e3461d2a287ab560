"""What a run (or hugnc-geometry) writes, for tests that check it is there."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hugnc import run_dir

#: The geometry pictures of a run measured on its training split and test set.
GEOMETRY_PICTURES = (
    "feature_geometry_train.png",
    "class_cosines_train.png",
    "feature_geometry_test.png",
    "class_cosines_test.png",
    "nc_curves.png",
)


def most_jobs_at_once(job_dirs: Sequence[Path]) -> int:
    """The most sweep jobs that ran at the same moment: a job runs from when Hydra wrote its
    ``.hydra/config.yaml`` (first) until its ``metrics.json`` (last)."""
    spans = [
        (run_dir.config_file(job).stat().st_mtime, run_dir.metrics_file(job).stat().st_mtime)
        for job in job_dirs
    ]
    return max(sum(start <= t < end for start, end in spans) for t, _ in spans)
