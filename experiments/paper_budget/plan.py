"""The paper_budget stage's jobs (loss x feature_dim x seed, in running order), their overrides of
``conf/experiment/paper_budget.yaml`` and the time one takes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from experiments import timing
from hugnc.config import config_dir

LOSSES = ("ce", "mhe_hug", "mhs_hug", "mgd_hug")
LOSS_LABELS = {"ce": "CE", "mhe_hug": "MHE-HUG", "mhs_hug": "MHS-HUG", "mgd_hug": "MGD-HUG"}
#: (feature_dim, seed) in running order: seed 0 at d = 64 for every loss first.
SETTINGS = ((64, 0), (64, 1), (2, 0))
EXPERIMENT = "paper_budget"
DEFAULT_OUT = Path("results/paper_budget_runs")
DEFAULT_RECORD = Path("results/paper_budget")
#: ``--quick``: a pipeline check, numbers meaningless.
QUICK_OVERRIDES = (
    "data.train_subset=512",
    "trainer.max_epochs=2",
    "debug=limit",
    "callbacks.neural_collapse.max_batches=1",
)


@dataclass(frozen=True)
class BudgetJob:
    """One run of the stage: a loss at one feature dimension and seed."""

    loss: str
    feature_dim: int
    seed: int

    @property
    def name(self) -> str:
        return f"{self.loss}_d{self.feature_dim}_s{self.seed}"

    @property
    def label(self) -> str:
        return LOSS_LABELS[self.loss]

    def overrides(self, quick: bool = False) -> list[str]:
        overrides = [
            f"experiment={EXPERIMENT}",
            f"loss={self.loss}",
            f"model.feature_dim={self.feature_dim}",
            f"seed={self.seed}",
        ]
        return overrides + list(QUICK_OVERRIDES if quick else ())


def jobs(only: Sequence[str] = ()) -> list[BudgetJob]:
    """The stage's jobs in running order; ``only``: just the jobs of these names.

    Raises:
        ValueError: a name in ``only`` is not a job of the stage.
    """
    planned = [BudgetJob(loss, dim, seed) for dim, seed in SETTINGS for loss in LOSSES]
    if only:
        names = {job.name for job in planned}
        unknown = sorted(set(only) - names)
        if unknown:
            raise ValueError(f"unknown paper_budget job(s) {unknown}; jobs: {sorted(names)}")
        planned = [job for job in planned if job.name in only]
    return planned


def job_estimate_s(quick: bool = False) -> float:
    """Seconds one job takes by the time model (:mod:`experiments.timing`), for the protocol's
    epochs and batch size."""
    if quick:
        return timing.BUDGET_QUICK_JOB_S
    protocol = OmegaConf.load(config_dir() / "experiment" / f"{EXPERIMENT}.yaml")
    steps_per_epoch = math.ceil(timing.FULL_TRAIN_IMAGES / int(protocol.data.batch_size))
    return timing.budget_job_seconds(int(protocol.trainer.max_epochs), steps_per_epoch)
