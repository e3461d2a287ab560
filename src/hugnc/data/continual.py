"""Continual-learning splits: any hugnc dataset divided into T tasks of disjoint classes."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from hugnc.arguments import PositiveInt, checked
from hugnc.data.base import ImageDataModule, select_classes
from hugnc.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from hugnc.data.fashion_mnist import FashionMNISTDataModule
from hugnc.data.imagenet import ImageNetDataModule
from hugnc.data.mnist import MNIST5kDataModule, MNISTDataModule
from hugnc.data.on_device import DeviceBatchLoader

#: The datasets a continual split can be made of, by the name of their data config.
DatasetName = Literal["cifar10", "cifar100", "fashion_mnist", "imagenet", "mnist", "mnist5k"]
#: The datasets a continual split can be made of (the keys are :data:`DatasetName`).
DATAMODULES: dict[str, type[ImageDataModule]] = {
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "imagenet": ImageNetDataModule,
    "mnist": MNISTDataModule,
    "mnist5k": MNIST5kDataModule,
}
Scenario = Literal["class", "task"]
SCENARIOS: tuple[str, ...] = typing.get_args(Scenario)


def _split_problem(num_classes: int, num_tasks: int) -> str | None:
    if 1 <= num_tasks <= num_classes:
        return None
    return (
        f"cannot split {num_classes} classes into num_tasks={num_tasks} tasks "
        f"(need 1 <= num_tasks <= {num_classes})"
    )


def split_classes(num_classes: int, num_tasks: int, seed: int = 0) -> list[list[int]]:
    """A seeded random class order cut into ``num_tasks`` tasks (sizes differ by at most one)."""
    if (problem := _split_problem(num_classes, num_tasks)) is not None:
        raise ValueError(problem)
    order = torch.randperm(num_classes, generator=torch.Generator().manual_seed(seed))
    return [chunk.tolist() for chunk in torch.tensor_split(order, num_tasks)]


class ContinualDataModule(LightningDataModule):
    """A dataset split into tasks of disjoint classes, served one task at a time.

    The driver (``python -m hugnc.continual``) calls :meth:`set_task` before fitting on a task and
    sets :attr:`eval_task` before testing on a seen one; loaders hold only that task's classes, with
    their original labels (the model keeps one K-way head).

    Args:
        dataset: name of the underlying dataset (a key of :data:`DATAMODULES`).
        num_tasks: T; the class order is drawn with the dataset's ``seed``.
        scenario: ``class`` (class-incremental: predictions over all K classes) or ``task``
            (task-incremental: the task is known, predictions restricted to its classes).
        **dataset_kwargs: the underlying datamodule's arguments (``data_dir``, ``batch_size``...).
    """

    @checked
    def __init__(
        self,
        dataset: DatasetName,
        num_tasks: PositiveInt = 5,
        scenario: Scenario = "class",
        **dataset_kwargs: Any,
    ) -> None:
        super().__init__()
        self.base = DATAMODULES[dataset](**dataset_kwargs)
        self.dataset = dataset
        self.scenario = scenario
        self.tasks = split_classes(self.base.num_classes, num_tasks, self.base.seed)
        self.task: int | None = None
        self.eval_task: int | None = None

    @classmethod
    def config_problem(cls, options: Mapping[str, Any]) -> str | None:
        """The wrapped dataset's :meth:`~hugnc.data.base.ImageDataModule.config_problem` under the
        keyword arguments that go to it (``options`` less this class's own)."""
        dataset = options.get("dataset")
        datamodule_cls = DATAMODULES.get(dataset) if isinstance(dataset, str) else None
        if datamodule_cls is None:
            return None  # the constructor names the choices
        match options.get("num_classes"), options.get("num_tasks"):
            case int(num_classes), int(num_tasks):
                if (problem := _split_problem(num_classes, num_tasks)) is not None:
                    return f"data: {problem}"
        own = inspect.signature(cls.__init__).parameters
        return datamodule_cls.config_problem({k: v for k, v in options.items() if k not in own})

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def task_incremental(self) -> bool:
        return self.scenario == "task"

    @property
    def num_classes(self) -> int:
        return self.base.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.base.input_shape

    @property
    def classes(self) -> list[str]:
        return self.base.classes

    @property
    def class_counts(self) -> list[int] | None:
        return self.base.class_counts

    @property
    def mean(self) -> Sequence[float]:
        return self.base.mean

    @property
    def std(self) -> Sequence[float]:
        return self.base.std

    @property
    def eval_batch_size(self) -> int:
        return self.base.eval_batch_size

    @property
    def per_device_batch_size(self) -> int:
        self.base.trainer = self.trainer
        return self.base.per_device_batch_size

    def set_task(self, task: int) -> None:
        """Train (and validate) on task ``task`` from the next fit on; test on it by default."""
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"task must be in 0..{self.num_tasks - 1}, got {task}")
        self.task = self.eval_task = task

    def prepare_data(self) -> None:
        self.base.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.base.trainer = self.trainer
        self.base.setup(stage)

    def _task_loader(
        self, split: str, task: int | None, train: bool
    ) -> DataLoader | DeviceBatchLoader:
        if task is None:
            raise RuntimeError(
                "a continual split serves one task at a time and no task is selected: run "
                "split_* data configs with `python -m hugnc.continual` (or call set_task first)"
            )
        self.base.trainer = self.trainer
        dataset = select_classes(getattr(self.base, f"{split}_set"), self.tasks[task])
        return self.base.loader(dataset, train=train)

    def train_dataloader(self) -> DataLoader | DeviceBatchLoader:
        return self._task_loader("train", self.task, train=True)

    def val_dataloader(self) -> DataLoader | DeviceBatchLoader:
        return self._task_loader("val", self.task, train=False)

    def test_dataloader(self) -> DataLoader | DeviceBatchLoader:
        return self._task_loader("test", self.eval_task, train=False)
