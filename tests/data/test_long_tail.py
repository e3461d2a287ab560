"""Long-tailed counts (LDAM's numbers, exactly), the per-class sampler and the LT datamodules."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from hugnc.data import (
    CIFAR10DataModule,
    FashionMNISTDataModule,
    long_tail_counts,
    sample_per_class,
)


def test_cifar10_lt_ratio_100_counts_are_ldams() -> None:
    counts = long_tail_counts(5000, 10, "exp", 0.01)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


def test_cifar100_lt_ratio_100_total_is_ldams() -> None:
    counts = long_tail_counts(500, 100, "exp", 0.01)
    assert sum(counts) == 10847
    assert counts[0] == 500 and counts[-1] == 5
    assert all(a >= b for a, b in itertools.pairwise(counts))


def test_cifar10_lt_other_ratios() -> None:
    # LDAM's CIFAR-10-LT at ratio 10 and 50 (int() truncation, not rounding).
    assert long_tail_counts(5000, 10, "exp", 0.1) == [
        5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500
    ]  # fmt: skip
    assert sum(long_tail_counts(5000, 10, "exp", 0.02)) == 13996


def test_step_counts() -> None:
    assert long_tail_counts(5000, 10, "step", 0.01) == [5000] * 5 + [50] * 5
    # Odd K: the first K // 2 classes are the head, all the others the tail.
    assert long_tail_counts(100, 5, "step", 0.1) == [100, 100, 10, 10, 10]


def test_imb_factor_one_is_balanced() -> None:
    assert long_tail_counts(500, 100, "exp", 1.0) == [500] * 100
    assert long_tail_counts(500, 100, "step", 1) == [500] * 100


@pytest.mark.parametrize("factor", [0, -0.5, 1.5, 100, float("nan"), "0.01"])
def test_imb_factor_outside_unit_interval_is_one_clear_error(factor) -> None:
    with pytest.raises(ValueError, match=r"imb_factor must be in \(0, 1\]"):
        long_tail_counts(5000, 10, "exp", factor)


def test_unknown_imb_type_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="imb_type must be one of exp, step, got 'linear'"):
        long_tail_counts(5000, 10, "linear", 0.01)


def test_sample_per_class_takes_exact_counts_seeded() -> None:
    targets = torch.arange(5).repeat_interleave(20)[torch.randperm(100)]
    counts = [20, 7, 3, 1, 0]
    picked = sample_per_class(targets, counts, torch.Generator().manual_seed(0))
    assert torch.equal(picked, picked.sort().values) and len(picked.unique()) == len(picked)
    assert torch.bincount(targets[picked], minlength=5).tolist() == counts
    again = sample_per_class(targets, counts, torch.Generator().manual_seed(0))
    other = sample_per_class(targets, counts, torch.Generator().manual_seed(1))
    assert torch.equal(picked, again) and not torch.equal(picked, other)


def test_sample_per_class_refuses_more_than_available() -> None:
    targets = torch.tensor([0, 0, 1])
    with pytest.raises(ValueError, match=r"classes \[1\] have \[1\] samples"):
        sample_per_class(targets, [1, 2])


@pytest.mark.real_data
def test_fashion_mnist_lt_on_real_data(fashion_mnist_dir: Path) -> None:
    def build(seed: int) -> FashionMNISTDataModule:
        datamodule = FashionMNISTDataModule(
            str(fashion_mnist_dir), download=False, val_size=0, imb_factor=0.01, seed=seed
        )
        datamodule.setup()
        return datamodule

    datamodule = build(0)
    expected = long_tail_counts(6000, 10, "exp", 0.01)
    assert expected == [6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert datamodule.class_counts == expected
    assert torch.bincount(datamodule.train_set.targets).tolist() == expected
    # The test set stays balanced.
    assert torch.bincount(datamodule.test_set.targets).tolist() == [1000] * 10
    assert datamodule.val_set is datamodule.test_set
    # Seeded: same images for the same seed, others for another.
    assert torch.equal(datamodule.train_set.indices, build(0).train_set.indices)
    assert not torch.equal(datamodule.train_set.indices, build(1).train_set.indices)


def test_lt_after_validation_split_uses_smallest_class(data_root: Path, cifar_md5_ignored) -> None:
    # 12 images per class; holding 20 out leaves a smallest class n_max <= 12.
    datamodule = CIFAR10DataModule(
        str(data_root), download=False, val_size=20, imb_type="step", imb_factor=0.5
    )
    datamodule.setup()
    train, val = datamodule.train_set, datamodule.val_set
    remaining = torch.ones(len(train.all_targets), dtype=torch.bool)
    remaining[val.indices] = False
    n_max = int(torch.bincount(train.all_targets[remaining]).min())
    assert n_max < 12
    assert datamodule.class_counts == long_tail_counts(n_max, 10, "step", 0.5)
    assert torch.bincount(train.targets, minlength=10).tolist() == datamodule.class_counts
    assert not set(val.indices.tolist()) & set(train.indices.tolist())
    assert len(val) == 20


def test_lt_leaving_a_class_empty_is_one_clear_error(data_root: Path, cifar_md5_ignored) -> None:
    datamodule = CIFAR10DataModule(str(data_root), download=False, imb_factor=0.01)
    with pytest.raises(ValueError, match="leaves classes without training images"):
        datamodule.setup()


def test_bad_imb_factor_fails_at_construction(data_root: Path) -> None:
    with pytest.raises(ValueError, match=r"imb_factor must be in \(0, 1\]"):
        CIFAR10DataModule(str(data_root), imb_factor=2.0)
