"""Neural-collapse and GNC metrics as torchmetrics Metrics (pure torch + torchmetrics)."""

from hugnc.metrics.neural_collapse import PINV_RTOL, NeuralCollapse, optimal_min_angle_deg

__all__ = ["PINV_RTOL", "NeuralCollapse", "optimal_min_angle_deg"]
