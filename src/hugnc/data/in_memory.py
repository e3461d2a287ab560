"""Datasets held as one uint8 tensor (MNIST, Fashion-MNIST, CIFAR): whole batches are fetched,
randomly cropped, flipped and normalized by tensor ops, with no Python loop over images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from hugnc.data.base import ImageDataModule


def random_crop(images: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Per-image random crop of the zero-padded batch back to its size (``RandomCrop(H, padding)``
    of torchvision applied to every image independently). ``images``: ``[B, C, H, W]``."""
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    # Every window of every image as a view [B, C, 2p+1, 2p+1, H, W]; pick one per image.
    windows = padded.unfold(2, height, 1).unfold(3, width, 1)
    return windows[torch.arange(batch), :, top, left]


def random_flip(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each image of ``[B, C, H, W]`` horizontally with probability 1/2."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    out = images.clone()
    out[flip] = images[flip].flip(-1)
    return out


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
        self.images = images
        self.all_targets = torch.as_tensor(targets, dtype=torch.long)
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_padding = crop_padding
        self.flip = flip
        self.indices = torch.arange(len(images)) if indices is None else indices
        self.targets = self.all_targets[self.indices]
        # (x / 255 - mean) / std == x * scale + shift, in place on the float copy.
        std_t = torch.tensor(self.std).view(1, -1, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -torch.tensor(self.mean).view(1, -1, 1, 1) / std_t

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

    def transform(self, images: Tensor) -> Tensor:
        """uint8 ``[B, C, H, W]`` -> augmented, normalized float32 (torch's global RNG)."""
        images = random_crop(images, self.crop_padding)
        if self.flip:
            images = random_flip(images)
        return images.float().mul_(self._scale).add_(self._shift)

    def __getitems__(self, positions: Sequence[int]) -> tuple[Tensor, Tensor]:
        rows = self.indices[torch.as_tensor(positions, dtype=torch.long)]
        return self.transform(self.images[rows]), self.all_targets[rows]

    def __getitem__(self, position: int) -> tuple[Tensor, int]:
        images, targets = self.__getitems__([position])
        return images[0], int(targets[0])


class InMemoryImageDataModule(ImageDataModule):
    """Base of the small datasets: subclasses read their files into uint8 tensors (``_read``).

    Class attributes: ``mean``, ``std`` (per channel), ``crop_padding`` and ``flip`` (the training
    augmentation when ``augment=True``), ``image_shape`` ``(C, H, W)``.
    """

    mean: Sequence[float] = ()
    std: Sequence[float] = ()
    crop_padding: int = 0
    flip: bool = False
    image_shape: tuple[int, int, int] = (0, 0, 0)

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
