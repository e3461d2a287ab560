"""The one interface of every hugnc loss, so training code never asks which loss it has."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn


class ClassifierHead(Protocol):
    """What a loss may use of the head (``hugnc.models`` heads)."""

    @property
    def classifier(self) -> Tensor:
        """``[K, d]``: class proxies (HUG) or the linear layer's weight (CE)."""
        ...

    def logits(self, features: Tensor) -> Tensor:
        """``[B, K]`` logits of features ``[B, d]``."""
        ...


class Criterion(nn.Module):
    """Base of every loss: ``loss_terms(features, targets, head, logits)`` -> named terms.

    Subclasses implement :meth:`loss_terms` and say in :attr:`needs_global_batch` whether their
    batch loss is a mean over samples (then DDP ranks average their local losses' gradients) or
    not (then the training step all-gathers the features and targets first, as for HUG's
    class-balanced intra term). A new loss is one file like this one's subclasses plus one
    ``conf/loss/*.yaml``.
    """

    #: The batch loss is not a mean of per-sample losses: compute it on the DDP-gathered batch.
    needs_global_batch: bool = False

    def loss_terms(
        self, features: Tensor, targets: Tensor, head: ClassifierHead, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Scalar terms of the batch: ``"loss"`` (minimized) first, then parts named
        ``"loss_<part>"`` (unweighted, for logging).

        Args:
            features: ``[B, d]`` backbone features.
            targets: ``[B]`` integer labels.
            head: the model's head (``classifier`` ``[K, d]``, ``logits(features)``).
            logits: ``head.logits(features)`` when the caller has them already (saves a matmul).
        """
        raise NotImplementedError


__all__ = ["ClassifierHead", "Criterion"]
