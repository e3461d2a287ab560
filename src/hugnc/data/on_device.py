"""The on-device data path (``data.on_device=true``) of the in-memory datasets.

The whole uint8 dataset sits on the training device (GPU or CPU) as one tensor; each batch is one
gather of rows, then random crop with zero padding, horizontal flip and normalization as batched
tensor ops on that device (:meth:`hugnc.data.in_memory.TensorImageDataset.fetch`). No DataLoader,
no worker, no host-to-device copy per batch, no host synchronization per batch.

Order, the same as the reference DataLoader path (:meth:`hugnc.data.base.ImageDataModule.loader`,
a ``DistributedSampler``): in epoch ``e`` the permutation ``randperm(N)`` of a CPU generator
seeded with ``seed + e`` (the same on every rank), padded by its own first indices to a multiple
of the world size, rank ``r`` taking elements ``r::world_size``; evaluation loaders take
``arange(N)`` instead (what Lightning's evaluation sampler does under DDP). So both paths give
every rank the same samples in the same order, and differ only in augmentation random numbers:
here a generator on the device seeded from ``(seed, epoch, rank)``, so an epoch's batches are a
function of the seed and the epoch alone (identical after a resume).

Lightning calls ``loader.sampler.set_epoch(epoch)`` before each training epoch, as for a
DataLoader; the loader also exposes ``dataset``, ``batch_size``, ``collate_fn``, ``num_workers``,
``pin_memory`` and ``batch_sampler`` (``None``), so code written for DataLoaders (Lightning's
checks, the NC metrics' ``split_loader``) reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Sampler

if TYPE_CHECKING:
    from hugnc.data.in_memory import TensorImageDataset


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """A 63-bit seed for the augmentation generator of (``seed``, ``epoch``, ``rank``), mixed by
    numpy's SeedSequence so that nearby triples give unrelated streams (``seed + epoch`` would
    make seed 0 / epoch 1 repeat seed 1 / epoch 0)."""
    if min(seed, epoch, rank) < 0:
        raise ValueError(f"seed, epoch and rank must be >= 0, got {seed}, {epoch}, {rank}")
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


class EpochShardSampler(Sampler[int]):
    """One rank's sample positions for one epoch, as DistributedSampler (``drop_last=False``)
    would give them, but as one int64 tensor on ``device`` (:meth:`positions`).

    Args:
        size: N, samples in the dataset.
        shuffle: a new permutation per epoch (training) or ``arange(N)`` (evaluation).
        seed: with the epoch, seeds the permutation (``seed + epoch``, same on every rank).
        rank, world_size: this rank's share: every ``world_size``-th position from ``rank``.
        device: where :meth:`positions` puts the positions.
        pad: repeat the first positions so every rank gets ``ceil(N / world_size)`` (training:
            the ranks must step together); ``False`` for evaluation, where padding would count
            some samples twice: each position then goes to exactly one rank.
    """

    def __init__(
        self,
        size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str = "cpu",
        pad: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError(f"cannot sample from an empty dataset (size {size})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world {world_size}")
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation :meth:`positions` returns (Lightning calls this)."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples of this rank per epoch: ``ceil(N / world_size)`` on every rank with ``pad``,
        else this rank's own share (one fewer on the last ranks when N % world_size != 0)."""
        if self.pad:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))

    def positions(self) -> Tensor:
        """This rank's positions of the epoch, int64 ``[len(self)]`` on ``device``."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        total = len(self) * self.world_size
        # Padded with the first indices (repeated if needed), as DDP does.
        if self.pad and total > self.size:
            order = order.repeat(math.ceil(total / self.size))[:total]
        return order[self.rank :: self.world_size].to(self.device)

    def __iter__(self) -> Iterator[int]:
        return iter(self.positions().tolist())


class DeviceBatchLoader:
    """Batches of a :class:`~hugnc.data.in_memory.TensorImageDataset` cut on its own device.

    An iterable with ``len`` (batches per epoch, the same on every rank): Lightning takes it
    wherever it takes a DataLoader, and moves nothing (the batches are already on the device).

    Args:
        dataset: the samples, already on the training device (``dataset.to(device)``).
        batch_size: samples per batch on this rank.
        shuffle: training order (a new permutation per epoch) or sequential (evaluation).
        seed: the run's seed: permutation ``seed + epoch``, augmentation from (seed, epoch, rank).
        rank, world_size: DDP rank and number of ranks (1 without DDP).
        drop_last: drop this rank's last partial batch (the reference path keeps it).

    Yields:
        ``(images, targets)``: float32 ``[b, C, H, W]`` (augmented and normalized as the
        dataset's transform says) and int64 ``[b]``, on ``dataset.device``; ``b = batch_size``
        except possibly for the last batch.
    """

    # DataLoader attributes that code written for DataLoaders reads (Lightning, NC metrics).
    num_workers = 0
    pin_memory = False
    batch_sampler = None

    def __init__(
        self,
        dataset: TensorImageDataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.collate_fn = dataset.collate_fn
        # Evaluation (no shuffle) is not padded: each sample counts once in test/acc, test/nc/*.
        self.sampler = EpochShardSampler(
            len(dataset), shuffle, seed, rank, world_size, device=dataset.device, pad=shuffle
        )
        if drop_last and len(self) == 0:
            raise ValueError(
                f"drop_last with {len(self.sampler)} samples per rank and batch_size "
                f"{batch_size} leaves no batch"
            )

    @property
    def device(self) -> torch.device:
        return self.dataset.device

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: its permutation and its augmentation random numbers."""
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        samples = len(self.sampler)
        if self.drop_last:
            return samples // self.batch_size
        return math.ceil(samples / self.batch_size)

    def generator(self) -> torch.Generator | None:
        """A fresh augmentation generator on the device for the current epoch and this rank
        (``None`` when the dataset does not augment)."""
        if not self.dataset.augments:
            return None
        sampler = self.sampler
        generator = torch.Generator(device=self.device)
        generator.manual_seed(augmentation_seed(sampler.seed, sampler.epoch, sampler.rank))
        return generator

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        positions = self.sampler.positions()
        generator = self.generator()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield self.dataset.fetch(positions[start : start + self.batch_size], generator)
