"""NC/GNC metrics and geometry pictures during training: the one place for feature geometry.

Two layers:

- Functions without Lightning (used by the callback, ``hugnc-geometry`` and the notebook):
  :func:`split_loader` (a deterministic, DDP-sharded subset of a datamodule split) and
  :func:`measure_geometry` (the two passes of :class:`~hugnc.metrics.NeuralCollapse` over it).
- :class:`NeuralCollapseMonitor`, the Lightning callback: metrics on a split every
  ``every_n_epochs`` and at the last epoch (logged as ``nc/*``, ``gnc/*``), metrics of the test loop
  (``test/nc/*``, ``test/gnc/*``), pictures and NC/GNC curves saved in the run directory and
  logged as W&B images.

Two passes, one forward
-----------------------
NC4 and the intra-class angle need the class means before the samples are seen, so the metric runs
twice over the same samples: pass 1 gives the class means (summed over DDP ranks), pass 2 feeds
them as ``class_means``. Pass 1 keeps the features of its batches (not the images) when they fit
in ``cache_bytes`` per rank; pass 2 then re-reads them and only recomputes the head's logits, so
the callback costs one forward pass over the subset instead of two (the eval model is
deterministic, so the numbers are those of two forward passes). Above the budget pass 2 runs the
backbone again: memory stays O(K d + d^2) whatever the subset size.

DDP
---
Every rank runs the same code: :func:`split_loader` gives rank r the samples ``r::world_size`` of
one seeded permutation, so the ranks together see exactly the subset a single process sees; the
metric sums its states over ranks when it computes (``sync_context`` for the pass-1 means,
``compute`` for the values), so every rank gets the single-process numbers. The only collectives
are those syncs, reached the same number of times on every rank. Pictures are drawn on rank 0 from
its own shard's features (a random sample of the subset); means and classifier are the synced ones.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchmetrics import Metric

from hugnc.metrics import NeuralCollapse
from hugnc.plots import geometry_figures, nc_curves_figure

SPLITS = ("train", "val", "test")
#: Stand-in mean of a class absent from pass 1: so far away it is never the nearest mean.
_FAR = 1e100


# ---------------------------------------------------------------------------------------------
# Library layer (no Lightning)
# ---------------------------------------------------------------------------------------------


def split_loader(
    datamodule: Any,
    split: str,
    max_batches: int | None = None,
    batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
) -> DataLoader:
    """A deterministic loader over (a subset of) a datamodule split, sharded for DDP rank ``rank``.

    The split's dataset is that of ``datamodule.<split>_dataloader()`` (so its transforms, also
    augmentations of the train set, apply). With ``max_batches``, the subset is the first
    ``max_batches * batch_size`` samples of a permutation seeded by ``seed`` (the same subset
    every epoch and on every rank); without, the whole split. Rank ``r`` gets elements
    ``r::world_size`` of it in batches of ``ceil(batch_size / world_size)``, never shuffled.

    Args:
        batch_size: global batch size; default the datamodule's ``eval_batch_size`` if it has one,
            else the split loader's batch size.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be >= 1 or None, got {max_batches}")
    base = getattr(datamodule, f"{split}_dataloader")()
    if isinstance(base, Sequence):  # several val/test loaders: the first one
        base = base[0]
    dataset = base.dataset
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"the {split} dataset must be map-style (len and indexing) for NC metrics")
    batch_size = batch_size or getattr(datamodule, "eval_batch_size", None) or base.batch_size
    if not batch_size:
        raise ValueError(f"no batch size for the {split} split: pass batch_size")
    total = len(dataset)
    if max_batches is not None and max_batches * batch_size < total:
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randperm(total, generator=generator)[: max_batches * batch_size].tolist()
    else:
        indices = list(range(total))
    return DataLoader(
        Subset(dataset, indices[rank::world_size]),
        batch_size=math.ceil(batch_size / world_size),
        shuffle=False,
        num_workers=base.num_workers,
        collate_fn=base.collate_fn,
        pin_memory=base.pin_memory,
    )


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


def _ncc_means(class_means: Tensor) -> Tensor:
    """``class_means`` with NaN rows (unseen classes) moved far away, for the nearest-mean rule."""
    means = class_means.clone()
    unseen = means.isnan().any(dim=1)
    if unseen.any():
        means[unseen] = 0.0
        means[unseen, 0] = _FAR
    return means


class _Sample:
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
        self.sums.index_add_(0, targets, features.to(self.sums.device, torch.float64))

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
    sample = _Sample(max_points)
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
                num_classes, feature_dim, class_means=_ncc_means(class_means.to(device))
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
            return _result(metric, classifier, class_means, sample)
    finally:
        module.train(was_training)


