"""Small random datasets written in the real on-disk formats (for tests, benchmarks, dry runs).

- :func:`write_cifar`: torchvision's CIFAR-10/100 python pickles;
- :func:`write_idx`: MNIST/Fashion-MNIST idx files;
- :func:`write_image_folder`: ImageNet's ``train/<wnid>/*.JPEG`` / ``val/<wnid>/*.JPEG`` layout.

Images are random but class-tinted (each class has its own mean colour), so a model can learn them.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _class_images(
    rng: np.random.Generator, labels: np.ndarray, shape: tuple[int, ...], levels: np.ndarray
) -> np.ndarray:
    """uint8 images ``[N, *shape]``: the base level of each image's class plus noise."""
    noise = rng.integers(-30, 31, size=(len(labels), *shape))
    return np.clip(levels[labels].reshape(-1, *[1] * len(shape)) + noise, 0, 255).astype(np.uint8)


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def write_cifar(
    root: str | Path,
    num_classes: int = 10,
    train_per_class: int = 5,
    test_per_class: int = 2,
    seed: int = 0,
) -> Path:
    """Write ``cifar-10-batches-py/`` (``num_classes=10``) or ``cifar-100-python/`` (100) in
    torchvision's layout: pickled dicts with ``data`` uint8 ``[N, 3072]`` (CHW rows) and labels.

    The files are not the real ones, so torchvision's md5 check rejects them: callers must patch
    ``torchvision.datasets.cifar.check_integrity`` (tests do; never the production path).

    Returns:
        The folder written.
    """
    if num_classes not in (10, 100):
        raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
    rng = np.random.default_rng(seed)
    train_labels = _labels(num_classes, train_per_class, rng)
    test_labels = _labels(num_classes, test_per_class, rng)
    levels = rng.integers(30, 226, size=num_classes)
    train = _class_images(rng, train_labels, (3 * 32 * 32,), levels)
    test = _class_images(rng, test_labels, (3 * 32 * 32,), levels)
    names = [f"class_{i:03d}" for i in range(num_classes)]
    if num_classes == 10:
        folder = Path(root) / "cifar-10-batches-py"
        label_key, meta_name, meta = "labels", "batches.meta", {"label_names": names}
        train_files = {
            f"data_batch_{i + 1}": part
            for i, part in enumerate(np.array_split(np.arange(len(train_labels)), 5))
        }
        test_name = "test_batch"
    else:
        folder = Path(root) / "cifar-100-python"
        label_key, meta_name = "fine_labels", "meta"
        meta = {"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]}
        train_files = {"train": np.arange(len(train_labels))}
        test_name = "test"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f)

    for name, rows in train_files.items():
        dump(name, {"data": train[rows], label_key: train_labels[rows].tolist()})
    dump(test_name, {"data": test, label_key: test_labels.tolist()})
    dump(meta_name, meta)
    return folder


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """One uint8 array in the idx format of MNIST (``[N, H, W]`` images or ``[N]`` labels)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    Path(path).write_bytes(header + array.tobytes())


def write_mnist(
    raw_dir: str | Path,
    num_train: int = 60,
    num_test: int = 20,
    seed: int = 0,
) -> Path:
    """The four idx files of torchvision's ``MNIST/raw`` (or ``FashionMNIST/raw``), 10 classes."""
    raw = Path(raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    levels = rng.integers(30, 226, size=10)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = _labels(10, -(-count // 10), rng)[:count]
        images = _class_images(rng, labels, (28, 28), levels)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return raw


def write_image_folder(
    root: str | Path,
    classes: Sequence[str] = ("n01440764", "n01443537", "n01484850"),
    train_per_class: int = 4,
    val_per_class: int = 2,
    size: tuple[int, int] = (64, 48),
    seed: int = 0,
) -> Path:
    """``<root>/train/<class>/*.JPEG`` and ``<root>/val/<class>/*.JPEG`` (RGB, ``size`` = (W, H)).

    Returns:
        ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    width, height = size
    levels = rng.integers(30, 226, size=len(classes))
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for index, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            labels = np.full(count, index)
            # Smooth, photo-like content: a coarse random pattern upsampled, plus a class tint.
            coarse = _class_images(rng, labels, (height // 8 + 1, width // 8 + 1, 3), levels)
            for i, image in enumerate(coarse):
                picture = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
                picture.save(folder / f"{name}_{split}_{i:05d}.JPEG", quality=90)
    return root
