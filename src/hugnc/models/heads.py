"""Classification heads: features ``[B, d]`` -> logits ``[B, K]``.

Both heads expose ``logits(features)`` and ``classifier`` (the ``[K, d]`` matrix: linear weights W
or HUG proxies), so accuracy, NC metrics and attacks treat them alike.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hugnc.arguments import Positive, checked


class Head(Protocol):
    """What the LightningModule, the UFM and the callbacks use of a head (both heads below, and
    wrappers such as ``hugnc.continual.TaskMaskedHead``); a structural type, for the checker."""

    @property
    def classifier(self) -> Tensor:
        """``[K, d]``: linear weights W or HUG proxies."""
        ...

    def logits(self, features: Tensor) -> Tensor:
        """``[B, K]`` logits of features ``[B, d]``."""
        ...

    def after_optimizer_step(self) -> None:
        """Called after every optimizer step (ProxyHead renormalizes its proxies)."""
        ...


class LinearHead(nn.Module):
    """Cross-entropy head: ``logits = W f + b`` with ``W`` ``[K, d]``."""

    def __init__(self, feature_dim: int, num_classes: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(feature_dim, num_classes, bias=bias)

    @property
    def classifier(self) -> Tensor:
        return self.linear.weight

    def logits(self, features: Tensor) -> Tensor:
        return self.linear(features)

    forward = logits

    def after_optimizer_step(self) -> None:
        """Nothing to do for a linear head."""


class ProxyHead(nn.Module):
    """HUG head: learnable class proxies, ``logits_c = scale * cos(f, w_c)``.

    Proxies are initialized U(-1/sqrt(d), 1/sqrt(d)) as in the official code. The HUG inter term
    has gradients tangent to the sphere, so every SGD step grows ``||w_c||``; with a large learning
    rate the norms blow up and the angles freeze unevenly (HUG.md, "Known pitfall"). Hence proxies
    are renormalized to unit norm after every optimizer step unless ``renormalize=False``.

    Args:
        feature_dim: d.
        num_classes: K.
        scale: cosine logit scale; argmax ignores it, attacks differentiating CE on logits see it.
        renormalize: project proxies back to the unit sphere after each optimizer step.
    """

    @checked
    def __init__(
        self, feature_dim: int, num_classes: int, scale: Positive = 16.0, renormalize: bool = True
    ) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(feature_dim)
        self.proxies = nn.Parameter(torch.empty(num_classes, feature_dim).uniform_(-bound, bound))
        self.scale = scale
        self.renormalize = renormalize

    @property
    def classifier(self) -> Tensor:
        return self.proxies

    def logits(self, features: Tensor) -> Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.proxies, dim=1).T

    forward = logits

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        if self.renormalize:
            self.proxies.copy_(F.normalize(self.proxies, dim=1))
