"""Fashion-MNIST as a LightningDataModule, offline from Debian's ``dataset-fashion-mnist``."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Subset, random_split
from torchvision import datasets, transforms

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# Channel statistics of the 60k training images (pixels in [0, 1]).
MEAN, STD = 0.2860, 0.3530


class DatasetUnavailableError(RuntimeError):
    """A dataset's files are missing and could not be obtained; the message says how to get them."""


def ensure_fashion_mnist(
    root: str | os.PathLike, debian_dir: str | os.PathLike = DEBIAN_DIR, download: bool = True
) -> Path:
    """Make torchvision's raw Fashion-MNIST files exist under ``<root>/FashionMNIST/raw``.

    Order: files already there; else gunzip Debian's ``.gz`` files from ``debian_dir``; else
    torchvision's download (fails in a few seconds without network); else one clear error.

    Returns:
        The raw directory.
    """
    raw_dir = Path(root) / "FashionMNIST" / "raw"
    if all((raw_dir / name).is_file() for name in RAW_FILES):
        return raw_dir
    debian = Path(debian_dir)
    if all((debian / f"{name}.gz").is_file() for name in RAW_FILES):
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name in RAW_FILES:
            target = raw_dir / name
            if target.is_file():
                continue
            partial = target.with_suffix(".partial")
            with gzip.open(debian / f"{name}.gz", "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)  # atomic: a killed copy never looks complete
        return raw_dir
    download_error = "download disabled (download=false)"
    if download:
        try:
            datasets.FashionMNIST(str(root), train=True, download=True)
            datasets.FashionMNIST(str(root), train=False, download=True)
            return raw_dir
        except Exception as error:  # torchvision raises various network errors
            download_error = f"download failed: {type(error).__name__}: {error}"
    raise DatasetUnavailableError(
        f"Fashion-MNIST not found in {raw_dir} (expected files: {', '.join(RAW_FILES)}) "
        f"nor as .gz files in {debian}; {download_error}.\n"
        "Get it either way:\n"
        "  - offline, Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
        f"(installs the .gz files into {DEBIAN_DIR}; or set data.debian_dir to where they are)\n"
        "  - on a machine with internet: hugnc downloads it through torchvision on first use "
        f"(data.download=true), or copy its {raw_dir} here."
    )


class FashionMNISTDataModule(LightningDataModule):
    """Fashion-MNIST: 60k train (minus a seeded validation split) / 10k test, 28x28 grayscale, K=10.

    Args:
        data_dir: root under which torchvision's ``FashionMNIST/raw`` lives (created if needed).
        debian_dir: where Debian's ``dataset-fashion-mnist`` puts its ``.gz`` files.
        download: try torchvision's download when no local copy exists.
        num_classes: must be 10; lets configs and heads read K from the data config.
        batch_size: training batch size (global: divided by the world size under DDP).
        eval_batch_size: validation/test batch size (defaults to ``batch_size``).
        val_size: images held out of the training set for validation (seeded); 0 validates on test.
        seed: seed of the validation split (independent of the training seed).
        augment: random crop (padding 2) + horizontal flip on training images.
        train_subset: use only the first N training images after the split (tests, quick checks).
        num_workers, pin_memory, persistent_workers: DataLoader settings.
    """

    def __init__(
        self,
        data_dir: str,
        debian_dir: str = DEBIAN_DIR,
        download: bool = True,
        num_classes: int = 10,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        val_size: int = 5000,
        seed: int = 0,
        augment: bool = False,
        train_subset: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if num_classes != 10:
            raise ValueError(f"Fashion-MNIST has 10 classes, data.num_classes={num_classes}")
        if batch_size < 1 or not 0 <= val_size < 60000:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= val_size < 60000, got {batch_size}, {val_size}"
            )
        self.data_dir = data_dir
        self.debian_dir = debian_dir
        self.download = download
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.seed = seed
        self.augment = augment
        self.train_subset = train_subset
        self.loader_options = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
        }
        self.classes: list[str] = list(datasets.FashionMNIST.classes)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return (1, 28, 28)

    def prepare_data(self) -> None:
        ensure_fashion_mnist(self.data_dir, self.debian_dir, self.download)

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        ensure_fashion_mnist(self.data_dir, self.debian_dir, download=False)
        normalize = [transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))]
        augment = (
            [transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip()]
            if self.augment
            else []
        )
        train_full = datasets.FashionMNIST(
            self.data_dir, train=True, transform=transforms.Compose(augment + normalize)
        )
        eval_full = datasets.FashionMNIST(
            self.data_dir, train=True, transform=transforms.Compose(normalize)
        )
        self.test_set = datasets.FashionMNIST(
            self.data_dir, train=False, transform=transforms.Compose(normalize)
        )
        generator = torch.Generator().manual_seed(self.seed)
        train_indices, val_indices = random_split(
            range(len(train_full)), [len(train_full) - self.val_size, self.val_size], generator
        )
        train_indices = list(train_indices)[: self.train_subset]
        self.train_set = Subset(train_full, train_indices)
        self.val_set = Subset(eval_full, list(val_indices)) if self.val_size > 0 else self.test_set

    @property
    def per_device_batch_size(self) -> int:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world_size:
            raise ValueError(
                f"data.batch_size={self.batch_size} is not divisible by the world size {world_size}"
            )
        return self.batch_size // world_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.per_device_batch_size,
            shuffle=True,
            drop_last=False,
            **self.loader_options,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.eval_batch_size, **self.loader_options)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=self.eval_batch_size, **self.loader_options)
