"""ImageNet (or any ImageFolder-layout dataset), optionally restricted to a class list."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import datasets, transforms

from hugnc.data.base import ImageDataModule
from hugnc.data.errors import DataCorruptError, DatasetUnavailableError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT = "<data_dir>/train/<wnid>/*.JPEG and <data_dir>/val/<wnid>/*.JPEG"
#: How a deleted image comes back.
REFETCH = "from the ILSVRC2012 archives of image-net.org, or wherever this folder was copied from"


def imagenet_layout_problem(root: Path) -> str | None:
    """Why ``root`` is not an ImageNet folder (``train/`` or ``val/`` missing), or ``None``."""
    missing = [str(d) for d in (root / "train", root / "val") if not d.is_dir()]
    if not missing:
        return None
    return (
        f"ImageNet layout not found: missing {', '.join(missing)}. Expected {LAYOUT} "
        f"with data_dir={root}. ImageNet cannot be downloaded automatically: get "
        "ILSVRC2012 from image-net.org and put the validation images into class folders "
        "(e.g. with the valprep.sh script of the PyTorch ImageNet example)."
    )


def load_rgb_image(path: str) -> Image.Image:
    """The image file ``path`` decoded as RGB (the ImageFolder's loader; runs in the DataLoader
    workers, one image at a time).

    Raises:
        DataCorruptError: naming ``path`` when PIL cannot identify or decode it.
    """
    with open(path, "rb") as f:  # a missing or unreadable file is not a damaged one: OSError
        try:
            # Decoding happens in convert: a JPEG cut after its header opens, then fails there.
            return Image.open(f).convert("RGB")
        except UnidentifiedImageError:
            raise DataCorruptError.for_file(path, "not an image PIL can read", REFETCH) from None
        except (OSError, SyntaxError, ValueError) as error:  # what PIL's parsers and decoders raise
            problem = f"cannot be decoded, truncated or damaged: {error}"
            raise DataCorruptError.for_file(path, problem, REFETCH) from None


def read_class_list(path: str | Path) -> list[str]:
    """Class folder names, one per line (first word; blank lines and ``#`` comments skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ValueError(f"cannot read the class list data.class_list={path}: {error}") from None
    names = [line.split()[0] for line in lines if line.strip() and not line.startswith("#")]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if not names or duplicates:
        raise ValueError(
            f"class list {path} must name distinct class folders, one per line; "
            f"{'it is empty' if not names else f'duplicates: {duplicates}'}"
        )
    return names


class _ClassListImageFolder(datasets.ImageFolder):
    """ImageFolder over the given class folders only, labelled in the given order."""

    def __init__(self, root: str, classes: Sequence[str], transform) -> None:
        self._class_list = list(classes)
        super().__init__(root, transform=transform, loader=load_rgb_image)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self._class_list, {name: i for i, name in enumerate(self._class_list)}


class ImageNetDataModule(ImageDataModule):
    """ImageNet in the ImageFolder layout ``<data_dir>/{train,val}/<wnid>/*.JPEG``.

    ``val/`` is the test set; ``val_size`` > 0 holds a seeded validation split out of ``train/``
    (0 validates on ``val/``). Training: RandomResizedCrop(``image_size``) + horizontal flip;
    evaluation: Resize(``resize_size``) + CenterCrop(``image_size``); ImageNet normalization.

    Args:
        data_dir: the root holding ``train/`` and ``val/``.
        num_classes: number of classes used (1000; the class list's length when given).
        class_list: optional file of class folder names, one per line (e.g. ImageNet-100); labels
            follow its order. ``None``: every folder of ``train/``, sorted.
        image_size, resize_size: crop and resize sizes.
        **kwargs: the shared options of :class:`~hugnc.data.base.ImageDataModule` (decoding JPEGs
            needs many workers: the config sets num_workers, pinned memory, persistent workers).
    """

    dataset_name = "ImageNet"
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self,
        data_dir: str,
        num_classes: int = 1000,
        class_list: str | None = None,
        image_size: int = 224,
        resize_size: int = 256,
        batch_size: int = 256,
        augment: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(
            data_dir, num_classes=num_classes, batch_size=batch_size, augment=augment, **kwargs
        )
        if not 0 < image_size <= resize_size:
            raise ValueError(f"need 0 < image_size <= resize_size, got {image_size}, {resize_size}")
        self.class_list = class_list
        self.image_size = image_size
        self.resize_size = resize_size
        if class_list is not None:
            self.classes = read_class_list(class_list)
            self._check_num_classes(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.image_size, self.image_size)

    def _check_num_classes(self, classes: Sequence[str]) -> None:
        if len(classes) != self.num_classes:
            source = f"the class list {self.class_list}" if self.class_list else "train/"
            raise ValueError(
                f"{source} has {len(classes)} classes but data.num_classes={self.num_classes}"
            )

    def _split_dirs(self) -> tuple[Path, Path]:
        root = Path(self.data_dir)
        problem = imagenet_layout_problem(root)
        if problem:
            raise DatasetUnavailableError(problem)
        return root / "train", root / "val"

    @classmethod
    def missing_files_problem(cls, options: Mapping[str, Any]) -> str | None:
        root = Path(options["data_dir"])
        problem = imagenet_layout_problem(root)
        if problem is None and not any(entry.is_dir() for entry in (root / "train").iterdir()):
            problem = f"no class folders in {root / 'train'}; expected {LAYOUT}"
        class_list = options.get("class_list")
        if problem is None and class_list is not None and not Path(class_list).is_file():
            problem = f"the class list data.class_list={class_list} is not a file"
        return problem

    def prepare_data(self) -> None:
        self._split_dirs()

    def _class_names(self, train_dir: Path) -> list[str]:
        if self.class_list is not None:
            return list(self.classes)
        names = sorted(entry.name for entry in train_dir.iterdir() if entry.is_dir())
        if not names:
            raise DatasetUnavailableError(f"no class folders in {train_dir}; expected {LAYOUT}")
        self._check_num_classes(names)
        return names

    def _folder(self, root: Path, classes: Sequence[str], transform) -> datasets.ImageFolder:
        try:
            return _ClassListImageFolder(str(root), classes, transform)
        except FileNotFoundError as error:  # empty or missing class folders
            raise ValueError(
                f"{root}: {error} Every class needs a non-empty folder ({LAYOUT})."
            ) from None

    def _load(self) -> tuple[Dataset, Dataset, Dataset, list[str] | None]:
        train_dir, val_dir = self._split_dirs()
        classes = self._class_names(train_dir)
        normalize = [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        eval_transform = transforms.Compose(
            [
                transforms.Resize(self.resize_size),
                transforms.CenterCrop(self.image_size),
                *normalize,
            ]
        )
        train_transform = (
            transforms.Compose(
                [
                    transforms.RandomResizedCrop(self.image_size),
                    transforms.RandomHorizontalFlip(),
                    *normalize,
                ]
            )
            if self.augment
            else eval_transform
        )
        train = self._folder(train_dir, classes, train_transform)
        eval_train = copy.copy(train)  # same file list, evaluation transform
        eval_train.transform = eval_transform
        test = self._folder(val_dir, classes, eval_transform)
        return train, eval_train, test, classes
