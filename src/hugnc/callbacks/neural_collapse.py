"""NC/GNC metrics and geometry pictures during training: the Lightning callback.

:class:`NeuralCollapseMonitor` runs :func:`hugnc.metrics.geometry.measure_geometry` on a split every
``every_n_epochs`` and at the last epoch (logged as ``nc/*``, ``gnc/*``), measures the test loop
(``test/nc/*``, ``test/gnc/*``), and saves pictures and NC/GNC curves in the run directory (also
logged as W&B images). The measurement itself (two passes, one forward, DDP) is described in
:mod:`hugnc.metrics.geometry`. Pictures are drawn on rank 0 from its own shard's features (a
random sample of the subset); means and classifier are the synced ones.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader

from hugnc.callbacks._lightning import datamodule, fast_dev_run, head
from hugnc.data.subsets import SPLITS, split_loader
from hugnc.metrics.geometry import (
    FeatureSample,
    GeometryResult,
    NotEnoughClassesError,
    compute_class_means,
    geometry_result,
    log_keys,
    measure_geometry,
    nearest_mean_table,
)
from hugnc.metrics.neural_collapse import NeuralCollapse
from hugnc.plots import save_curves, save_figures


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
        self._test_sample: FeatureSample | None = None
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
        if fast_dev_run(trainer):  # as Lightning's loops: 1 batch (or fast_dev_run=n batches)
            max_batches = int(fast_dev_run(trainer))
        return split_loader(
            datamodule(trainer),
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
        return self.plots and trainer.is_global_zero and not fast_dev_run(trainer)

    def _save_and_log_figures(self, trainer: Trainer, result: GeometryResult, split: str) -> None:
        if not self._plotting(trainer):
            return
        title = f"{split} features, epoch {trainer.current_epoch}"
        paths = save_figures(
            result,
            self.output_dir,
            split,
            class_names=getattr(datamodule(trainer), "classes", None),
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
        if datamodule(trainer) is None:
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
        classifier = head(pl_module).classifier
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
        num_classes, feature_dim = classifier.shape
        self._test_metric = NeuralCollapse(
            num_classes,
            feature_dim,
            class_means=None if means is None else nearest_mean_table(means).to(classifier.device),
        ).to(classifier.device)
        self._test_sample = FeatureSample(self.max_points)

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
            self._test_metric.update(features, targets, head(pl_module).logits(features))
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
                result = geometry_result(
                    metric, head(pl_module).classifier, self._test_means, sample
                )
        except NotEnoughClassesError as error:
            rank_zero_warn(f"test NC metrics skipped: {error}")
            return
        self.last_test_result = result
        pl_module.log_dict(log_keys(result.metrics, prefix="test/"), on_step=False, on_epoch=True)
        self._save_and_log_figures(trainer, result, "test")


__all__ = ["NeuralCollapseMonitor"]
