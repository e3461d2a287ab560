"""The one LightningModule: backbone (images -> features) + head (features -> logits) + loss."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from lightning import LightningModule
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from hugnc.distributed import gather_batch
from hugnc.losses import HUGLoss

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class HUGClassifier(LightningModule):
    """Image classifier trained with a HUG loss (on the proxy head) or cross-entropy (linear head).

    Args:
        backbone: module mapping ``[B, C, H, W]`` to ``[B, d]`` with a ``feature_dim`` attribute.
        head: ``LinearHead`` or ``ProxyHead``: ``logits(features)``, ``classifier`` ``[K, d]``,
            ``after_optimizer_step()``.
        criterion: a :class:`~hugnc.losses.HUGLoss` (uses features and the head's proxies) or a
            logits criterion such as ``nn.CrossEntropyLoss``.
        optimizer: partial optimizer, called with the parameters.
        scheduler: partial LR scheduler called with the optimizer, or ``None``. A scheduler whose
            constructor takes ``total_steps`` (e.g. OneCycleLR) receives the trainer's count.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        num_classes: K, for the accuracy metrics.
        channels_last: keep conv weights and input batches in channels-last (NHWC) memory format,
            which conv kernels run faster on (tensor cores on GPUs; oneDNN on CPUs). Numerics
            unchanged.
        compile: ``torch.compile`` the backbone when the model is configured (state-dict keys
            unchanged, so checkpoints load with or without it). The first steps pay the
            compilation (tens of seconds per shape); worth it for long runs only.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        criterion: nn.Module,
        optimizer: OptimizerFactory,
        num_classes: int,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}"
            )
        self.backbone = backbone
        self.head = head
        self.criterion = criterion
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.uses_hug = isinstance(criterion, HUGLoss)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.compile_backbone = compile
        self.accuracy = nn.ModuleDict(
            {
                f"{stage}_acc": MulticlassAccuracy(num_classes, average="micro")
                for stage in ("train", "val", "test")
            }
        )

    def configure_model(self) -> None:
        # Called by the trainer once the module is on its device (also on every DDP rank).
        if self.memory_format is torch.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if self.compile_backbone and not getattr(self, "_backbone_compiled", False):
            # nn.Module.compile compiles in place: no `_orig_mod.` prefix in the state dict.
            self.backbone.compile()
            self._backbone_compiled = True

    def features(self, images: Tensor) -> Tensor:
        """Backbone features ``[B, d]`` of images ``[B, C, H, W]`` (in the configured layout)."""
        if images.ndim == 4:
            images = images.contiguous(memory_format=self.memory_format)
        return self.backbone(images)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``[B, K]``."""
        return self.head.logits(self.features(images))

    def _loss_terms(self, features: Tensor, logits: Tensor, targets: Tensor) -> dict[str, Tensor]:
        if self.uses_hug:
            if self.training:
                # The intra term is class-balanced over the batch, so it is not an average of
                # per-rank losses: under DDP it is computed on the global batch (exact gradients).
                features, targets = gather_batch(features), gather_batch(targets)
            out = self.criterion(features, self.head.classifier, targets)
            return {"loss": out.loss, "loss_intra": out.intra, "loss_inter": out.inter}
        return {"loss": self.criterion(logits, targets)}

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Tensor]:
        images, targets = batch
        features = self.features(images)
        logits = self.head.logits(features)
        accuracy = self.accuracy[f"{stage}_acc"]
        accuracy(logits, targets)
        self.log(f"{stage}/acc", accuracy, on_step=False, on_epoch=True, prog_bar=stage != "train")
        terms = self._loss_terms(features, logits, targets)
        for name, value in terms.items():
            self.log(
                f"{stage}/{name}",
                value,
                on_epoch=True,
                prog_bar=name == "loss",
                batch_size=len(targets),
            )
        # Features go to callbacks (geometry plots, metrics) through the step outputs.
        return {
            "loss": terms["loss"],
            "loss_terms": {name: value.detach() for name, value in terms.items()},
            "features": features.detach(),
            "targets": targets,
        }

    def on_train_epoch_start(self) -> None:
        # Logged here rather than by LearningRateMonitor, which refuses to run without a logger.
        self.log(
            "train/lr",
            self.trainer.optimizers[0].param_groups[0]["lr"],
            on_epoch=True,
            on_step=False,
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._step(batch, "test")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.head.after_optimizer_step()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        extra = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
            extra["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, **extra)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
