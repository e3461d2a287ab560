"""Neural-collapse (NC1-NC4) and generalized-NC (GNC) metrics as one torchmetrics Metric.

Definitions follow ``HUG.md`` ("Neural-collapse metrics", "GNC metrics"); pure torch + torchmetrics.

Streaming
---------
``update`` accumulates, in float64 and whatever the input dtype, only sufficient statistics, so
memory is O(K d + d^2) whatever the number of samples N:

- ``class_counts`` [K] (n_c), ``class_feature_sums`` [K, d] (sum of h_i per class),
- ``second_moment`` [d, d] (sum_i h_i h_i^T),
- ``class_unit_sums`` [K, d] (sum of h_i / ||h_i|| per class, for the exact mean cosine),
- ``intra_angle_sum`` and ``ncc_mismatches`` (scalars, only updated when ``class_means`` is given).

Then mu_c = S_c / n_c, mu_G = sum_c S_c / N and
Sigma_W = (1/N)(sum_i h_i h_i^T - sum_c n_c mu_c mu_c^T) (the single-pass form of HUG.md). All
states are sums (``dist_reduce_fx="sum"``), so merging shards or DDP ranks is exact up to float64
rounding. The raw-moment form cancels when features share a large offset; in float64 this costs
~|offset|^2 / Var * 1e-16 relative error (offset 100, unit variance: ~1e-12), far below float32.

``compute(classifier)`` and distributed sync
--------------------------------------------
Most metrics depend on the classifier matrix ``W`` [K, d] (linear-head weights or HUG proxies),
which is not a per-sample quantity, so ``compute`` takes it as an argument. torchmetrics wraps
``compute`` at construction (``Metric._wrap_compute``); that wrapper forwards ``*args`` and runs the
body inside ``self.sync_context(...)``: under an initialized ``torch.distributed`` process group it
gathers every state from all ranks, applies ``dist_reduce_fx`` ("sum"), computes, and restores
the local states afterwards (``unsync``) so accumulation can continue. Outside a process group it
is a no-op. The only part of that wrapper that is wrong for an argument-taking compute is its
result cache (a second ``compute(W2)`` would return the result for ``W1``), so this metric forces
``compute_with_cache=False``. Every rank must pass the same ``W`` (true for DDP parameters) and the
same ``class_means``; every rank then returns the same numbers as a single process on all the data.
``forward`` (= update + per-batch compute without arguments) is not meaningful here and raises.

Conventions (documented choices)
--------------------------------
- Classes with no samples are excluded from every means-based metric (K_seen of them remain);
  classifier-only metrics (``nc2_equinorm_classifier``, ``nc2_etf_classifier``, ``gnc_proxies_*``)
  use all K rows; NC3 compares the rows of W of the seen classes with the seen centred means.
  ``compute`` raises ``ValueError`` if fewer than 2 classes were seen.
- NC1 uses the pseudo-inverse of Sigma_B with eigenvalues below ``PINV_RTOL`` times the largest
  treated as zero (Sigma_B has rank <= K_seen - 1, so its null space must be cut off reliably).
- Standard deviations (equinorm, equiangularity) are population std (ddof = 0), so K = 2 gives 0
  rather than NaN; Papyan et al.'s reference code uses ddof = 1 (a factor sqrt(n / (n - 1))).
  Equiangularity and max-angle run over the K(K-1)/2 unordered pairs.
- GNC "means" metrics use the normalized *centred* means mu_c - mu_G; ``gnc_*_gram_logdet`` is the
  raw ``logdet(G + 1e-6 I)`` (not the -(1/K) scaling of the MGD loss). ``gnc_*_min_angle_deg`` is
  the smallest pairwise angle of the normalized rows. ``gnc_optimal_min_angle_deg`` is
  :func:`optimal_min_angle_deg` for (num_classes, feature_dim).
- Intra-class spread on the sphere. The class-mean direction of class c is that of the uncentred
  class mean mu_c (HUG.md does not say otherwise). The mean *angle* to the final mu_c / ||mu_c||
  has no exact one-pass form (arccos is not linear and the direction is known only at the end),
  so:
  ``gnc_intra_angle_deg`` is the exact mean over samples of angle(h_i, m_{y_i}) in degrees, where
  m_c is the direction of the given ``class_means``; it is NaN without ``class_means``. When
  ``class_means`` are the means of the same data (two passes) it is exactly the mean angle to the
  class-mean direction; with means from another split it is the angle to those means.
  ``gnc_intra_mean_cos`` is always exact in one pass: the mean over samples of
  cos(h_i, mu_{y_i}) with the *final* empirical mu_c, because the mean cosine is linear in the
  normalized features: (1/N) sum_c (sum_{y_i=c} h_i/||h_i||) . mu_c/||mu_c||. It is 1 at collapse.
  No proxy (e.g. arccos of the mean cosine) is reported under the name "mean angle".
- NC4 is the fraction of samples whose nearest given class mean (Euclidean) differs from
  argmax(logits); it needs ``class_means`` before the samples are seen and is NaN without them.
- Zero feature vectors have no direction: they count as cosine 0 (angle 90 degrees).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from hugnc.losses.uniformity import (
    gaussian_gram_logdet,
    min_pairwise_sq_distance,
    pairwise_log_kernel_variance,
    riesz_energy,
)

#: Relative eigenvalue cut-off of the pseudo-inverse of Sigma_B in NC1.
PINV_RTOL = 1e-10

_FLOAT = torch.float64


def optimal_min_angle_deg(num_classes: int, dim: int) -> float:
    """Largest achievable minimum pairwise angle (degrees) of ``num_classes`` unit vectors in R^dim.

    Known in closed form only for K <= d + 1 (simplex ETF: arccos(-1/(K-1))) and for d = 2 (regular
    K-gon: 360/K); NaN otherwise (the Tammes problem has no closed form) and for K < 2.
    """
    if num_classes < 2 or dim < 1:
        return float("nan")
    if num_classes <= dim + 1:
        return math.degrees(math.acos(-1.0 / (num_classes - 1)))
    if dim == 2:
        return 360.0 / num_classes
    return float("nan")


def angle_deg_from_sq_distance(sq_dist: Tensor) -> Tensor:
    """Angle in degrees of unit vectors at squared chordal distance ``sq_dist`` (atan2: exact;
    a tensor, so callers on an accelerator decide when to read it)."""
    sq_dist = sq_dist.clamp(0.0, 4.0)
    return torch.rad2deg(2.0 * torch.atan2(sq_dist.sqrt(), (4.0 - sq_dist).sqrt()))


def add_by_class(sums: Tensor, targets: Tensor, rows: Tensor) -> Tensor:
    """``sums[targets[i]] += rows[i]`` for every sample i, in place; returns ``sums``.

    Shapes: ``sums`` [K, ...], ``targets`` [N] (long), ``rows`` [N, ...] of ``sums``' dtype.
    On the CPU through ``index_put_(accumulate=True)`` (sorts the targets, then adds in one pass):
    CPU ``index_add_`` adds float64 rows one at a time, which dominated a K = 1000 measurement
    (benchmarks/bench_metrics.py). Elsewhere ``index_add_``: atomic adds, nothing read back to the
    host (``bincount`` would read the targets' range).
    """
    if sums.device.type == "cpu":
        return sums.index_put_((targets,), rows, accumulate=True)
    return sums.index_add_(0, targets, rows)


def _etf_distance(vectors: Tensor) -> Tensor:
    """``|| X X^T / ||X X^T||_F - (I - 11^T/k) / sqrt(k-1) ||_F`` for X = ``vectors`` [k, d]."""
    num = vectors.shape[0]
    gram = vectors @ vectors.T
    eye = torch.eye(num, dtype=vectors.dtype, device=vectors.device)
    etf = (eye - 1.0 / num) / math.sqrt(num - 1)
    return torch.linalg.matrix_norm(gram / torch.linalg.matrix_norm(gram) - etf)


def _coefficient_of_variation(values: Tensor) -> Tensor:
    return values.std(correction=0) / values.mean()


def _uniformity(prefix: str, vectors: Tensor) -> dict[str, float]:
    """GNC hyperspherical-uniformity measures of the normalized rows of ``vectors``."""
    return {
        f"gnc_{prefix}_energy": riesz_energy(vectors, 2.0).item(),
        f"gnc_{prefix}_log_energy": riesz_energy(vectors, 0.0).item(),
        f"gnc_{prefix}_min_angle_deg": angle_deg_from_sq_distance(
            min_pairwise_sq_distance(vectors)
        ).item(),
        f"gnc_{prefix}_gram_logdet": gaussian_gram_logdet(vectors).item(),
        f"gnc_{prefix}_log_kernel_variance": pairwise_log_kernel_variance(vectors).item(),
    }


class NeuralCollapse(Metric):
    """Streaming NC1-NC4 and GNC metrics of penultimate features (see the module docstring).

    Args:
        num_classes: K.
        feature_dim: d.
        class_means: optional ``[K, d]`` class means known before the samples (e.g. train-set
            means when evaluating a test set, or a first pass over the same data). Needed for
            ``nc4`` and ``gnc_intra_angle_deg`` (both NaN without them). Every DDP rank must pass
            the same tensor.
        **kwargs: forwarded to :class:`torchmetrics.Metric` (``compute_with_cache=True`` is
            rejected: results depend on the classifier passed to ``compute``).

    Example::

        metric = NeuralCollapse(num_classes=10, feature_dim=512)
        for x, y in loader:
            features = backbone(x)
            metric.update(features, y, head(features))
        values = metric.compute(head.weight)  # dict[str, float]
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    class_counts: Tensor
    class_feature_sums: Tensor
    class_unit_sums: Tensor
    second_moment: Tensor
    intra_angle_sum: Tensor
    ncc_mismatches: Tensor

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        class_means: Tensor | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("compute_with_cache", False):
            raise ValueError(
                "NeuralCollapse does not support compute_with_cache=True: compute(classifier) "
                "depends on its argument, so a cached result could belong to another classifier"
            )
        super().__init__(compute_with_cache=False, **kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)

        if class_means is not None:
            if tuple(class_means.shape) != (self.num_classes, self.feature_dim):
                raise ValueError(
                    f"class_means must have shape [num_classes, feature_dim] = "
                    f"[{self.num_classes}, {self.feature_dim}], got {list(class_means.shape)}"
                )
            class_means = class_means.detach().to(_FLOAT)
        # Plain attributes, not buffers or states: they must stay float64 under .half()/.float()
        # and are never reduced across ranks; they follow the features' device lazily in
        # ``update``. The directions are normalized once, not per batch.
        self._class_means = class_means
        self._class_directions = None if class_means is None else F.normalize(class_means, dim=1)

        K, d = self.num_classes, self.feature_dim
        self.add_state("class_counts", torch.zeros(K, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("class_feature_sums", torch.zeros(K, d, dtype=_FLOAT), dist_reduce_fx="sum")
        self.add_state("class_unit_sums", torch.zeros(K, d, dtype=_FLOAT), dist_reduce_fx="sum")
        self.add_state("second_moment", torch.zeros(d, d, dtype=_FLOAT), dist_reduce_fx="sum")
        self.add_state("intra_angle_sum", torch.zeros((), dtype=_FLOAT), dist_reduce_fx="sum")
        self.add_state("ncc_mismatches", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    @property
    def has_class_means(self) -> bool:
        """Whether ``class_means`` were given (``nc4`` and ``gnc_intra_angle_deg`` defined)."""
        return self._class_means is not None

    def _check_inputs(self, features: Tensor, targets: Tensor, logits: Tensor) -> None:
        K, d = self.num_classes, self.feature_dim
        if features.ndim != 2 or features.shape[1] != d:
            raise ValueError(f"features must have shape [N, {d}], got {list(features.shape)}")
        num = features.shape[0]
        if targets.ndim != 1 or targets.shape[0] != num:
            raise ValueError(f"targets must have shape [{num}], got {list(targets.shape)}")
        if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
            raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
        if logits.ndim != 2 or tuple(logits.shape) != (num, K):
            raise ValueError(f"logits must have shape [{num}, {K}], got {list(logits.shape)}")
        if num and (int(targets.min()) < 0 or int(targets.max()) >= K):
            raise ValueError(
                f"targets must lie in [0, {K}), got values in "
                f"[{int(targets.min())}, {int(targets.max())}]"
            )

    def update(self, features: Tensor, targets: Tensor, logits: Tensor) -> None:
        """Accumulate a batch: features ``[N, d]``, integer targets ``[N]``, logits ``[N, K]``."""
        self._check_inputs(features, targets, logits)
        with torch.no_grad():
            device = self.class_counts.device
            feats = features.detach().to(device=device, dtype=_FLOAT)
            targets = targets.detach().to(device=device, dtype=torch.long)
            units = F.normalize(feats, dim=1)

            # index_add_, not bincount (which syncs with the host twice per call on GPUs).
            self.class_counts.index_add_(0, targets, torch.ones_like(targets))
            add_by_class(self.class_feature_sums, targets, feats)
            add_by_class(self.class_unit_sums, targets, units)
            self.second_moment.addmm_(feats.T, feats)

            if self._class_means is None or self._class_directions is None:
                return
            if self._class_means.device != device:
                self._class_means = self._class_means.to(device)
                self._class_directions = self._class_directions.to(device)
            means = self._class_means
            # NC4: nearest class mean (||h||^2 is the same for every class, so it is dropped).
            sq_dist = (means * means).sum(dim=1) - 2.0 * feats @ means.T
            ncc = sq_dist.argmin(dim=1)
            self.ncc_mismatches += (ncc != logits.detach().to(device).argmax(dim=1)).sum()
            # Angle to the given class-mean direction; atan2 is accurate near 0 (collapse).
            directions = self._class_directions[targets]
            cos = (units * directions).sum(dim=1)
            sin = (units - cos[:, None] * directions).norm(dim=1)
            self.intra_angle_sum += torch.atan2(sin, cos).sum()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Not supported: the metrics need the classifier; call ``update`` then ``compute(W)``."""
        raise NotImplementedError(
            "NeuralCollapse has no per-batch value: call update(features, targets, logits) for "
            "each batch and compute(classifier) at the end"
        )

    def compute(self, classifier: Tensor) -> dict[str, float]:  # type: ignore[override]
        """All NC and GNC metrics for classifier rows ``classifier`` ``[K, d]``.

        Runs on the states summed over all processes (see the module docstring).
        """
        K, d = self.num_classes, self.feature_dim
        if not isinstance(classifier, Tensor) or tuple(classifier.shape) != (K, d):
            shape = list(classifier.shape) if isinstance(classifier, Tensor) else type(classifier)
            raise ValueError(f"classifier must have shape [{K}, {d}], got {shape}")

        counts = self.class_counts
        seen = counts > 0
        num_seen = int(seen.sum())
        if num_seen < 2:
            raise ValueError(
                f"NeuralCollapse needs samples of at least 2 classes, saw {num_seen} "
                f"(total samples: {int(counts.sum())})"
            )
        device = counts.device
        W = classifier.detach().to(device=device, dtype=_FLOAT)
        n = counts[seen].to(_FLOAT)
        num = n.sum()
        sums = self.class_feature_sums[seen]
        mu = sums / n[:, None]  # [K_seen, d] uncentred class means
        mu_global = sums.sum(dim=0) / num
        M = mu - mu_global  # centred means

        sigma_w = (self.second_moment - (sums.T / n) @ sums) / num
        sigma_w = 0.5 * (sigma_w + sigma_w.T)
        sigma_b = M.T @ M / num_seen
        sigma_b_pinv = torch.linalg.pinv(sigma_b, rtol=PINV_RTOL, hermitian=True)

        unit_M = F.normalize(M, dim=1)
        upper = torch.triu_indices(num_seen, num_seen, offset=1, device=device)
        cos_pairs = (unit_M @ unit_M.T)[upper[0], upper[1]]

        W_seen = W[seen]
        nc3 = (W_seen / torch.linalg.matrix_norm(W_seen) - M / torch.linalg.matrix_norm(M)).pow(2)

        nan = float("nan")
        intra_mean_cos = (self.class_unit_sums[seen] * F.normalize(mu, dim=1)).sum() / num
        out = {
            "nc1": (torch.trace(sigma_w @ sigma_b_pinv) / num_seen).item(),
            "nc1_trace_ratio": (torch.trace(sigma_w) / torch.trace(sigma_b)).item(),
            "nc2_equinorm_means": _coefficient_of_variation(M.norm(dim=1)).item(),
            "nc2_equinorm_classifier": _coefficient_of_variation(W.norm(dim=1)).item(),
            "nc2_equiangularity": cos_pairs.std(correction=0).item(),
            "nc2_max_angle": (cos_pairs + 1.0 / (num_seen - 1)).abs().mean().item(),
            "nc2_etf_means": _etf_distance(M).item(),
            "nc2_etf_classifier": _etf_distance(W).item(),
            "nc3": nc3.sum().item(),
            "nc4": (self.ncc_mismatches / num).item() if self.has_class_means else nan,
        }
        out.update(_uniformity("means", M))
        out.update(_uniformity("proxies", W))
        out["gnc_optimal_min_angle_deg"] = optimal_min_angle_deg(K, d)
        out["gnc_intra_angle_deg"] = (
            math.degrees((self.intra_angle_sum / num).item()) if self.has_class_means else nan
        )
        out["gnc_intra_mean_cos"] = intra_mean_cos.item()
        out["num_classes_seen"] = float(num_seen)
        return out


__all__ = ["PINV_RTOL", "NeuralCollapse", "angle_deg_from_sq_distance", "optimal_min_angle_deg"]
