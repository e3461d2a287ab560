"""Data fixtures in the real on-disk formats, written into tmp dirs; nothing is downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torchvision.datasets.cifar as tv_cifar

from hugnc.data.synthetic import write_cifar, write_image_folder, write_mnist

IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> Path:
    """One data dir holding every dataset: synthetic CIFAR-10/100, MNIST and ImageNet fixtures in
    torchvision's/ImageFolder's layouts, and the real Fashion-MNIST (linked)."""
    root = tmp_path_factory.mktemp("all_data")
    write_cifar(root, 10, train_per_class=12, test_per_class=4, seed=1)
    write_cifar(root, 100, train_per_class=6, test_per_class=2, seed=2)
    write_mnist(root / "MNIST" / "raw", num_train=100, num_test=40, seed=3)
    write_image_folder(root / "imagenet", IMAGENET_CLASSES, train_per_class=6, val_per_class=2)
    (root / "FashionMNIST").symlink_to(fashion_mnist_dir / "FashionMNIST")
    return root


@pytest.fixture
def cifar_md5_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CIFAR fixtures are not the real files: torchvision's md5 check (only it) is replaced by
    a check that the file exists."""
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


@pytest.fixture(autouse=True)
def _no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the network: torchvision's download helpers fail at once."""

    def offline(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr("torchvision.datasets.utils.download_url", offline)
    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
