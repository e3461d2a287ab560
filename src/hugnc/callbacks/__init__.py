"""Lightning callbacks: geometry pictures (and, later, NC/GNC metrics and robustness)."""

from hugnc.callbacks.feature_geometry import FeatureGeometryPlot

__all__ = ["FeatureGeometryPlot"]
