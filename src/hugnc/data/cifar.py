"""CIFAR-10 and CIFAR-100 (torchvision's python pickles), with the paper's augmentation."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.datasets.cifar as tv_cifar
from torch import Tensor

from hugnc.data.base import try_download
from hugnc.data.errors import DataCorruptError, DatasetUnavailableError
from hugnc.data.in_memory import InMemoryImageDataModule

#: Bytes of one image in a batch file's ``data`` rows (3 x 32 x 32, channel-major).
IMAGE_BYTES = 3 * 32 * 32


def cifar_files(dataset_cls: type[tv_cifar.CIFAR10]) -> list[tuple[str, str]]:
    """(file name, md5) of every file of torchvision's CIFAR folder: batches, then the meta file."""
    meta = (dataset_cls.meta["filename"], dataset_cls.meta["md5"])
    return [*dataset_cls.train_list, *dataset_cls.test_list, meta]


def refetch_hint(dataset_cls: type[tv_cifar.CIFAR10], root: str | os.PathLike) -> str:
    """How a deleted CIFAR file comes back."""
    return (
        f"data.download=true on a machine with internet, or extract {dataset_cls.filename} "
        f"from {dataset_cls.url} again in {Path(root)}"
    )


def _unpickle(path: Path, refetch: str) -> Any:
    """The object pickled in ``path`` (latin1 strings, as CIFAR's Python 2 pickles need).

    Raises:
        DataCorruptError: the file cannot be unpickled.
    """
    with open(path, "rb") as f:
        try:
            return pickle.load(f, encoding="latin1")
        except Exception as error:  # unpickling damaged bytes raises almost any exception type
            problem = f"cannot be unpickled: {type(error).__name__}: {error}"
            raise DataCorruptError.for_file(path, problem, refetch) from None


