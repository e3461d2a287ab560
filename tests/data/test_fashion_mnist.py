"""Fashion-MNIST: offline sources in order (raw files, Debian .gz, download), one clear error."""

from __future__ import annotations

import gzip
import os
import shutil
import time
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch

from hugnc.data import DatasetUnavailableError, FashionMNISTDataModule, ensure_fashion_mnist
from hugnc.data.fashion_mnist import RAW_FILES


def _write_idx_gz(directory: Path, num_images: int, seed: int) -> None:
    """Tiny Fashion-MNIST in the real idx format, gzipped as Debian ships it."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", num_images), ("t10k", num_images // 2)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = (np.arange(count) % 10).astype(np.uint8)
        image_header = np.array([2051, count, 28, 28], dtype=">i4").tobytes()
        label_header = np.array([2049, count], dtype=">i4").tobytes()
        with gzip.open(directory / f"{split}-images-idx3-ubyte.gz", "wb") as f:
            f.write(image_header + images.tobytes())
        with gzip.open(directory / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(label_header + labels.tobytes())


def test_gunzips_debian_files_into_torchvision_layout(tmp_path: Path) -> None:
    debian = tmp_path / "debian"
    _write_idx_gz(debian, num_images=40, seed=0)
    raw = ensure_fashion_mnist(tmp_path / "data", debian, download=False)
    assert raw == tmp_path / "data" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW_FILES)

    datamodule = FashionMNISTDataModule(
        str(tmp_path / "data"), debian_dir=str(debian), val_size=10, batch_size=8
    )
    datamodule.prepare_data()
    datamodule.setup()
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == (
        30,
        10,
        20,
    )
    images, labels = next(iter(datamodule.train_dataloader()))
    assert (
        images.shape == (8, 1, 28, 28)
        and images.dtype == torch.float32
        and labels.dtype == torch.int64
    )


def test_existing_raw_files_are_kept(tmp_path: Path) -> None:
    debian = tmp_path / "debian"
    _write_idx_gz(debian, num_images=20, seed=0)
    raw = ensure_fashion_mnist(tmp_path / "data", debian, download=False)
    marker = (raw / RAW_FILES[0]).stat().st_mtime_ns
    _write_idx_gz(debian, num_images=20, seed=1)  # a different source must not overwrite
    ensure_fashion_mnist(tmp_path / "data", debian, download=False)
    assert (raw / RAW_FILES[0]).stat().st_mtime_ns == marker


def test_jobs_preparing_one_fresh_data_dir_side_by_side_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sweep jobs started together (Ray, SLURM) gunzip the same files at once: a job that
    finishes first must not move away the other's half-written file."""
    debian = tmp_path / "debian"
    _write_idx_gz(debian, num_images=40, seed=0)
    root = tmp_path / "data"
    copy = shutil.copyfileobj
    other_job_done = []

    def copy_while_another_job_prepares(source: BinaryIO, target: BinaryIO) -> None:
        copy(source, target)
        if not other_job_done:  # mid-write of the first file: the other job runs to the end
            other_job_done.append(True)
            with monkeypatch.context() as other_process:
                other_process.setattr(os, "getpid", lambda: os.getppid())
                ensure_fashion_mnist(root, debian, download=False)

    monkeypatch.setattr(shutil, "copyfileobj", copy_while_another_job_prepares)
    raw = ensure_fashion_mnist(root, debian, download=False)
    assert other_job_done
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW_FILES)  # no staging file left
    for name in RAW_FILES:
        with gzip.open(debian / f"{name}.gz", "rb") as source:
            assert (raw / name).read_bytes() == source.read()


def test_missing_everywhere_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetUnavailableError) as error:
        ensure_fashion_mnist(tmp_path / "data", tmp_path / "nowhere", download=False)
    message = str(error.value)
    assert str(tmp_path / "data" / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message and "internet" in message


def test_failed_download_is_reported_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def offline_download(*args, **kwargs):
        calls.append(args)
        raise OSError("Network is unreachable")

    monkeypatch.setattr("hugnc.data.fashion_mnist.datasets.FashionMNIST", offline_download)
    start = time.monotonic()
    with pytest.raises(
        DatasetUnavailableError, match="download failed: OSError: Network is unreachable"
    ):
        ensure_fashion_mnist(tmp_path / "data", tmp_path / "nowhere", download=True)
    assert len(calls) == 1 and time.monotonic() - start < 5


@pytest.mark.real_data
def test_real_split_is_seeded_disjoint_and_complete(fashion_mnist_dir: Path) -> None:
    def split(seed: int) -> FashionMNISTDataModule:
        datamodule = FashionMNISTDataModule(
            str(fashion_mnist_dir), val_size=5000, seed=seed, download=False
        )
        datamodule.setup()
        return datamodule

    first, again, other = split(0), split(0), split(1)
    assert torch.equal(first.train_set.indices, again.train_set.indices)
    assert not torch.equal(first.train_set.indices, other.train_set.indices)
    train, val = set(first.train_set.indices.tolist()), set(first.val_set.indices.tolist())
    assert len(train) == 55000 and len(val) == 5000 and not train & val
    assert len(first.test_set) == 10000
    images = torch.stack([first.val_set[i][0] for i in range(2000)])
    # Normalized with the training-set statistics: roughly zero mean, unit std.
    assert abs(images.mean().item()) < 0.05 and abs(images.std().item() - 1) < 0.05


def test_bad_arguments_fail_early(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="10 classes"):
        FashionMNISTDataModule(str(tmp_path), num_classes=100)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        FashionMNISTDataModule(str(tmp_path), batch_size=0)
