"""Measuring the feature geometry of a model on a split: NC/GNC metrics in two passes.

NC4 and the intra-class angle need the class means before the samples are seen, so
:class:`~hugnc.metrics.NeuralCollapse` runs twice over the same samples: pass 1 gives the class
means (summed over DDP ranks), pass 2 feeds them as ``class_means``. Pass 1 keeps the features of
its batches (not the images) when they fit in ``cache_bytes`` per rank; pass 2 then re-reads them
and only recomputes the head's logits, so a measurement costs one forward pass over the subset
instead of two (the eval model is deterministic, so the numbers are those of two forward passes).
Above the budget pass 2 runs the backbone again: memory stays O(K d + d^2) whatever the subset
size.

Under DDP every rank runs the same code on its shard (:func:`hugnc.data.subsets.split_loader`);
the metric sums its states over ranks when it computes (``sync_context`` for the pass-1 means,
``compute`` for the values), so every rank gets the single-process numbers. The only collectives
are those syncs, reached the same number of times on every rank.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from hugnc.metrics.neural_collapse import NeuralCollapse, add_by_class

#: Stand-in mean of a class absent from pass 1: so far away it is never the nearest mean.
_FAR = 1e100


@dataclass
class GeometryResult:
    """What :func:`measure_geometry` measured (tensors on the CPU, float64 except the sample).

    Attributes:
        metrics: :meth:`NeuralCollapse.compute` of the data (``nc4`` and ``gnc_intra_angle_deg``
            use ``class_means``).
        class_means: ``[K, d]`` class means used for NC4 (NaN rows: classes never seen).
        centred_means: ``[K, d]`` this data's class means minus its global mean (NaN rows: unseen).
        counts: ``[K]`` samples per class (all ranks).
        classifier: ``[K, d]`` classifier rows (HUG proxies or linear weights).
        features, targets: up to ``max_points`` features of this rank, for the pictures.
    """

    metrics: dict[str, float]
    class_means: Tensor
    centred_means: Tensor
    counts: Tensor
    classifier: Tensor
    features: Tensor
    targets: Tensor

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())


def _synced_class_stats(metric: NeuralCollapse) -> tuple[Tensor, Tensor]:
    """``(counts [K], feature sums [K, d])`` summed over all DDP ranks (local outside DDP)."""
    with metric.sync_context(should_sync=True, should_unsync=True):
        return metric.class_counts.clone(), metric.class_feature_sums.clone()


def _means(counts: Tensor, sums: Tensor) -> tuple[Tensor, Tensor]:
    """Class means and centred class means, NaN rows for classes without samples."""
    seen = counts > 0
    means = torch.full_like(sums, float("nan"))
    means[seen] = sums[seen] / counts[seen, None].to(sums.dtype)
    global_mean = sums[seen].sum(dim=0) / counts.sum().clamp(min=1)
    return means, means - global_mean


def nearest_mean_table(class_means: Tensor) -> Tensor:
    """``class_means`` with NaN rows (unseen classes) moved far away, for the nearest-mean rule."""
    means = class_means.clone()
    unseen = means.isnan().any(dim=1)
    if unseen.any():
        means[unseen] = 0.0
        means[unseen, 0] = _FAR
    return means


class FeatureSample:
    """The first ``max_points`` features/targets seen (CPU), for the pictures."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self.features: list[Tensor] = []
        self.targets: list[Tensor] = []
        self.size = 0

    def add(self, features: Tensor, targets: Tensor) -> None:
        keep = self.max_points - self.size
        if keep <= 0:
            return
        self.features.append(features[:keep].detach().float().cpu())
        self.targets.append(targets[:keep].detach().cpu())
        self.size += len(self.targets[-1])

    def tensors(self, feature_dim: int) -> tuple[Tensor, Tensor]:
        if not self.features:
            return torch.zeros(0, feature_dim), torch.zeros(0, dtype=torch.long)
        return torch.cat(self.features), torch.cat(self.targets)


