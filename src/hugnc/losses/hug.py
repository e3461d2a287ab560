"""The Hyperspherical Uniformity Gap loss: MHE-, MHS- and MGD-HUG (../shared/HUG.md)."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Literal, NamedTuple

from torch import Tensor

from hugnc.arguments import NonNegative, checked
from hugnc.losses.criterion import ClassifierHead, Criterion
from hugnc.losses.intra import intra_class_distance
from hugnc.losses.uniformity import gaussian_gram_logdet, min_pairwise_sq_distance, riesz_energy

Variant = Literal["mhe", "mhs", "mgd"]
VARIANTS: tuple[str, ...] = typing.get_args(Variant)


class HUGLossOutput(NamedTuple):
    """``loss = alpha * inter + beta * intra``; ``intra`` and ``inter`` unweighted (for logging)."""

    loss: Tensor
    intra: Tensor
    inter: Tensor


def _inter_term(variant: str, mhe_power: float) -> Callable[[Tensor], Tensor]:
    if variant == "mhe":
        return lambda proxies: riesz_energy(proxies, mhe_power)
    if variant == "mhs":
        return lambda proxies: -min_pairwise_sq_distance(proxies)
    # MGD: 1/K keeps the scale comparable across K (hugnc's documented choice, HUG.md).
    return lambda proxies: -gaussian_gram_logdet(proxies) / proxies.shape[0]


class HUGLoss(Criterion):
    """HUG objective ``alpha * L_inter(proxies) + beta * L_intra(features, proxies, targets)``.

    Args:
        variant: ``"mhe"`` (Riesz energy), ``"mhs"`` (max-min separation) or ``"mgd"`` (Gaussian
            Gram log-determinant): the inter-class uniformity measure.
        alpha: weight of the inter-class (proxy) term, >= 0. Paper: 0.15.
        beta: weight of the intra-class term, >= 0. Paper: 0.015 (MHE, MHS), 0.03 (MGD).
        mhe_power: Riesz exponent s >= 0 for MHE; 0 means log energy. Ignored by MHS/MGD.

    Call with ``features [B, d]``, ``proxies [K, d]``, ``targets [B]``; returns a
    :class:`HUGLossOutput`. Proxies receive gradient from the inter term only. In training,
    :meth:`loss_terms` takes the proxies from the head.
    """

    # The intra term is class-balanced over the batch, not a mean of per-sample losses.
    needs_global_batch = True

    @checked
    def __init__(
        self, variant: Variant, alpha: NonNegative, beta: NonNegative, mhe_power: NonNegative = 2.0
    ) -> None:
        super().__init__()
        self.variant = variant
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.mhe_power = float(mhe_power)
        self._inter = _inter_term(variant, self.mhe_power)

    def forward(self, features: Tensor, proxies: Tensor, targets: Tensor) -> HUGLossOutput:
        if proxies.shape[0] < 2:
            raise ValueError(f"HUG needs at least 2 proxies, got shape {tuple(proxies.shape)}")
        if features.shape[1] != proxies.shape[1]:
            raise ValueError(
                f"features {tuple(features.shape)} and proxies {tuple(proxies.shape)} differ in d"
            )
        inter = self._inter(proxies)
        intra = intra_class_distance(features, proxies, targets).to(inter.dtype)
        return HUGLossOutput(loss=self.alpha * inter + self.beta * intra, intra=intra, inter=inter)

    def loss_terms(
        self, features: Tensor, targets: Tensor, head: ClassifierHead, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        out = self(features, head.classifier, targets)
        return {"loss": out.loss, "loss_intra": out.intra, "loss_inter": out.inter}

    def extra_repr(self) -> str:
        power = f", mhe_power={self.mhe_power}" if self.variant == "mhe" else ""
        return f"variant={self.variant!r}, alpha={self.alpha}, beta={self.beta}{power}"


__all__ = ["VARIANTS", "HUGLoss", "HUGLossOutput"]