def read_cifar_batch(path: Path, refetch: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 ``[N, 3, 32, 32]`` and labels int64 ``[N]`` of one pickled CIFAR batch
    (a dict with ``data`` uint8 ``[N, 3072]`` and ``labels`` (CIFAR-10) or ``fine_labels``
    (CIFAR-100)).

    Raises:
        DataCorruptError: naming ``path`` when it cannot be unpickled or holds something else.
    """
    entry = _unpickle(path, refetch)
    if not isinstance(entry, dict) or "data" not in entry:
        what = f"a dict with keys {sorted(entry)[:5]}" if isinstance(entry, dict) else type(entry)
        raise DataCorruptError.for_file(path, f"not a CIFAR batch: {what}", refetch)
    data, labels = entry["data"], entry.get("labels", entry.get("fine_labels"))
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2) or (
        data.shape[1] != IMAGE_BYTES
    ):
        shape = getattr(data, "shape", None)
        raise DataCorruptError.for_file(
            path,
            f"wrong shape: data {shape} {getattr(data, 'dtype', type(data).__name__)}, "
            f"expected uint8 [N, {IMAGE_BYTES}]",
            refetch,
        )
    if labels is None or len(labels) != len(data):
        count = "no" if labels is None else len(labels)
        raise DataCorruptError.for_file(path, f"{count} labels for {len(data)} images", refetch)
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def read_cifar(
    dataset_cls: type[tv_cifar.CIFAR10], root: str | os.PathLike
) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str]]:
    """Train images ``[N, 3, 32, 32]`` uint8, train labels ``[N]``, the same for test, and the
    class names, read from torchvision's CIFAR folder file by file (so that a damaged file is
    named).

    Raises:
        DataCorruptError: naming the first file that cannot be read as a CIFAR batch.
    """
    folder = Path(root) / dataset_cls.base_folder
    refetch = refetch_hint(dataset_cls, root)

    def split(files: list[list[str]]) -> tuple[Tensor, Tensor]:
        parts = [read_cifar_batch(folder / name, refetch) for name, _ in files]
        images, labels = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        return torch.from_numpy(images), torch.from_numpy(labels)

    meta_path = folder / dataset_cls.meta["filename"]
    meta = _unpickle(meta_path, refetch)
    classes = meta.get(dataset_cls.meta["key"]) if isinstance(meta, dict) else None
    if not isinstance(classes, list):
        key = dataset_cls.meta["key"]
        raise DataCorruptError.for_file(meta_path, f"no list of class names '{key}'", refetch)
    return *split(dataset_cls.train_list), *split(dataset_cls.test_list), classes


def ensure_cifar(
    dataset_cls: type[tv_cifar.CIFAR10], root: str | os.PathLike, download: bool = True
) -> Path:
    """Complete torchvision's ``<root>/<base_folder>`` of a CIFAR dataset (download if allowed).

    Returns:
        The dataset folder (``cifar-10-batches-py`` or ``cifar-100-python``).

    Raises:
        DatasetUnavailableError: files missing and no download.
        DataCorruptError: every file there, one with the wrong md5 (and no download to fix it).
    """
    folder = Path(root) / dataset_cls.base_folder
    files = cifar_files(dataset_cls)

    def damaged() -> list[str]:
        # Looked up at call time: tests replace torchvision's md5 check (and only that).
        return [
            name for name, md5 in files if not tv_cifar.check_integrity(str(folder / name), md5)
        ]

    if not damaged():
        return folder

    def _download() -> None:
        dataset_cls(str(root), train=True, download=True)

    download_error = try_download(_download if download else None)
    failed = damaged()
    if not download_error and not failed:
        return folder
    present = [name for name in failed if (folder / name).is_file()]
    if present and len(present) == len(failed):  # all there, and not the files torchvision knows
        raise DataCorruptError.for_file(
            folder / present[0],
            "its md5 checksum is not the one torchvision records for it",
            refetch_hint(dataset_cls, root),
        )
    name = "CIFAR-100" if issubclass(dataset_cls, tv_cifar.CIFAR100) else "CIFAR-10"
    raise DatasetUnavailableError(
        f"{name} not found (or corrupted) in {folder} (expected torchvision's python version: "
        f"{', '.join(name for name, _ in files)}); {download_error or 'files still incomplete'}.\n"
        "Get it either way:\n"
        "  - on a machine with internet: hugnc downloads it through torchvision on first use "
        "(data.download=true)\n"
        f"  - or download {dataset_cls.filename} from {dataset_cls.url}, and extract it in "
        f"{Path(root)} (tar xzf {dataset_cls.filename} -C {Path(root)})."
    )


class CIFAR10DataModule(InMemoryImageDataModule):
    """CIFAR-10: 50k train / 10k test, 32x32 RGB, K=10.

    Training augmentation (``augment=True``, the paper's): random crop 32 with zero padding 4 and a
    horizontal flip, done on whole batches by tensor ops. Per-channel normalization with the
    training set's mean and standard deviation.

    Args:
        data_dir: root under which torchvision's ``cifar-10-batches-py/`` lives.
        download: try torchvision's download when the files are missing.
        **kwargs: the shared options of :class:`~hugnc.data.base.ImageDataModule` (batch sizes,
            ``val_size`` (0: test-as-val, the paper's protocol), seed, long tail, loaders).
    """

    dataset_name = "CIFAR-10"
    fixed_num_classes = 10
    torchvision_class = tv_cifar.CIFAR10
    default_classes: tuple[str, ...] = (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    )
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    crop_padding, flip = 4, True
    image_shape = (3, 32, 32)
    num_train_images = 50_000

    def __init__(
        self,
        data_dir: str,
        download: bool = True,
        num_classes: int = 10,
        batch_size: int = 512,
        augment: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            data_dir, num_classes=num_classes, batch_size=batch_size, augment=augment, **kwargs
        )
        self.download = download

    @classmethod
    def missing_files_problem(cls, options: Mapping[str, Any]) -> str | None:
        folder = Path(options["data_dir"]) / cls.torchvision_class.base_folder
        files = [name for name, _ in cifar_files(cls.torchvision_class)]
        missing = [name for name in files if not (folder / name).is_file()]
        if not missing or options["download"]:
            return None
        return (
            f"{cls.dataset_name} not found in {folder} (missing {', '.join(missing)}) and "
            f"data.download=false; set data.download=true on a machine with internet, or "
            f"extract {cls.torchvision_class.filename} from {cls.torchvision_class.url} in "
            f"{options['data_dir']}"
        )

    def prepare_data(self) -> None:
        ensure_cifar(self.torchvision_class, self.data_dir, self.download)

    def _read(self) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]:
        ensure_cifar(self.torchvision_class, self.data_dir, download=False)
        return read_cifar(self.torchvision_class, self.data_dir)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (fine labels): 50k train / 10k test, 32x32 RGB, K=100; as CIFAR-10 otherwise.

    Args:
        data_dir: root under which torchvision's ``cifar-100-python/`` lives.
    """

    dataset_name = "CIFAR-100"
    fixed_num_classes = 100
    torchvision_class = tv_cifar.CIFAR100
    default_classes = ()
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)

    def __init__(self, data_dir: str, num_classes: int = 100, **kwargs) -> None:
        super().__init__(data_dir, num_classes=num_classes, **kwargs)
