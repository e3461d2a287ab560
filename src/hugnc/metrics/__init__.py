"""Neural-collapse and GNC metrics (torchmetrics), measuring a model on a split, training
dynamics: pure torch + torchmetrics."""

from hugnc.metrics.geometry import (
    GeometryResult,
    NotEnoughClassesError,
    compute_class_means,
    log_keys,
    measure_geometry,
)
from hugnc.metrics.neural_collapse import PINV_RTOL, NeuralCollapse, optimal_min_angle_deg

__all__ = [
    "PINV_RTOL",
    "GeometryResult",
    "NeuralCollapse",
    "NotEnoughClassesError",
    "compute_class_means",
    "log_keys",
    "measure_geometry",
    "optimal_min_angle_deg",
]
