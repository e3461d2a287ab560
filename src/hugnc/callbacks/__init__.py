"""Lightning callbacks: NC/GNC metrics with geometry pictures, training dynamics, adversarial
robustness, finite-loss guard, preemption checkpoints."""

from hugnc.callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from hugnc.callbacks.neural_collapse import (
    GeometryResult,
    NeuralCollapseMonitor,
    NotEnoughClassesError,
    compute_class_means,
    log_keys,
    measure_geometry,
    save_curves,
    save_figures,
    split_loader,
)
from hugnc.callbacks.preemption import PreemptedError, PreemptionCheckpoint
from hugnc.callbacks.progress import SyncFreeProgressBar
from hugnc.callbacks.robustness import AdversarialRobustness
from hugnc.callbacks.run_summary import RunSummary
from hugnc.callbacks.training_dynamics import TrainingDynamicsMonitor, save_dynamics

__all__ = [
    "AdversarialRobustness",
    "FiniteLossGuard",
    "GeometryResult",
    "NeuralCollapseMonitor",
    "NonFiniteLossError",
    "NotEnoughClassesError",
    "PreemptedError",
    "PreemptionCheckpoint",
    "RunSummary",
    "SyncFreeProgressBar",
    "TrainingDynamicsMonitor",
    "compute_class_means",
    "log_keys",
    "measure_geometry",
    "save_curves",
    "save_dynamics",
    "save_figures",
    "split_loader",
]
