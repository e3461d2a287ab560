"""Deterministic, DDP-sharded subsets of a datamodule's split, for measuring a model on it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

SPLITS = ("train", "val", "test")


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
