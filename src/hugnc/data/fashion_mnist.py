"""Fashion-MNIST as a LightningDataModule, offline from Debian's ``dataset-fashion-mnist``."""

from __future__ import annotations

import gzip
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor
from torchvision import datasets

from hugnc.data.errors import DataCorruptError, DatasetUnavailableError
from hugnc.data.in_memory import InMemoryImageDataModule
from hugnc.data.mnist import (
    GZIP_ERRORS,
    IDX_FILES,
    IDX_NDIM,
    IDX_TRAIN_IMAGES,
    fetch_idx_files,
    idx_files_present,
    idx_shape,
    read_idx_dataset,
    staging_path,
)

RAW_FILES = IDX_FILES
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# Channel statistics of the 60k training images (pixels in [0, 1]).
MEAN, STD = 0.2860, 0.3530
#: How a deleted .gz file of Debian's package comes back.
REINSTALL = "sudo apt-get install --reinstall dataset-fashion-mnist"


def debian_files_present(debian_dir: str | os.PathLike) -> bool:
    """Whether ``debian_dir`` holds the four ``.gz`` files of Debian's package (existence only)."""
    return all((Path(debian_dir) / f"{name}.gz").is_file() for name in RAW_FILES)


def _gunzip_idx(source: Path, target: Path) -> None:
    """Decompress Debian's ``source`` into ``target`` (atomically: a killed copy never looks
    complete), checking the result's idx header and size first.

    Raises:
        DataCorruptError: naming ``source`` if it is truncated, not gzip, or not an idx file.
    """
    partial = staging_path(target)
    try:
        with gzip.open(source, "rb") as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        idx_shape(partial, IDX_NDIM[target.name], REINSTALL, name=source)
    except GZIP_ERRORS as error:
        partial.unlink(missing_ok=True)
        problem = "truncated" if isinstance(error, EOFError) else "not a valid gzip file"
        raise DataCorruptError.for_file(source, f"{problem}: {error}", REINSTALL) from None
    except DataCorruptError:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)


def ensure_fashion_mnist(
    root: str | os.PathLike, debian_dir: str | os.PathLike = DEBIAN_DIR, download: bool = True
) -> Path:
    """Make torchvision's raw Fashion-MNIST files exist under ``<root>/FashionMNIST/raw``.

    Order: files already there; else gunzip Debian's ``.gz`` files from ``debian_dir``; else
    torchvision's download (fails in a few seconds without network); else one clear error.

    Returns:
        The raw directory.

    Raises:
        DatasetUnavailableError: no copy anywhere and no download.
        DataCorruptError: a Debian ``.gz`` file that is truncated or not an idx file.
    """
    raw_dir = Path(root) / "FashionMNIST" / "raw"
    debian = Path(debian_dir)
    if not idx_files_present(raw_dir) and debian_files_present(debian):
        raw_dir.mkdir(parents=True, exist_ok=True)
        for name in RAW_FILES:
            if not (raw_dir / name).is_file():
                _gunzip_idx(debian / f"{name}.gz", raw_dir / name)
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
    num_train_images = IDX_TRAIN_IMAGES

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

    @classmethod
    def missing_files_problem(cls, options: Mapping[str, Any]) -> str | None:
        raw_dir = Path(options["data_dir"]) / "FashionMNIST" / "raw"
        debian = Path(options["debian_dir"])
        if idx_files_present(raw_dir) or debian_files_present(debian) or options["download"]:
            return None
        return (
            f"Fashion-MNIST not found in {raw_dir} (expected {', '.join(RAW_FILES)}) nor as .gz "
            f"files in {debian}, and data.download=false; install Debian's package (sudo apt-get "
            "install dataset-fashion-mnist), set data.debian_dir to where its .gz files are, or "
            "set data.download=true on a machine with internet"
        )

    def prepare_data(self) -> None:
        ensure_fashion_mnist(self.data_dir, self.debian_dir, self.download)

    def _read(self) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]:
        ensure_fashion_mnist(self.data_dir, self.debian_dir, download=False)
        refetch = (
            f"it is gunzipped again from Debian's .gz files in {self.debian_dir}, "
            "or downloaded with data.download=true"
        )
        return read_idx_dataset(datasets.FashionMNIST, self.data_dir, refetch)
