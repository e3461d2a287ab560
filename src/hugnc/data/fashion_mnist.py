"""Fashion-MNIST as a LightningDataModule, offline from Debian's ``dataset-fashion-mnist``."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

from torch import Tensor
from torchvision import datasets

from hugnc.data.base import DatasetUnavailableError
from hugnc.data.in_memory import InMemoryImageDataModule
from hugnc.data.mnist import IDX_FILES, fetch_idx_files, read_idx_dataset

RAW_FILES = IDX_FILES
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# Channel statistics of the 60k training images (pixels in [0, 1]).
MEAN, STD = 0.2860, 0.3530


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
    debian = Path(debian_dir)
    complete = all((raw_dir / name).is_file() for name in RAW_FILES)
    if not complete and all((debian / f"{name}.gz").is_file() for name in RAW_FILES):
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name in RAW_FILES:
            target = raw_dir / name
            if target.is_file():
                continue
            partial = target.with_suffix(".partial")
            with gzip.open(debian / f"{name}.gz", "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)  # atomic: a killed copy never looks complete
    download_error = fetch_idx_files(datasets.FashionMNIST, root, download)
    if not download_error:
        return raw_dir
    raise DatasetUnavailableError(
        f"Fashion-MNIST not found in {raw_dir} (expected files: {', '.join(RAW_FILES)}) "
        f"nor as .gz files in {debian}; {download_error}.\n"
        "Get it either way:\n"
        "  - offline, Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist "
        f"(installs the .gz files into {DEBIAN_DIR}; or set data.debian_dir to where they are)\n"
        "  - on a machine with internet: hugnc downloads it through torchvision on first use "
        f"(data.download=true), or copy its {raw_dir} here."
    )


class FashionMNISTDataModule(InMemoryImageDataModule):
    """Fashion-MNIST: 60k train (minus a seeded validation split) / 10k test, 28x28 grayscale, K=10.

    Args:
        data_dir: root under which torchvision's ``FashionMNIST/raw`` lives (created if needed).
        debian_dir: where Debian's ``dataset-fashion-mnist`` puts its ``.gz`` files.
        download: try torchvision's download when no local copy exists.
        num_classes: must be 10; lets configs and heads read K from the data config.
        augment: random crop (padding 2) + horizontal flip on training images.
        **kwargs: the shared options of :class:`~hugnc.data.base.ImageDataModule` (batch sizes,
            ``val_size`` (default 5000), seed, train_subset, long tail, loader settings).
    """

    dataset_name = "Fashion-MNIST"
    fixed_num_classes = 10
    default_classes = tuple(datasets.FashionMNIST.classes)
    mean, std = (MEAN,), (STD,)
    crop_padding, flip = 2, True
    image_shape = (1, 28, 28)

    def __init__(
        self,
        data_dir: str,
        debian_dir: str = DEBIAN_DIR,
        download: bool = True,
        num_classes: int = 10,
        batch_size: int = 256,
        val_size: int = 5000,
        **kwargs,
    ) -> None:
        super().__init__(
            data_dir, num_classes=num_classes, batch_size=batch_size, val_size=val_size, **kwargs
        )
        self.debian_dir = debian_dir
        self.download = download

    def prepare_data(self) -> None:
        ensure_fashion_mnist(self.data_dir, self.debian_dir, self.download)

    def _read(self) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]:
        ensure_fashion_mnist(self.data_dir, self.debian_dir, download=False)
        return read_idx_dataset(datasets.FashionMNIST, self.data_dir)