def _forward(module: Any, batch: Any, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    images, targets = batch[0], batch[1]
    features = module.features(images.to(device))
    return features, targets.to(device), module.head.logits(features)


class NotEnoughClassesError(ValueError):
    """The measured data holds fewer than 2 classes: NC/GNC metrics are undefined."""


class _ClassSums(Metric):
    """Pass 1's only states: samples and feature sums per class (float64), summed over ranks.

    Cheaper than a full :class:`NeuralCollapse` (no d x d second moment).
    """

    full_state_update = False
    counts: Tensor
    sums: Tensor

    def __init__(self, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state(
            "sums", torch.zeros(num_classes, feature_dim, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, features: Tensor, targets: Tensor) -> None:
        targets = targets.to(self.counts.device, torch.long)
        self.counts.index_add_(0, targets, torch.ones_like(targets))  # no host sync
        add_by_class(self.sums, targets, features.to(self.sums.device, torch.float64))

    def compute(self) -> Tensor:
        """``[K, d]`` class means; NaN rows for classes without samples."""
        return _means(self.counts, self.sums)[0]


def _first_pass(
    module: Any,
    batches: Iterable,
    device: torch.device,
    cache_bytes: int,
    forward_context: Callable[[], contextlib.AbstractContextManager],
) -> tuple[Tensor, list[tuple[Tensor, Tensor]] | None]:
    """Pass 1: synced class means, and this rank's features if they fit in ``cache_bytes``."""
    metric = _ClassSums(*module.head.classifier.shape).to(device)
    cache: list[tuple[Tensor, Tensor]] | None = [] if cache_bytes > 0 else None
    cached_bytes = 0
    for batch in batches:
        with forward_context():
            features = module.features(batch[0].to(device))
        targets = batch[1].to(device)
        metric.update(features, targets)
        if cache is not None:
            cached_bytes += features.nbytes + targets.nbytes
            if cached_bytes <= cache_bytes:
                cache.append((features, targets))
            else:
                cache = None
    return metric.compute(), cache


def compute_class_means(
    module: Any,
    batches: Iterable,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Tensor:
    """``[K, d]`` float64 class means of ``module``'s features on ``batches`` (eval mode, summed
    over DDP ranks); NaN rows for classes without samples. One forward pass."""
    device = module.head.classifier.device
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            return _first_pass(module, batches, device, 0, forward_context)[0]
    finally:
        module.train(was_training)


def measure_geometry(
    module: Any,
    batches: Iterable,
    class_means: Tensor | None = None,
    max_points: int = 10000,
    cache_bytes: int = 256 * 2**20,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> GeometryResult:
    """NC/GNC metrics of ``module``'s features on ``batches`` (two passes; see the module doc).

    Args:
        module: has ``features`` (images -> ``[B, d]``) and ``head`` (``logits``,
            ``classifier`` ``[K, d]``), e.g. :class:`hugnc.module.HUGClassifier`. Put in eval
            mode for the passes, its mode restored afterwards.
        batches: re-iterable of ``(images, targets)`` (e.g. :func:`split_loader`); under DDP this
            rank's shard.
        class_means: ``[K, d]`` means for NC4 and the intra angle (e.g. the train set's for a test
            set; NaN rows are never nearest). ``None``: pass 1 computes them from ``batches``.
        max_points: features kept (on this rank) for the pictures.
        cache_bytes: per-rank budget for keeping pass-1 features for pass 2; 0 always runs the
            backbone twice.
        forward_context: context around each forward (e.g. Lightning's precision context).

    Raises:
        NotEnoughClassesError: fewer than 2 classes in the data (on every rank alike).
    """
    classifier = module.head.classifier.detach()
    num_classes, feature_dim = classifier.shape
    device = classifier.device
    sample = FeatureSample(max_points)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            cache = None
            if class_means is None:
                class_means, cache = _first_pass(
                    module, batches, device, cache_bytes, forward_context
                )
            metric = NeuralCollapse(
                num_classes, feature_dim, class_means=nearest_mean_table(class_means.to(device))
            ).to(device)
            if cache is not None:
                for features, targets in cache:
                    with forward_context():
                        logits = module.head.logits(features)
                    metric.update(features, targets, logits)
                    sample.add(features, targets)
            else:
                for batch in batches:
                    with forward_context():
                        features, targets, logits = _forward(module, batch, device)
                    metric.update(features, targets, logits)
                    sample.add(features, targets)
            return geometry_result(metric, classifier, class_means, sample)
    finally:
        module.train(was_training)


def geometry_result(
    metric: NeuralCollapse, classifier: Tensor, class_means: Tensor | None, sample: FeatureSample
) -> GeometryResult:
    """Compute ``metric`` (synced) into a :class:`GeometryResult`."""
    counts, sums = _synced_class_stats(metric)
    seen = int((counts > 0).sum())
    if seen < 2:
        raise NotEnoughClassesError(
            f"NC metrics need samples of at least 2 classes, got {seen} ({int(counts.sum())} "
            "samples): measure more batches"
        )
    values = metric.compute(classifier.detach())
    means, centred = _means(counts, sums)
    features, targets = sample.tensors(classifier.shape[1])
    return GeometryResult(
        metrics=values,
        class_means=(means if class_means is None else class_means).detach().double().cpu(),
        centred_means=centred.cpu(),
        counts=counts.cpu(),
        classifier=classifier.detach().double().cpu(),
        features=features,
        targets=targets,
    )


def log_keys(metrics: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Names to log: ``nc1`` -> ``<p>nc/nc1``, ``gnc_means_energy`` -> ``<p>gnc/means_energy``.

    NaN values (undefined metrics, e.g. the optimum angle when no closed form exists) are dropped.
    """
    out = {}
    for key, value in metrics.items():
        if value is None or not math.isfinite(value):
            continue
        name = f"gnc/{key[4:]}" if key.startswith("gnc_") else f"nc/{key}"
        out[prefix + name] = float(value)
    return out


__all__ = [
    "FeatureSample",
    "GeometryResult",
    "NotEnoughClassesError",
    "compute_class_means",
    "geometry_result",
    "log_keys",
    "measure_geometry",
    "nearest_mean_table",
]
