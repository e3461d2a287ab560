"""The one LightningModule: backbone (images -> features) + head (features -> logits) + loss."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from lightning import LightningModule
from torch import Tensor, nn

from hugnc.distributed import gather_batch
from hugnc.losses import Criterion
from hugnc.models.heads import Head

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


def takes_total_steps(scheduler: Callable[..., Any]) -> bool:
    """Whether :class:`HUGClassifier` passes a scheduler (class or partial) the trainer's step
    count as ``total_steps`` (e.g. OneCycleLR): its schedule is then laid out for the budget."""
    return "total_steps" in inspect.signature(scheduler).parameters


class HUGClassifier(LightningModule):
    """Image classifier trained with a HUG loss (on the proxy head) or cross-entropy (linear head).

    Args:
        backbone: module mapping ``[B, C, H, W]`` to ``[B, d]`` with a ``feature_dim`` attribute.
        head: ``LinearHead`` or ``ProxyHead``: ``logits(features)``, ``classifier`` ``[K, d]``,
            ``after_optimizer_step()``.
        criterion: a :class:`~hugnc.losses.Criterion` (HUG on the head's proxies, CE on its
            logits).
        optimizer: partial optimizer, called with the parameters.
        scheduler: partial LR scheduler called with the optimizer, or ``None``. A scheduler whose
            constructor takes ``total_steps`` (e.g. OneCycleLR) receives the trainer's count.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        num_classes: K, checked against the head's classifier rows.
        channels_last: keep conv weights and input batches in channels-last (NHWC) memory format,
            which conv kernels run faster on (tensor cores on GPUs; oneDNN on CPUs). Numerics
            unchanged.
        compile: ``torch.compile`` the backbone when the model is configured (state-dict keys
            unchanged, so checkpoints load with or without it). The first steps pay the
            compilation (README, Performance); worth it for long runs only.
    """

    # Declared for the type checker: nn.Module's __getattr__ would type them `Tensor | Module`.
    head: Head

    def __init__(
        self,
        backbone: nn.Module,
        head: Head,
        criterion: Criterion,
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
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.compile_backbone = compile
        if head.classifier.shape[0] != num_classes:
            raise ValueError(
                f"the head has {head.classifier.shape[0]} classes but the data {num_classes}"
            )
        # Per stage, the epoch so far: the loss terms' names and [sum over samples of each term,
        # correct predictions, samples] (see _accumulate).
        self._epoch_sums: dict[str, tuple[list[str], Tensor]] = {}

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
        if self.criterion.needs_global_batch and self.training:
            # Not an average of per-rank losses: under DDP the loss of the global batch is
            # computed on every rank (exact gradients); the local logits do not apply to it.
            features, targets = gather_batch(features), gather_batch(targets)
            return self.criterion.loss_terms(features, targets, self.head)
        return self.criterion.loss_terms(features, targets, self.head, logits)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> dict[str, Any]:
        images, targets = batch
        features = self.features(images)
        logits = self.head.logits(features)
        terms = self._loss_terms(features, logits, targets)
        self._accumulate(stage, terms, logits, targets)
        if stage == "train":
            # The one self.log per step: the loss curve and the progress bar. Each self.log is
            # Python bookkeeping in Lightning, comparable to a small model's whole GPU step; epoch
            # means of every term and the accuracy are logged at the epoch end.
            self.log("train/loss_step", terms["loss"], prog_bar=True)
        # Features go to callbacks (geometry plots, metrics) through the step outputs.
        return {
            "loss": terms["loss"],
            "loss_terms": {name: value.detach() for name, value in terms.items()},
            "features": features.detach(),
            "targets": targets,
        }

    def _accumulate(
        self, stage: str, terms: dict[str, Tensor], logits: Tensor, targets: Tensor
    ) -> None:
        """Add a batch to the stage's epoch sums: a few tensor ops on the device, no host sync."""
        batch_size = torch.full((), len(targets), dtype=torch.float32, device=targets.device)
        correct = (logits.argmax(dim=1) == targets).sum().float()
        values = torch.stack([value.detach().float() for value in terms.values()])
        sums = torch.cat([values * batch_size, torch.stack([correct, batch_size])])
        if stage in self._epoch_sums:
            sums = sums + self._epoch_sums[stage][1]
        self._epoch_sums[stage] = (list(terms), sums)

    def _log_epoch_means(self, stage: str) -> None:
        """Log ``<stage>/<term>`` (sample-weighted mean) and ``<stage>/acc`` of the epoch, summed
        over all DDP ranks (a collective: every rank calls it)."""
        if stage not in self._epoch_sums:
            return
        names, sums = self._epoch_sums.pop(stage)
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        means = sums / sums[-1]
        show = stage != "train"
        # The means are global already; sync_dist averages equal values (one tiny all-reduce per
        # epoch) and keeps Lightning from warning that epoch values are per-rank.
        for name, mean in zip(names, means[:-2], strict=True):
            self.log(f"{stage}/{name}", mean, prog_bar=show and name == "loss", sync_dist=True)
        self.log(f"{stage}/acc", means[-2], prog_bar=show, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        self._log_epoch_means("train")

    def on_validation_epoch_start(self) -> None:
        self._epoch_sums.pop("val", None)  # an interrupted or sanity-check epoch's leftovers

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("val")

    def on_test_epoch_start(self) -> None:
        self._epoch_sums.pop("test", None)

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test")

    def on_train_epoch_start(self) -> None:
        self._epoch_sums.pop("train", None)
        # Logged here rather than by LearningRateMonitor, which refuses to run without a logger.
        self.log(
            "train/lr",
            self.trainer.optimizers[0].param_groups[0]["lr"],
            on_epoch=True,
            on_step=False,
        )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Any]:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Any]:
        return self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Any]:
        return self._step(batch, "test")

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.head.after_optimizer_step()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        extra = {}
        if takes_total_steps(self.scheduler_factory):
            extra["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, **extra)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval},
        }
