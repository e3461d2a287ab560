"""Callback drawing the learned feature geometry of the test set (the paper's GNC picture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from hugnc.plots import circle_features_figure


class FeatureGeometryPlot(Callback):
    """Collects test features (up to ``max_points`` per rank) and saves the geometry picture.

    For ``d = 2`` it writes ``<output_dir>/feature_geometry_test.png``: features on the unit circle
    coloured by class with the classifier rows (HUG proxies or linear weights) as arrows, and logs
    it to W&B when a WandbLogger is attached. For other d it does nothing.

    Args:
        output_dir: directory of the PNG (the run directory).
        max_points: per-rank cap on collected features (memory stays bounded on large test sets).
    """

    def __init__(self, output_dir: str, max_points: int = 10000) -> None:
        self.output_dir = Path(output_dir)
        self.max_points = max_points
        self._features: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self.last_path: Path | None = None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._features, self._targets = [], []

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        collected = sum(len(t) for t in self._targets)
        if collected >= self.max_points or outputs["features"].shape[1] != 2:
            return
        keep = self.max_points - collected
        self._features.append(outputs["features"][:keep].float().cpu())
        self._targets.append(outputs["targets"][:keep].cpu())

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._features:
            return
        features = pl_module.all_gather(torch.cat(self._features)).reshape(-1, 2)
        targets = pl_module.all_gather(torch.cat(self._targets)).reshape(-1)
        if not trainer.is_global_zero:
            return
        datamodule = trainer.datamodule
        figure = circle_features_figure(
            features,
            targets,
            pl_module.head.classifier.detach().cpu(),
            class_names=getattr(datamodule, "classes", None),
            title=f"test features and classifier directions, epoch {trainer.current_epoch}",
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.last_path = self.output_dir / "feature_geometry_test.png"
        figure.savefig(self.last_path, dpi=120)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("test/feature_geometry", [str(self.last_path)])
        plt.close(figure)
        rank_zero_info(f"feature geometry picture: {self.last_path}")
