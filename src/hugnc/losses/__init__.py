"""HUG losses and hyperspherical uniformity measures (pure torch: no Lightning, Hydra or W&B)."""

from hugnc.losses.criterion import ClassifierHead, Criterion
from hugnc.losses.cross_entropy import CrossEntropyLoss, cross_entropy_loss
from hugnc.losses.hug import VARIANTS, HUGLoss, HUGLossOutput
from hugnc.losses.intra import intra_class_distance
from hugnc.losses.uniformity import (
    gaussian_gram_logdet,
    min_pairwise_sq_distance,
    pairwise_log_kernel_variance,
    pairwise_sq_distances,
    riesz_energy,
    unit_vectors,
)

__all__ = [
    "VARIANTS",
    "ClassifierHead",
    "Criterion",
    "CrossEntropyLoss",
    "HUGLoss",
    "HUGLossOutput",
    "cross_entropy_loss",
    "gaussian_gram_logdet",
    "intra_class_distance",
    "min_pairwise_sq_distance",
    "pairwise_log_kernel_variance",
    "pairwise_sq_distances",
    "riesz_energy",
    "unit_vectors",
]
