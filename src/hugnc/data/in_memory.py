"""Datasets held as one uint8 tensor (MNIST, Fashion-MNIST, CIFAR): whole batches are fetched,
randomly cropped, flipped and normalized by tensor ops, with no Python loop over images.

Two ways to serve them (``data.on_device``): through a torch ``DataLoader`` (the reference path,
``false``), or with the whole dataset on the training device and batches cut there by a
:class:`~hugnc.data.on_device.DeviceBatchLoader` (``true``; see :mod:`hugnc.data.on_device`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hugnc.data.base import ImageDataModule, run_seed
from hugnc.data.on_device import DeviceBatchLoader


def random_crop_flip(
    images: Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Per-image random crop of the zero-padded batch back to its size, then a horizontal flip with
    probability 1/2 (torchvision's ``RandomCrop(H, padding)`` then ``RandomHorizontalFlip()``,
    applied to every image independently), as one gather.

    Args:
        images: ``[B, C, H, W]`` on any device.
        padding: zero padding p on each side; offsets ``top``, ``left`` are uniform in 0..2p.
        flip: whether to flip at random.
        generator: a generator on ``images.device`` (``None``: that device's default generator).

    Returns:
        ``[B, C, H, W]``, same dtype and device. Draws ``top`` ``[B]``, ``left`` ``[B]`` (when
        ``padding > 0``), then the flips ``rand([B]) < 0.5`` (when ``flip``).
    """
    if padding == 0 and not flip:
        return images
    batch, channels, height, width = images.shape
    device = images.device
    rows = torch.arange(height, device=device).expand(batch, height)
    cols = torch.arange(width, device=device).expand(batch, width)
    if padding > 0:
        top = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
        left = torch.randint(0, 2 * padding + 1, (batch, 1), generator=generator, device=device)
        rows, cols = rows + top, cols + left
        images = F.pad(images, (padding, padding, padding, padding))
    if flip:
        mirrored = torch.rand(batch, 1, generator=generator, device=device) < 0.5
        cols = torch.where(mirrored, cols.flip(1), cols)
    # Output pixel (b, c, i, j) = padded pixel (b, c, rows[b, i], cols[b, j]): one gather over the
    # flattened padded images, the same [B, 1, H * W] index for every channel.
    index = rows[:, :, None] * (width + 2 * padding) + cols[:, None, :]
    index = index.view(batch, 1, height * width).expand(batch, channels, height * width)
    return images.flatten(2).gather(2, index).view(batch, channels, height, width)


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """:func:`random_crop_flip` without the flip: ``[B, C, H, W]`` -> ``[B, C, H, W]``."""
    return random_crop_flip(images, padding, False, generator)


def random_flip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """:func:`random_crop_flip` without the crop: each image of ``[B, C, H, W]`` flipped
    horizontally with probability 1/2."""
    return random_crop_flip(images, 0, True, generator)


def _keep_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """collate_fn of :class:`TensorImageDataset`: ``__getitems__`` already returns the batch."""
    return batch