def _result(
    metric: NeuralCollapse, classifier: Tensor, class_means: Tensor | None, sample: _Sample
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


def save_figures(
    result: GeometryResult,
    output_dir: str | Path,
    split: str,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> dict[str, Path]:
    """Draw :func:`hugnc.plots.geometry_figures` of ``result`` into ``output_dir``.

    Files: ``feature_geometry_<split>.png`` (d = 2 or 3) and ``class_cosines_<split>.png``.

    Returns:
        ``{"feature_geometry" | "class_cosines": path}`` of the files written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    figures = geometry_figures(
        result.features,
        result.targets,
        result.centred_means,
        result.classifier,
        class_names=class_names,
        title=title,
    )
    names = {"features": "feature_geometry", "cosines": "class_cosines"}
    paths = {}
    for kind, figure in figures.items():
        path = output_dir / f"{names[kind]}_{split}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths[names[kind]] = path
    return paths


def save_curves(history: Sequence[dict[str, float]], output_dir: str | Path) -> dict[str, Path]:
    """Write ``nc_history.json`` and ``nc_curves.png`` (NC/GNC over epochs) into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    history_path = output_dir / "nc_history.json"
    # NaN is not JSON: undefined values become null.
    clean = [
        {k: (v if v is None or math.isfinite(v) else None) for k, v in entry.items()}
        for entry in history
    ]
    history_path.write_text(json.dumps(clean, indent=1))
    figure = nc_curves_figure(history)
    curves_path = output_dir / "nc_curves.png"
    figure.savefig(curves_path, dpi=100)
    plt.close(figure)
    return {"nc_history": history_path, "nc_curves": curves_path}


# ---------------------------------------------------------------------------------------------
# Lightning callback
# ---------------------------------------------------------------------------------------------


class NeuralCollapseMonitor(Callback):
    """NC/GNC metrics and geometry pictures, during fit and on the test loop.

    During fit, at the end of every ``every_n_epochs``-th training epoch and of the last one, runs
    :func:`measure_geometry` on ``split`` (capped at ``max_batches`` batches of ``batch_size``)
    and logs its values as ``nc/<name>`` and ``gnc/<name>`` (``gnc_`` prefix dropped). At the
    last epoch it also saves the pictures of that split; when fit ends, the curves over epochs
    (``nc_curves.png``, ``nc_history.json``).

    On the test loop (``test=True``) it reuses the test step's features (no extra forward),
    with class means from a pass over the *train* split (capped likewise) with the tested weights,
    so ``test/nc/nc4`` is the nearest-train-class-mean mismatch; it logs ``test/nc/*``,
    ``test/gnc/*`` and saves ``feature_geometry_test.png`` (d = 2 or 3) and
    ``class_cosines_test.png``. Pictures go to ``output_dir`` and, as images, to every
    WandbLogger.

    Args:
        output_dir: where pictures and curves go (the run directory).
        split: ``"train"``, ``"val"`` or ``"test"``: the data measured during fit.
        every_n_epochs: period in epochs; 0 measures only at the last epoch.
        max_batches: cap on the global batches per measurement (``None``: the whole split).
        batch_size: global batch size of the measurement (default: the datamodule's eval size).
        test: metrics and pictures on the test loop.
        plots: save and log pictures (metrics are logged either way). Under ``fast_dev_run``
            (``trainer=debug``) there are no pictures and measurements use its batch count.
        max_points: features per picture.
        feature_cache_mb: per-rank memory for the one-forward shortcut (0: two forward passes).
        seed: seed of the subset permutation.
    """

    def __init__(
        self,
        output_dir: str,
        split: str = "train",
        every_n_epochs: int = 1,
        max_batches: int | None = 10,
        batch_size: int | None = None,
        test: bool = True,
        plots: bool = True,
        max_points: int = 10000,
        feature_cache_mb: float = 256,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be >= 1 or null, got {max_batches}")
        self.output_dir = Path(output_dir)
        self.split = split
        self.every_n_epochs = every_n_epochs
        self.max_batches = max_batches
        self.batch_size = batch_size
        self.test = test
        self.plots = plots
        self.max_points = max_points
        self.cache_bytes = int(feature_cache_mb * 2**20)
        self.seed = seed
        self.history: list[dict[str, float]] = []
        #: Wall seconds spent in this callback (measurements, pictures), for overhead reports.
        self.elapsed_s = 0.0
        self.last_result: GeometryResult | None = None
        self.last_test_result: GeometryResult | None = None
        self.saved: dict[str, Path] = {}
        self._test_metric: NeuralCollapse | None = None
        self._test_sample: _Sample | None = None
        self._test_means: Tensor | None = None

    # -- helpers ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _timed(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.elapsed_s += time.perf_counter() - start

    def _loader(self, trainer: Trainer, split: str) -> DataLoader:
        max_batches = self.max_batches
        if trainer.fast_dev_run:  # as Lightning's loops: 1 batch (or fast_dev_run=n batches)
            max_batches = int(trainer.fast_dev_run)
        return split_loader(
            trainer.datamodule,
            split,
            max_batches=max_batches,
            batch_size=self.batch_size,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            seed=self.seed,
        )

    def _measure(
        self, trainer: Trainer, pl_module: LightningModule, split: str, class_means=None
    ) -> GeometryResult:
        return measure_geometry(
            pl_module,
            self._loader(trainer, split),
            class_means=class_means,
            max_points=self.max_points,
            cache_bytes=self.cache_bytes,
            forward_context=trainer.precision_plugin.forward_context,
        )

    @staticmethod
    def _is_last_epoch(trainer: Trainer) -> bool:
        if trainer.should_stop:
            return True
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and trainer.current_epoch + 1 >= max_epochs:
            return True
        return trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps

    def _plotting(self, trainer: Trainer) -> bool:
        # fast_dev_run (trainer=debug) checks a config in seconds: metrics yes, pictures no.
        return self.plots and trainer.is_global_zero and not trainer.fast_dev_run

    def _save_and_log_figures(self, trainer: Trainer, result: GeometryResult, split: str) -> None:
        if not self._plotting(trainer):
            return
        title = f"{split} features, epoch {trainer.current_epoch}"
        paths = save_figures(
            result,
            self.output_dir,
            split,
            class_names=getattr(trainer.datamodule, "classes", None),
            title=title,
        )
        self.saved.update({f"{name}_{split}": path for name, path in paths.items()})
        for name, path in paths.items():
            self._log_image(trainer, f"{split}/{name}", path)
            rank_zero_info(f"{name.replace('_', ' ')} picture: {path}")

    @staticmethod
    def _log_image(trainer: Trainer, key: str, path: Path) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key, [str(path)], step=trainer.global_step)

    # -- fit ----------------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with self._timed():
            self._on_train_epoch_end(trainer, pl_module)

    def _on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        last = self._is_last_epoch(trainer)
        periodic = self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0
        if not (last or periodic):
            return
        if trainer.datamodule is None:
            rank_zero_warn("NeuralCollapseMonitor needs a datamodule: none given, skipped")
            return
        try:
            result = self._measure(trainer, pl_module, self.split)
        except NotEnoughClassesError as error:
            rank_zero_warn(f"NC metrics of epoch {epoch} skipped: {error}")
            return
        self.last_result = result
        pl_module.log_dict(log_keys(result.metrics), on_step=False, on_epoch=True)
        self.history.append({"epoch": float(epoch), **result.metrics})
        if last:
            self._save_and_log_figures(trainer, result, self.split)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with self._timed():
            self._on_train_end(trainer, pl_module)

    def _on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not (self.history and self._plotting(trainer)):
            return
        rank_zero_info(
            f"NC/GNC: {len(self.history)} measurements of {self.split} in {self.elapsed_s:.1f} s"
        )
        paths = save_curves(self.history, self.output_dir)
        self.saved.update(paths)
        self._log_image(trainer, "nc/curves", paths["nc_curves"])
        rank_zero_info(f"NC/GNC curves: {paths['nc_curves']}")

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))

    # -- test ---------------------------------------------------------------------------------

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with self._timed():
            self._on_test_epoch_start(trainer, pl_module)

    def _on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.test:
            return
        classifier = pl_module.head.classifier
        try:
            loader = self._loader(trainer, "train")
        except (AttributeError, TypeError) as error:
            rank_zero_warn(f"no train split for the test NC4 class means ({error}): nc4 is NaN")
            self._test_means = None
        else:
            self._test_means = compute_class_means(
                pl_module, loader, trainer.precision_plugin.forward_context
            )
        means = self._test_means
        self._test_metric = NeuralCollapse(
            *classifier.shape,
            class_means=None if means is None else _ncc_means(means).to(classifier.device),
        ).to(classifier.device)
        self._test_sample = _Sample(self.max_points)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._test_metric is None or self._test_sample is None:
            return
        with self._timed(), torch.no_grad():
            features, targets = outputs["features"], outputs["targets"]
            self._test_metric.update(features, targets, pl_module.head.logits(features))
            self._test_sample.add(features, targets)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with self._timed():
            self._on_test_epoch_end(trainer, pl_module)
        rank_zero_info(f"NC/GNC callback: {self.elapsed_s:.1f} s in all (fit and test)")

    def _on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metric, sample = self._test_metric, self._test_sample
        if metric is None or sample is None:
            return
        self._test_metric = self._test_sample = None
        try:
            with warnings.catch_warnings():
                # A rank without test batches: torchmetrics warns about compute before update.
                warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
                result = _result(metric, pl_module.head.classifier, self._test_means, sample)
        except NotEnoughClassesError as error:
            rank_zero_warn(f"test NC metrics skipped: {error}")
            return
        self.last_test_result = result
        pl_module.log_dict(log_keys(result.metrics, prefix="test/"), on_step=False, on_epoch=True)
        self._save_and_log_figures(trainer, result, "test")


__all__ = [
    "SPLITS",
    "GeometryResult",
    "NeuralCollapseMonitor",
    "NotEnoughClassesError",
    "compute_class_means",
    "log_keys",
    "measure_geometry",
    "save_curves",
    "save_figures",
    "split_loader",
]
