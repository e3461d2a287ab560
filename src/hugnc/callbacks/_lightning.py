"""Typed access to what the callbacks read off Lightning's trainer and off hugnc's module.

Lightning sets ``Trainer.fast_dev_run`` and ``Trainer.datamodule`` from outside the class
(``trainer/setup.py``, the data connector), so its type information does not declare them; and a
callback sees the module as a plain ``LightningModule``, whose ``head`` and ``backbone`` (see
``hugnc.module.HUGClassifier``) ``nn.Module.__getattr__`` types as ``Tensor | Module``.
"""

from __future__ import annotations

from typing import cast

from lightning import LightningDataModule, LightningModule, Trainer
from torch import nn

from hugnc.models.heads import Head


def fast_dev_run(trainer: Trainer) -> int | bool:
    """``Trainer(fast_dev_run=...)``: ``False``, or the number of batches per loop."""
    return trainer.fast_dev_run  # type: ignore[attr-defined]  # set in trainer/setup.py


def datamodule(trainer: Trainer) -> LightningDataModule | None:
    """The datamodule of the running fit/test, ``None`` with plain dataloaders."""
    return trainer.datamodule  # type: ignore[attr-defined]  # set by the data connector


def head(pl_module: LightningModule) -> Head:
    """The module's head (``logits``, ``classifier`` ``[K, d]``)."""
    return cast(Head, pl_module.head)


def backbone(pl_module: LightningModule) -> nn.Module:
    """The module's backbone (images -> features ``[B, d]``)."""
    return cast(nn.Module, pl_module.backbone)
