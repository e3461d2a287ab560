"""Lightning callbacks: NC/GNC metrics with geometry pictures, training dynamics, adversarial
robustness, finite-loss guard, preemption checkpoints."""

from hugnc.callbacks.finite_loss import FiniteLossGuard, NonFiniteLossError
from hugnc.callbacks.neural_collapse import NeuralCollapseMonitor
from hugnc.callbacks.preemption import PreemptedError, PreemptionCheckpoint
from hugnc.callbacks.progress import SyncFreeProgressBar
from hugnc.callbacks.robustness import AdversarialRobustness
from hugnc.callbacks.run_summary import RunSummary
from hugnc.callbacks.training_dynamics import TrainingDynamicsMonitor, save_dynamics

__all__ = [
    "AdversarialRobustness",
    "FiniteLossGuard",
    "NeuralCollapseMonitor",
    "NonFiniteLossError",
    "PreemptedError",
    "PreemptionCheckpoint",
    "RunSummary",
    "SyncFreeProgressBar",
    "TrainingDynamicsMonitor",
    "save_dynamics",
]
