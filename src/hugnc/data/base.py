"""The shared LightningDataModule: validation split, long-tail subsampling, class subsets, loaders.

Every dataset of hugnc is an :class:`ImageDataModule` subclass that only says how to read its files
(:meth:`ImageDataModule._load`) and how to obtain them (:meth:`ImageDataModule.prepare_data`).
"""

from __future__ import annotations

import importlib
import inspect
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Gt, Le
from lightning import LightningDataModule
from lightning.fabric.utilities.seed import pl_worker_init_function
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset

from hugnc.arguments import NonNegativeInt, PositiveInt, checked
from hugnc.data.long_tail import ImbType, long_tail_counts, sample_per_class
from hugnc.data.on_device import DeviceBatchLoader
from hugnc.host_memory import release_freed_host_memory

#: Seconds a download may wait on a silent network before it gives up (no hanging retries).
DOWNLOAD_TIMEOUT = 20.0


def init_loader_worker(worker_id: int) -> None:
    """DataLoader worker set-up: Lightning's worker seeding (as it would install without a
    ``worker_init_fn`` of ours), and the C library's default allocator: a worker inherits the
    training process's ``retain_host_memory`` setting with the fork, and would keep its peak
    heap for the whole run."""
    if os.environ.get("PL_SEED_WORKERS") == "1":
        pl_worker_init_function(worker_id)
    release_freed_host_memory()