class TensorImageDataset(Dataset):
    """Images ``[N, C, H, W]`` uint8 and labels ``[N]``; a batch is fetched by one index operation.

    Several datasets (train with augmentation, train without, subsets) share one image tensor:
    each holds only its ``indices`` into it.

    Args:
        images: uint8 ``[N, C, H, W]``.
        targets: int64 ``[N]``.
        mean, std: per-channel statistics of pixels in [0, 1]; outputs ``(x / 255 - mean) / std``.
        crop_padding: random crop with this zero padding (0: none).
        flip: random horizontal flip.
        indices: rows of ``images`` in this dataset (default: all).

    Everything (images, labels, indices, normalization constants) lives on ``images.device``:
    :meth:`to` gives the same dataset on another device.
    """

    collate_fn = staticmethod(_keep_batch)

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        crop_padding: int = 0,
        flip: bool = False,
        indices: Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(targets):
            raise ValueError(
                f"need uint8 images [N, C, H, W] and N targets, got {images.dtype} "
                f"{tuple(images.shape)} and {len(targets)} targets"
            )
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean/std need {images.shape[1]} channels, got {mean}, {std}")
        device = images.device
        self.images = images
        self.all_targets = torch.as_tensor(targets, dtype=torch.long, device=device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_padding = crop_padding
        self.flip = flip
        self.indices = (
            torch.arange(len(images), device=device)
            if indices is None
            else torch.as_tensor(indices, dtype=torch.long, device=device)
        )
        self.targets = self.all_targets[self.indices]
        # (x / 255 - mean) / std == x * scale + shift, in place on the float copy.
        std_t = torch.tensor(self.std).view(1, -1, 1, 1)
        self._scale = (1.0 / (255.0 * std_t)).to(device)
        self._shift = (-torch.tensor(self.mean).view(1, -1, 1, 1) / std_t).to(device)

    @property
    def device(self) -> torch.device:
        """Where the images (and everything else of this dataset) are."""
        return self.images.device

    @property
    def augments(self) -> bool:
        """Whether :meth:`transform` draws random numbers (crop or flip)."""
        return self.crop_padding > 0 or self.flip

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: Tensor) -> TensorImageDataset:
        """The samples at ``positions`` (same images in memory, same transform)."""
        return self.with_transform(self.crop_padding, self.flip, self.indices[positions])

    def with_transform(
        self, crop_padding: int, flip: bool, indices: Tensor | None = None
    ) -> TensorImageDataset:
        """The same samples (or ``indices``) with another augmentation."""
        return TensorImageDataset(
            self.images,
            self.all_targets,
            self.mean,
            self.std,
            crop_padding,
            flip,
            self.indices if indices is None else indices,
        )

    def to(self, device: torch.device | str, images: Tensor | None = None) -> TensorImageDataset:
        """The same samples and transform on ``device`` (``self`` when already there).

        Args:
            images: ``self.images`` already copied to ``device`` (so that datasets sharing one
                image tensor share one device copy); default: copied here.
        """
        device = torch.device(device)
        if images is None:
            if self.device == device:
                return self
            images = self.images.to(device)
        if images.shape != self.images.shape or images.device.type != device.type:
            raise ValueError(
                f"images {tuple(images.shape)} on {images.device} are not this dataset's "
                f"{tuple(self.images.shape)} moved to {device}"
            )
        return TensorImageDataset(
            images,
            self.all_targets,
            self.mean,
            self.std,
            self.crop_padding,
            self.flip,
            self.indices,
        )

    def transform(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> augmented, normalized float32 ``[B, C, H, W]``.

        Random numbers come from ``generator`` (on the images' device), else from that device's
        default generator (torch's global RNG on the CPU).
        """
        images = random_crop_flip(images, self.crop_padding, self.flip, generator)
        return images.float().mul_(self._scale).add_(self._shift)

    def fetch(
        self, positions: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """The batch at ``positions`` (int64 ``[B]`` on this dataset's device): transformed images
        ``[B, C, H, W]`` float32 and labels ``[B]`` int64, by one gather each."""
        rows = self.indices[positions]
        return self.transform(self.images[rows], generator), self.all_targets[rows]

    def __getitems__(self, positions: Sequence[int]) -> tuple[Tensor, Tensor]:
        return self.fetch(torch.as_tensor(positions, dtype=torch.long, device=self.device))

    def __getitem__(self, position: int) -> tuple[Tensor, int]:
        images, targets = self.__getitems__([position])
        return images[0], int(targets[0])


class InMemoryImageDataModule(ImageDataModule):
    """Base of the small datasets: subclasses read their files into uint8 tensors (``_read``).

    Class attributes: ``mean``, ``std`` (per channel), ``crop_padding`` and ``flip`` (the training
    augmentation when ``augment=True``), ``image_shape`` ``(C, H, W)``.

    With ``on_device=True`` every loader is a :class:`~hugnc.data.on_device.DeviceBatchLoader`
    over the dataset copied once to the trainer's root device (one copy of each image tensor,
    shared by the train/val/test datasets and the continual tasks that index it); otherwise the
    reference ``DataLoader`` of :meth:`ImageDataModule.loader`.
    """

    supports_on_device = True
    crop_padding: int = 0
    flip: bool = False
    image_shape: tuple[int, int, int] = (0, 0, 0)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (id of a CPU image tensor, device) -> (that tensor, its copy on the device).
        self._device_images: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.image_shape

    def _read(self) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]:
        """Train images, train labels, test images, test labels, class names (or ``None``)."""
        raise NotImplementedError

    def _load(self) -> tuple[Dataset, Dataset, Dataset, list[str] | None]:
        train_images, train_targets, test_images, test_targets, classes = self._read()
        for images in (train_images, test_images):
            if tuple(images.shape[1:]) != self.image_shape:
                raise ValueError(
                    f"{type(self).__name__} expects images of shape {self.image_shape}, "
                    f"found {tuple(images.shape[1:])} in {self.data_dir}"
                )
        eval_train = TensorImageDataset(train_images, train_targets, self.mean, self.std)
        train = eval_train.with_transform(
            self.crop_padding if self.augment else 0, self.flip and self.augment
        )
        test = TensorImageDataset(test_images, test_targets, self.mean, self.std)
        return train, eval_train, test, classes

    def target_device(self) -> torch.device:
        """The trainer's root device (the CPU without a trainer): where on-device data go."""
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def to_device(self, dataset: TensorImageDataset, device: torch.device) -> TensorImageDataset:
        """``dataset`` on ``device``, its image tensor copied there once per datamodule."""
        if dataset.device == device:
            return dataset
        key = (id(dataset.images), device)
        if key not in self._device_images or self._device_images[key][0] is not dataset.images:
            self._device_images[key] = (dataset.images, dataset.images.to(device))
        return dataset.to(device, self._device_images[key][1])

    def loader(self, dataset: Dataset, train: bool) -> DataLoader | DeviceBatchLoader:
        """The reference ``DataLoader`` (``on_device=False``), else a :class:`DeviceBatchLoader`
        on the trainer's root device with the same order: training shuffled per epoch from the
        run's seed + epoch, both split across DDP ranks as DistributedSampler does."""
        if not self.on_device:
            return super().loader(dataset, train)
        if not isinstance(dataset, TensorImageDataset):
            raise TypeError(f"the on-device path needs a TensorImageDataset, got {type(dataset)}")
        trainer = self.trainer
        return DeviceBatchLoader(
            self.to_device(dataset, self.target_device()),
            batch_size=self.per_device_batch_size if train else self.eval_batch_size,
            shuffle=train,
            seed=run_seed(),
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
            drop_last=False,
        )
