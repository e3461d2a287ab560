"""Continual splits: a seeded class partition served one task at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hugnc.data import ContinualDataModule, split_classes


def test_split_classes_is_a_seeded_partition() -> None:
    tasks = split_classes(10, 5, seed=0)
    assert len(tasks) == 5 and all(len(task) == 2 for task in tasks)
    assert sorted(c for task in tasks for c in task) == list(range(10))
    assert split_classes(10, 5, seed=0) == tasks
    assert split_classes(10, 5, seed=1) != tasks
    assert [len(task) for task in split_classes(100, 3)] == [34, 33, 33]


@pytest.mark.parametrize("num_tasks", [0, 11])
def test_more_tasks_than_classes_is_one_clear_error(num_tasks: int) -> None:
    with pytest.raises(ValueError, match=f"cannot split 10 classes into num_tasks={num_tasks}"):
        split_classes(10, num_tasks)


def test_unknown_dataset_and_scenario_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"dataset must be one of cifar10, cifar100, fash.*got 'svhn'"
    ):
        ContinualDataModule("svhn", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="scenario must be one of class, task, got 'domain'"):
        ContinualDataModule("cifar10", scenario="domain", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="cannot split 10 classes into num_tasks=20"):
        ContinualDataModule("cifar10", num_tasks=20, data_dir=str(tmp_path))


def test_loaders_serve_one_task_at_a_time(data_root: Path, cifar_md5_ignored) -> None:
    datamodule = ContinualDataModule(
        "cifar10", num_tasks=5, data_dir=str(data_root), download=False, batch_size=4, seed=3
    )
    assert datamodule.tasks == split_classes(10, 5, seed=3)
    assert (datamodule.num_classes, datamodule.input_shape) == (10, (3, 32, 32))
    datamodule.prepare_data()
    datamodule.setup()
    with pytest.raises(RuntimeError, match=r"python -m hugnc\.continual"):
        datamodule.train_dataloader()
    datamodule.set_task(2)
    classes = set(datamodule.tasks[2])
    train_targets = torch.cat([targets for _, targets in datamodule.train_dataloader()])
    assert set(train_targets.tolist()) == classes and len(train_targets) == 24
    test_targets = torch.cat([targets for _, targets in datamodule.test_dataloader()])
    assert set(test_targets.tolist()) == classes and len(test_targets) == 8
    datamodule.eval_task = 0
    test_targets = torch.cat([targets for _, targets in datamodule.test_dataloader()])
    assert set(test_targets.tolist()) == set(datamodule.tasks[0])
    with pytest.raises(ValueError, match=r"task must be in 0\.\.4"):
        datamodule.set_task(5)
