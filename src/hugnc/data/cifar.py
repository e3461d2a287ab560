"""CIFAR-10 and CIFAR-100 (torchvision's python pickles), with the paper's augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision.datasets.cifar as tv_cifar
from torch import Tensor

from hugnc.data.base import DatasetUnavailableError, try_download
from hugnc.data.in_memory import InMemoryImageDataModule


def ensure_cifar(
    dataset_cls: type[tv_cifar.CIFAR10], root: str | os.PathLike, download: bool = True
) -> Path:
    """Complete torchvision's ``<root>/<base_folder>`` of a CIFAR dataset (download if allowed).

    Returns:
        The dataset folder (``cifar-10-batches-py`` or ``cifar-100-python``).
    """
    folder = Path(root) / dataset_cls.base_folder
    meta = (dataset_cls.meta["filename"], dataset_cls.meta["md5"])
    files = [*dataset_cls.train_list, *dataset_cls.test_list, meta]

    def complete() -> bool:
        # Looked up at call time: tests replace torchvision's md5 check (and only that).
        return all(tv_cifar.check_integrity(str(folder / name), md5) for name, md5 in files)

    if complete():
        return folder

    def _download() -> None:
        dataset_cls(str(root), train=True, download=True)

    download_error = try_download(_download if download else None)
    if not download_error and complete():
        return folder
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

    def prepare_data(self) -> None:
        ensure_cifar(self.torchvision_class, self.data_dir, self.download)

    def _read(self) -> tuple[Tensor, Tensor, Tensor, Tensor, list[str] | None]:
        ensure_cifar(self.torchvision_class, self.data_dir, download=False)
        train = self.torchvision_class(self.data_dir, train=True)
        test = self.torchvision_class(self.data_dir, train=False)

        def images(dataset: tv_cifar.CIFAR10) -> Tensor:  # [N, H, W, C] numpy -> [N, C, H, W]
            return torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()

        return (
            images(train),
            torch.as_tensor(train.targets),
            images(test),
            torch.as_tensor(test.targets),
            list(train.classes),
        )


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
