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
#: (loss, feature_dim) -> overrides added where the paper's optimizer alone diverges, with why;
#: the table marks those rows. CE at d = 2 with lr 0.1: the loss reaches ~360 by step 20 and NaN at
#: step 25 (seed 0; the logits are a linear map of unnormalized 2-D features, nothing scale-
#: invariant bounds the step). Gradient-norm clipping at 5 keeps lr, schedule, momentum and weight
#: decay as the paper's; how often it binds is logged (``dynamics/clipped_fraction``).
DEVIATIONS: dict[tuple[str, int], tuple[str, ...]] = {
    ("ce", 2): ("+trainer.gradient_clip_val=5.0",),
}
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

    @property
    def deviation(self) -> tuple[str, ...]:
        """Overrides beyond the protocol this job needs (:data:`DEVIATIONS`); usually none."""
        return DEVIATIONS.get((self.loss, self.feature_dim), ())

    def overrides(self, quick: bool = False) -> list[str]:
        overrides = [
            f"experiment={EXPERIMENT}",
            f"loss={self.loss}",
            f"model.feature_dim={self.feature_dim}",
            f"seed={self.seed}",
            *self.deviation,
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