@contextmanager
def network_timeout(seconds: float = DOWNLOAD_TIMEOUT) -> Iterator[None]:
    """Bound every socket operation (torchvision's downloads set no timeout of their own)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def try_download(download: Callable[[], object] | None) -> str:
    """Run ``download`` with a network timeout; return ``""`` or why it did not work."""
    if download is None:
        return "download disabled (download=false)"
    try:
        with network_timeout():
            download()
    except Exception as error:  # torchvision raises various network errors
        return f"download failed: {type(error).__name__}: {error}"
    return ""


def val_size_problem(val_size: int, num_train: int) -> str | None:
    """Why ``val_size`` of the ``num_train`` training images cannot be held out for validation
    (one line), or ``None``."""
    if val_size < num_train:
        return None
    return (
        f"data.val_size={val_size} leaves no training images ({num_train} in all); "
        f"use a data.val_size below {num_train} (0 validates on the test set)"
    )


def batch_split_problem(batch_size: int, world_size: int, where: str = "") -> str | None:
    """Why the global ``batch_size`` cannot be split into equal per-process batches over
    ``world_size`` DDP processes (one line), or ``None``.

    Args:
        where: how the world size comes about, for the message (e.g. the trainer settings).
    """
    if batch_size % world_size == 0:
        return None
    # The nearest multiple, never 0.
    suggestion = max(world_size, round(batch_size / world_size) * world_size)
    source = f" ({where})" if where else ""
    return (
        f"data.batch_size={batch_size} is not divisible by the world size {world_size}{source}: "
        f"the global batch is split evenly over the DDP processes; use a multiple of "
        f"{world_size}, e.g. data.batch_size={suggestion}"
    )


def _device_count(devices: Any) -> int | None:
    """The number of processes per node that Lightning starts for ``trainer.devices``, when it
    follows from the value alone: an int, a list of device ids, ``"2"`` or ``"0,1"``. ``None`` for
    ``"auto"`` and ``-1`` (the machine's device count, known only to Lightning at run time)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices >= 1 else None
    if isinstance(devices, str):
        if "," in devices:
            return len([part for part in devices.split(",") if part.strip()]) or None
        return int(devices) if devices.strip().isdigit() and int(devices) >= 1 else None
    if isinstance(devices, Sequence):
        return len(devices) or None
    return None


def global_batch_problem(cfg: Mapping[str, Any]) -> str | None:
    """Why ``data.batch_size`` cannot be split over the run's DDP processes, from the composed
    config alone (its ``data`` and ``trainer`` nodes), or ``None``.

    The world size is ``trainer.devices * trainer.num_nodes`` when ``devices`` says how many
    (an int, a list of ids, ``"0,1"``); with ``"auto"`` or ``-1`` it depends on the machine and
    this returns ``None`` (:attr:`ImageDataModule.per_device_batch_size` still refuses at run
    time). Cheap: no import, nothing read.

    Returns:
        One line naming both settings and a batch size that works, or ``None``.
    """
    data, trainer = cfg.get("data"), cfg.get("trainer")
    if not isinstance(data, Mapping) or not isinstance(trainer, Mapping):
        return None
    batch_size, num_nodes = data.get("batch_size"), trainer.get("num_nodes", 1)
    devices = _device_count(trainer.get("devices", 1))
    if not isinstance(batch_size, int) or not isinstance(num_nodes, int) or devices is None:
        return None  # a value of the wrong type is the schema check's to report
    where = f"trainer.devices={trainer.get('devices')} x trainer.num_nodes={num_nodes}"
    return batch_split_problem(batch_size, devices * num_nodes, where)


def availability_problem(data_cfg: Mapping[str, Any]) -> str | None:
    """Whether the run's data can be had, from the composed config's ``data`` node alone: cheap
    enough to call before Hydra makes a run directory.

    Looks up the datamodule class of ``_target_`` and asks its
    :meth:`ImageDataModule.config_problem` (a continual split asks the dataset it wraps): a
    validation split larger than the training set, or files that are neither present nor
    obtainable. Only stats files: never reads one, never touches the network (an allowed download
    counts as obtainable; whether it works shows in ``prepare_data``).

    Args:
        data_cfg: the ``data`` node (a ``DictConfig`` still attached to its config, so that
            ``${paths.data_dir}`` resolves, or a plain mapping): ``_target_`` and the datamodule's
            keyword arguments.

    Returns:
        One line (``<dataset> not found in <dir> (...); <what to do>``, or the split's problem),
        or ``None``: no problem found, or a ``_target_`` this check does not know (not
        importable, not a hugnc datamodule: the schema check reports those).
    """
    target = data_cfg.get("_target_")
    if not isinstance(target, str) or "." not in target:
        return None
    module_name, _, name = target.rpartition(".")
    try:
        datamodule_cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        return None
    check = getattr(datamodule_cls, "config_problem", None)
    if not callable(check):
        return None
    # Reading each key resolves its interpolations (data_dir: ${paths.data_dir}).
    options = {str(key): data_cfg[key] for key in data_cfg if key != "_target_"}
    return check(options)


def run_seed() -> int:
    """The run's seed (``seed_everything`` exports it as ``PL_GLOBAL_SEED``; 0 without one): seeds
    the training order of both data paths."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def dataset_targets(dataset: Dataset) -> Tensor:
    """The integer labels of ``dataset`` (its ``targets`` attribute) as an int64 tensor."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"{type(dataset).__name__} has no `targets`: cannot split it by class")
    return torch.as_tensor(targets, dtype=torch.long)


class TargetSubset(Subset):
    """A :class:`~torch.utils.data.Subset` that keeps ``targets`` (so it can be split again)."""

    def __init__(self, dataset: Dataset, indices: Tensor) -> None:
        indices = torch.as_tensor(indices, dtype=torch.long)
        super().__init__(dataset, indices.tolist())
        self.targets = dataset_targets(dataset)[indices]

    def subset(self, positions: Tensor) -> TargetSubset:
        return TargetSubset(self.dataset, torch.as_tensor(self.indices)[positions])


def subset(dataset: Dataset, positions: Tensor) -> Dataset:
    """The samples of ``dataset`` at ``positions``, in that order, keeping ``targets``."""
    if hasattr(dataset, "subset"):
        return dataset.subset(torch.as_tensor(positions, dtype=torch.long))
    return TargetSubset(dataset, positions)


def select_classes(dataset: Dataset, classes: Sequence[int]) -> Dataset:
    """The samples of ``dataset`` whose label is in ``classes`` (original labels kept)."""
    keep = torch.isin(dataset_targets(dataset), torch.as_tensor(list(classes), dtype=torch.long))
    return subset(dataset, keep.nonzero().flatten())


class ImageDataModule(LightningDataModule):
    """Shared behaviour of every hugnc datamodule.

    Subclasses define ``input_shape`` and ``_load()``; ``num_classes``, ``classes``,
    ``per_device_batch_size``, the seeded validation split, the long-tailed subsampling, the
    per-class counts and the loaders live here.

    Args:
        data_dir: root of the dataset files.
        num_classes: K; checked against the dataset.
        batch_size: training batch size (global: divided by the world size under DDP).
        eval_batch_size: validation/test batch size (defaults to ``batch_size``).
        val_size: images held out of the training set for validation (seeded); 0 validates on the
            test set (the protocol of the HUG and LDAM papers).
        seed: seeds every random choice of the data: validation split, long-tail subset, class
            order of continual splits (independent of the training seed).
        augment: the dataset's training augmentation.
        train_subset: use only the first N training images after the split (tests, quick checks).
        imb_type, imb_factor: long-tailed training set (``exp`` or ``step``, 1 / imbalance ratio);
            ``imb_factor=None`` keeps the dataset as it is. See :func:`long_tail_counts`; ``n_max``
            is the smallest class of the training part (after the validation split).
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        on_device: hold the whole dataset on the training device and cut, augment and normalize
            batches there (:mod:`hugnc.data.on_device`); only datamodules with
            ``supports_on_device`` (the in-memory datasets) have this path. ``"auto"``: this path
            where the datamodule has it, else the DataLoader (the GPU trainers' default).
    """

    #: Name in messages.
    dataset_name: str = "dataset"
    #: K when the dataset fixes it (checked against ``num_classes``); ``None`` when configurable.
    fixed_num_classes: int | None = None
    #: Class names before the files are read (replaced by the dataset's own names in setup).
    default_classes: Sequence[str] = ()
    #: Whether ``on_device=True`` is possible (the dataset is one uint8 tensor).
    supports_on_device: bool = False
    #: Per-channel mean and std of pixels in [0, 1]: images come out as ``(x - mean) / std``
    #: (attacks and pictures undo it).
    mean: Sequence[float] = ()
    std: Sequence[float] = ()
    #: Training images in the dataset's files (before the validation split) when the dataset fixes
    #: it: ``data.val_size`` is then checked before anything is read. ``None``: known once read.
    num_train_images: int | None = None

    @checked
    def __init__(
        self,
        data_dir: str,
        num_classes: Annotated[int, Ge(2)],
        batch_size: PositiveInt = 256,
        eval_batch_size: PositiveInt | None = None,
        val_size: NonNegativeInt = 0,
        seed: NonNegativeInt = 0,
        augment: bool = False,
        train_subset: PositiveInt | None = None,
        imb_type: ImbType = "exp",
        imb_factor: Annotated[float, Gt(0), Le(1)] | None = None,
        num_workers: NonNegativeInt = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        on_device: Literal["auto"] | bool = False,
    ) -> None:
        super().__init__()
        if on_device == "auto":
            on_device = self.supports_on_device
        if on_device and not self.supports_on_device:
            raise ValueError(
                f"{self.dataset_name} has no on-device data path (data.on_device=true): it exists "
                "only for datasets held in memory as one uint8 tensor (CIFAR-10/100, MNIST, "
                "MNIST-5k, Fashion-MNIST and their long-tailed and split variants). "
                "Set data.on_device=false."
            )
        if self.fixed_num_classes is not None and num_classes != self.fixed_num_classes:
            raise ValueError(
                f"{self.dataset_name} has {self.fixed_num_classes} classes, "
                f"data.num_classes={num_classes}"
            )
        self.data_dir = data_dir
        self.num_classes = num_classes
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.val_size = val_size
        self.seed = seed
        self.augment = augment
        self.train_subset = train_subset
        self.imb_type = imb_type
        self.imb_factor = imb_factor
        self.on_device = on_device
        self.loader_options: dict[str, Any] = {
            "num_workers": num_workers,
            "pin_memory": pin_memory,
            "persistent_workers": persistent_workers and num_workers > 0,
        }
        self.classes: list[str] = list(self.default_classes) or [str(i) for i in range(num_classes)]
        self.class_counts: list[int] | None = None
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        raise NotImplementedError

    @classmethod
    def constructor_defaults(cls) -> dict[str, Any]:
        """The default of every constructor argument of ``cls`` (a subclass's own default, e.g.
        Fashion-MNIST's ``val_size=5000``, over its base's): what a config that omits a key gets."""
        defaults: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):  # the most derived class last: its defaults win
            init = klass.__dict__.get("__init__")
            if init is None or not issubclass(klass, ImageDataModule):
                continue
            for parameter in inspect.signature(init).parameters.values():
                if parameter.default is not inspect.Parameter.empty:
                    defaults[parameter.name] = parameter.default
        return defaults

    @classmethod
    def train_size(cls, options: Mapping[str, Any]) -> int | None:
        """Training images in the files (before the validation split) under the constructor
        arguments ``options``, or ``None`` when only reading the files tells."""
        return cls.num_train_images

    @classmethod
    def missing_files_problem(cls, options: Mapping[str, Any]) -> str | None:
        """Why the dataset's files are neither present nor obtainable under the constructor
        arguments ``options`` (one line: what is missing where, and what to do), or ``None``.

        Checks existence only (a stat per file, never the network, never a file's content): a
        download that is allowed counts as obtainable, and fails later, in ``prepare_data``, if the
        network does. Subclasses that read files override it; the default knows of none.
        """
        return None

    @classmethod
    def config_problem(cls, options: Mapping[str, Any]) -> str | None:
        """The first problem that the constructor arguments ``options`` (those not given take
        their defaults) will meet before training: a validation split that leaves no training
        images, then files that are missing and cannot be fetched. One line, or ``None``."""
        options = cls.constructor_defaults() | dict(options)
        num_train, val_size = cls.train_size(options), options.get("val_size")
        if num_train is not None and isinstance(val_size, int):
            too_large = val_size_problem(val_size, num_train)
            if too_large:
                return f"{cls.dataset_name}: {too_large}"
        return cls.missing_files_problem(options)

    def _load(self) -> tuple[Dataset, Dataset, Dataset, list[str] | None]:
        """Read the files: (train with training transform, the same images with the evaluation
        transform, test, class names or ``None``). Both train datasets have ``targets``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.test_set is not None:
            return
        train_full, eval_full, test_set, classes = self._load()
        targets = dataset_targets(train_full)
        self._check_labels(targets, "training")
        self._check_labels(dataset_targets(test_set), "test")
        if classes is not None:
            self.classes = list(classes)
        too_large = val_size_problem(self.val_size, len(targets))
        if too_large:
            raise ValueError(too_large)
        generator = torch.Generator().manual_seed(self.seed)
        # The split of random_split(range(n), [n - val_size, val_size], generator).
        perm = torch.randperm(len(targets), generator=generator)
        train_idx, val_idx = perm[: len(perm) - self.val_size], perm[len(perm) - self.val_size :]
        if self.imb_factor is not None:
            available = torch.bincount(targets[train_idx], minlength=self.num_classes)
            n_max = int(available.min())
            counts = long_tail_counts(n_max, self.num_classes, self.imb_type, self.imb_factor)
            if min(counts) < 1:
                raise ValueError(
                    f"imb_factor={self.imb_factor} with {n_max} images in the smallest class "
                    f"leaves classes without training images: counts {counts}"
                )
            train_idx = train_idx[sample_per_class(targets[train_idx], counts, generator)]
        train_idx = train_idx[: self.train_subset]
        self.train_set = subset(train_full, train_idx)
        self.val_set = subset(eval_full, val_idx) if self.val_size > 0 else test_set
        self.test_set = test_set
        self.class_counts = torch.bincount(targets[train_idx], minlength=self.num_classes).tolist()
        self._log_class_counts()

    def _check_labels(self, targets: Tensor, split: str) -> None:
        if len(targets) == 0:
            raise ValueError(f"the {split} set in {self.data_dir} is empty")
        if int(targets.min()) < 0 or int(targets.max()) >= self.num_classes:
            raise ValueError(
                f"{split} labels span {int(targets.min())}..{int(targets.max())}, "
                f"but data.num_classes={self.num_classes}"
            )

    def _log_class_counts(self) -> None:
        """Per-class training counts to the console and as a hyperparameter of every logger."""
        rank_zero_info(f"{type(self).__name__}: training images per class {self.class_counts}")
        if self.trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"data/class_counts": self.class_counts})

    @property
    def per_device_batch_size(self) -> int:
        world_size = self.trainer.world_size if self.trainer is not None else 1
        problem = batch_split_problem(self.batch_size, world_size)
        if problem:
            raise ValueError(problem)
        return self.batch_size // world_size

    def loader(self, dataset: Dataset, train: bool) -> DataLoader | DeviceBatchLoader:
        """A DataLoader with this datamodule's settings (shuffled at the per-device batch size for
        training). A dataset may batch itself (``__getitems__``) and provide ``collate_fn``.

        Training always uses a DistributedSampler (one replica without DDP), seeded with the run's
        seed and reshuffled per epoch from ``seed + epoch``: rank r reads every world_size-th index
        of one global permutation, so the union of the ranks' batches at a step is exactly the
        single-process batch (DDP == one process), and a run resumed from a checkpoint sees the
        same order as an uninterrupted one.

        In-memory datamodules with ``on_device=True`` override this with a
        :class:`~hugnc.data.on_device.DeviceBatchLoader` giving the same order.
        """
        sampler: Sampler | None = None
        trainer = self.trainer
        if not train and trainer is not None and trainer.world_size > 1:
            # Lightning would give evaluation loaders a padding DistributedSampler: with N not a
            # multiple of the world size, some test samples would count twice in test/acc and
            # test/nc/*. Each sample goes to exactly one rank instead.
            sampler = UnrepeatedDistributedSampler(
                dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
            )
        if train:
            sampler = DistributedSampler(
                dataset,
                num_replicas=trainer.world_size if trainer is not None else 1,
                rank=trainer.global_rank if trainer is not None else 0,
                shuffle=True,
                seed=run_seed(),
            )
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch_size if train else self.eval_batch_size,
            sampler=sampler,
            drop_last=False,
            collate_fn=getattr(dataset, "collate_fn", None),
            worker_init_fn=init_loader_worker,
            **self.loader_options,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatchLoader:
        assert self.train_set is not None, "setup() builds the datasets"
        return self.loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | DeviceBatchLoader:
        assert self.val_set is not None, "setup() builds the datasets"
        return self.loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader | DeviceBatchLoader:
        assert self.test_set is not None, "setup() builds the datasets"
        return self.loader(self.test_set, train=False)
