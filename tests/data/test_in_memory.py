"""The batched in-memory pipeline: crops, flips and normalization as torchvision would do them."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import transforms

from hugnc.data import TensorImageDataset
from hugnc.data.in_memory import random_crop, random_flip


def _images(n: int = 16, channels: int = 3, size: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=generator)


def test_random_crop_gives_windows_of_the_zero_padded_image() -> None:
    images = _images()
    padding = 2
    crops = random_crop(images, padding, torch.Generator().manual_seed(0))
    assert crops.shape == images.shape and crops.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets_used = set()
    for i in range(len(images)):
        matches = [
            (top, left)
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            if torch.equal(crops[i], padded[i, :, top : top + 8, left : left + 8])
        ]
        assert matches, f"crop {i} is no window of its padded image"
        offsets_used.add(matches[0])
    assert len(offsets_used) > 3  # offsets differ per image, not one crop for the whole batch


def test_random_crop_without_padding_is_identity() -> None:
    images = _images()
    assert random_crop(images, 0) is images


def test_random_flip_flips_about_half_per_image() -> None:
    images = _images(n=400)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 150 < int(mirrored.sum()) < 250


def test_normalization_matches_torchvision() -> None:
    images = _images(n=4)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    dataset = TensorImageDataset(images, torch.arange(4), mean, std)
    batch, targets = dataset.__getitems__([0, 1, 2, 3])
    reference = transforms.Normalize(mean, std)(images.float() / 255)
    torch.testing.assert_close(batch, reference)
    assert batch.dtype == torch.float32 and targets.dtype == torch.int64
    image, target = dataset[2]
    torch.testing.assert_close(image, reference[2])
    assert target == 2


def test_loader_batches_are_deterministic_under_a_seed() -> None:
    images = _images(n=64)
    dataset = TensorImageDataset(images, torch.arange(64) % 4, (0.5,) * 3, (0.25,) * 3, 4, True)

    def first_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(seed)
        loader = DataLoader(dataset, batch_size=16, shuffle=True, collate_fn=dataset.collate_fn)
        return next(iter(loader))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert a[0].shape == (16, 3, 8, 8) and a[1].shape == (16,)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_subsets_share_the_image_tensor() -> None:
    images = _images(n=10)
    dataset = TensorImageDataset(images, torch.arange(10), (0.0,) * 3, (1.0,) * 3)
    part = dataset.subset(torch.tensor([7, 3, 5])).subset(torch.tensor([2, 0]))
    assert part.images is images
    assert part.targets.tolist() == [5, 7]
    torch.testing.assert_close(part.__getitems__([0, 1])[0], images[[5, 7]].float() / 255)


def test_wrong_inputs_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="uint8 images"):
        TensorImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="mean/std need 3 channels"):
        TensorImageDataset(_images(n=2), torch.zeros(2), (0.0,), (1.0,))
