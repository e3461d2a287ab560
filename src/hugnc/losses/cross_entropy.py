"""Cross-entropy on the head's logits: the baseline of every HUG experiment."""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from annotated_types import Ge, Le
from torch import Tensor

from hugnc.arguments import checked
from hugnc.losses.criterion import ClassifierHead, Criterion


class CrossEntropyLoss(Criterion):
    """Softmax cross-entropy of ``head.logits(features)`` (a linear head: ``W f + b``).

    Args:
        label_smoothing: in [0, 1]; 0 is plain cross-entropy.
    """

    @checked
    def __init__(self, label_smoothing: Annotated[float, Ge(0), Le(1)] = 0.0) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Mean loss of logits ``[B, K]`` and labels ``[B]``."""
        return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)

    def loss_terms(
        self, features: Tensor, targets: Tensor, head: ClassifierHead, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        return {"loss": self(head.logits(features) if logits is None else logits, targets)}

    def extra_repr(self) -> str:
        return f"label_smoothing={self.label_smoothing}"


def cross_entropy_loss(label_smoothing: float = 0.0) -> CrossEntropyLoss:
    """:class:`CrossEntropyLoss`; the ``_target_`` that run directories written before the class
    existed name in their ``.hydra/config.yaml`` (so their checkpoints still load)."""
    return CrossEntropyLoss(label_smoothing)


__all__ = ["CrossEntropyLoss", "cross_entropy_loss"]
