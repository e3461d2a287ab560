"""The on-device data path (``data.on_device=true``) against the DataLoader path and torchvision:
same samples per epoch, same order, same augmentation statistics, seeded, DDP-sharded."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.cli_runs import TINY_EQUIVALENCE_RUN, final_weights, run_hugnc
from hydra.utils import instantiate
from lightning import Callback, LightningModule, Trainer, seed_everything
from scipy import stats
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from torchvision import transforms

from hugnc.continual import train_continual
from hugnc.data import (
    CIFAR10DataModule,
    ContinualDataModule,
    DeviceBatchLoader,
    EpochShardSampler,
    FashionMNISTDataModule,
    ImageNetDataModule,
    InMemoryImageDataModule,
    MNISTDataModule,
    TensorImageDataset,
    long_tail_counts,
)
from hugnc.data.in_memory import random_crop_flip
from hugnc.data.on_device import augmentation_seed
from hugnc.train import build_module, train

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
PADDING = 4


def _fake_trainer(rank: int = 0, world_size: int = 1, device: str = "cpu") -> SimpleNamespace:
    """What the datamodule reads of a Trainer: rank, world size, root device, loggers."""
    return SimpleNamespace(
        global_rank=rank,
        world_size=world_size,
        strategy=SimpleNamespace(root_device=torch.device(device)),
        loggers=[],
    )


def _cifar(data_root: Path, **kwargs) -> CIFAR10DataModule:
    datamodule = CIFAR10DataModule(str(data_root), download=False, **({"batch_size": 16} | kwargs))
    datamodule.setup()
    return datamodule


def _epoch(loader, epoch: int) -> list[tuple[Tensor, Tensor]]:
    loader.sampler.set_epoch(epoch)  # what Lightning does before each training epoch
    return list(loader)


def _labels(batches: list[tuple[Tensor, Tensor]]) -> Tensor:
    return torch.cat([targets for _, targets in batches]).cpu()


# ------------------------------------------------------------------------------------------------
# Same samples and order as the DataLoader path
# ------------------------------------------------------------------------------------------------


# kind -> (datamodule class, arguments besides the shared ones)
KINDS = {
    "cifar10": (CIFAR10DataModule, {}),
    "cifar10_lt": (CIFAR10DataModule, {"imb_factor": 0.5}),
    "mnist": (MNISTDataModule, {"val_size": 10, "augment": True}),
    "fashion_mnist": (FashionMNISTDataModule, {"train_subset": 1000, "augment": True}),
    "split_cifar10": (ContinualDataModule, {"dataset": "cifar10", "num_tasks": 5}),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_epoch_has_the_label_multiset_and_class_counts(
    kind: str, data_root: Path, cifar_md5_ignored
) -> None:
    cls, extra = KINDS[kind]
    datamodule = cls(
        data_dir=str(data_root), download=False, batch_size=16, on_device=True, **extra
    )
    datamodule.setup()
    if isinstance(datamodule, ContinualDataModule):
        datamodule.set_task(1)
        targets = datamodule.base.train_set.targets
        targets = targets[torch.isin(targets, torch.tensor(datamodule.tasks[1]))]
        counts = torch.bincount(targets, minlength=10).tolist()
    else:
        targets, counts = datamodule.train_set.targets, datamodule.class_counts
    if kind == "cifar10_lt":
        assert counts == long_tail_counts(12, 10, "exp", 0.5)
    loader = datamodule.train_dataloader()
    assert isinstance(loader, DeviceBatchLoader)
    orders = []
    for epoch in range(3):
        labels = _labels(_epoch(loader, epoch))
        assert sorted(labels.tolist()) == sorted(targets.tolist())
        assert torch.bincount(labels, minlength=10).tolist() == counts
        orders.append(labels.tolist())
    assert orders[0] != orders[1] != orders[2]  # reshuffled every epoch


@pytest.mark.parametrize("augment", [False, True])
def test_same_batches_as_the_dataloader_path(
    augment: bool, data_root: Path, cifar_md5_ignored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same run seed and epoch: the same samples in the same batches; without augmentation the
    same images, bit for bit (the order is DistributedSampler's on both paths)."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    reference = _cifar(data_root, augment=augment).train_dataloader()
    on_device = _cifar(data_root, augment=augment, on_device=True).train_dataloader()
    assert isinstance(reference, DataLoader) and isinstance(on_device, DeviceBatchLoader)
    assert len(reference) == len(on_device) == math.ceil(120 / 16)
    for epoch in (0, 3):
        ours, theirs = _epoch(on_device, epoch), _epoch(reference, epoch)
        assert [len(t) for _, t in ours] == [len(t) for _, t in theirs]
        for (images, targets), (ref_images, ref_targets) in zip(ours, theirs, strict=True):
            assert torch.equal(targets, ref_targets)
            assert images.shape == ref_images.shape and images.dtype == ref_images.dtype
            if not augment:
                assert torch.equal(images, ref_images)
    # The same positions as DistributedSampler gives.
    sampler = DistributedSampler(range(120), num_replicas=1, rank=0, shuffle=True, seed=7)
    sampler.set_epoch(3)
    assert on_device.sampler.positions().tolist() == list(sampler)


def test_eval_loaders_are_sequential_and_unaugmented(data_root: Path, cifar_md5_ignored) -> None:
    reference = _cifar(data_root, val_size=10, eval_batch_size=7)
    on_device = _cifar(data_root, val_size=10, eval_batch_size=7, on_device=True)
    for split in ("val", "test"):
        ours = list(getattr(on_device, f"{split}_dataloader")())
        theirs = list(getattr(reference, f"{split}_dataloader")())
        assert len(ours) == len(theirs) > 1
        for (images, targets), (ref_images, ref_targets) in zip(ours, theirs, strict=True):
            assert torch.equal(images, ref_images) and torch.equal(targets, ref_targets)


# ------------------------------------------------------------------------------------------------
# Augmentation statistics: crop offsets and flip rate as torchvision's RandomCrop + flip
# ------------------------------------------------------------------------------------------------


def _marker(size: int = 32) -> Tensor:
    """uint8 ``[1, size, size]``: left half 50, right half 200, no zero pixel, so a crop's zero
    rows/columns give its offsets and the leftmost visible value tells whether it was flipped."""
    image = torch.full((1, size, size), 50, dtype=torch.uint8)
    image[..., size // 2 :] = 200
    return image


def _read_offsets(crops: Tensor, padding: int) -> tuple[Tensor, Tensor, Tensor]:
    """(top, left, flipped) ``[N]`` of crops ``[N, 1, H, W]`` (pixels in [0, 1]) of the marker:
    the offsets in the padded image before the flip, as torchvision draws them."""
    visible = crops[:, 0] > 0
    rows, cols = visible.any(2).long(), visible.any(1).long()
    zeros_top, zeros_bottom = rows.argmax(1), rows.flip(1).argmax(1)
    zeros_left, zeros_right = cols.argmax(1), cols.flip(1).argmax(1)
    first_value = crops[torch.arange(len(crops)), 0, zeros_top, zeros_left]
    flipped = first_value > 0.5  # the right half (200 / 255) came first
    top = padding - zeros_top + zeros_bottom
    left = torch.where(
        flipped, padding - zeros_right + zeros_left, padding - zeros_left + zeros_right
    )
    return top, left, flipped


def _torchvision_offsets(samples: int) -> tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    reference = transforms.Compose(
        [transforms.RandomCrop(32, padding=PADDING), transforms.RandomHorizontalFlip()]
    )
    marker = _marker()
    crops = torch.stack([reference(marker) for _ in range(samples)]).float() / 255
    return _read_offsets(crops, PADDING)


@pytest.mark.parametrize("device", DEVICES)
def test_crop_offsets_and_flip_rate_match_torchvision(device: str) -> None:
    samples = 20000
    dataset = TensorImageDataset(
        _marker().expand(samples, 1, 32, 32).contiguous(),
        torch.zeros(samples, dtype=torch.long),
        mean=(0.0,),
        std=(1.0,),
        crop_padding=PADDING,
        flip=True,
    ).to(device)
    loader = DeviceBatchLoader(dataset, batch_size=4096, shuffle=True, seed=3)
    crops = torch.cat([images for images, _ in loader]).cpu()
    assert crops.shape == (samples, 1, 32, 32)
    top, left, flipped = _read_offsets(crops, PADDING)
    ref_top, ref_left, ref_flipped = _torchvision_offsets(4000)
    cells = 2 * PADDING + 1
    # Every crop is exactly torchvision's crop (+ flip) at the offsets read back.
    padded = torch.nn.functional.pad(_marker(), (PADDING,) * 4).float() / 255
    for i in range(50):
        expected = padded[:, top[i] : top[i] + 32, left[i] : left[i] + 32]
        expected = expected.flip(-1) if flipped[i] else expected
        torch.testing.assert_close(crops[i], expected)
    for ours, theirs in ((top, ref_top), (left, ref_left)):
        counts = torch.bincount(ours, minlength=cells)
        ref_counts = torch.bincount(theirs, minlength=cells)
        assert len(counts) == len(ref_counts) == cells  # offsets only in 0..2p
        assert int(counts.min()) > 0 and int(ref_counts.min()) > 0  # ... and all of them
        assert stats.chisquare(counts.numpy()).pvalue > 1e-3  # uniform
        table = torch.stack([counts, ref_counts]).numpy()
        assert stats.chi2_contingency(table).pvalue > 1e-3  # same distribution as torchvision
    joint = torch.bincount(top * cells + left, minlength=cells * cells)
    assert stats.chisquare(joint.numpy()).pvalue > 1e-3  # top and left independent, uniform
    flips = [int(flipped.sum()), samples - int(flipped.sum())]
    ref_flips = [int(ref_flipped.sum()), len(ref_flipped) - int(ref_flipped.sum())]
    assert stats.binomtest(flips[0], samples, 0.5).pvalue > 1e-3
    assert stats.chi2_contingency([flips, ref_flips]).pvalue > 1e-3
    # Flips independent of the crop offsets.
    by_flip = [torch.bincount(left[mask], minlength=cells) for mask in (flipped, ~flipped)]
    assert stats.chi2_contingency(torch.stack(by_flip).numpy()).pvalue > 1e-3


# ------------------------------------------------------------------------------------------------
# Seeded: identical batches for a seed, other batches for another seed or epoch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_identical_batches_for_the_same_seed(
    device: str, data_root: Path, cifar_md5_ignored, monkeypatch: pytest.MonkeyPatch
) -> None:
    def batches(seed: int, epoch: int) -> list[tuple[Tensor, Tensor]]:
        monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))  # what seed_everything(seed) exports
        torch.manual_seed(seed + 1000 * epoch + 17)  # the global RNG plays no part
        datamodule = _cifar(data_root, on_device=True)  # CIFAR-10: crop + flip
        datamodule.trainer = _fake_trainer(device=device)
        loader = datamodule.train_dataloader()
        assert loader.device.type == device
        loader.set_epoch(epoch)
        return [(images.cpu(), targets.cpu()) for images, targets in loader]

    first = batches(0, 0)
    again = batches(0, 0)
    assert all(
        torch.equal(x, y) and torch.equal(s, t) for (x, s), (y, t) in zip(first, again, strict=True)
    )
    for other in (batches(1, 0), batches(0, 1)):
        assert not any(torch.equal(x, y) for (x, _), (y, _) in zip(first, other, strict=True))
        assert _labels(other).tolist() != _labels(first).tolist()
    # Re-iterating an epoch gives it again (resume); the augmentation stream depends on the rank.
    loader = _cifar(data_root, on_device=True).train_dataloader()
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(loader, loader, strict=True))
    seeds = {augmentation_seed(0, 1, 0), augmentation_seed(1, 0, 0), augmentation_seed(0, 0, 1)}
    assert len(seeds) == 3


# ------------------------------------------------------------------------------------------------
# DDP: each rank a disjoint slice of the epoch's permutation, the same number of batches
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [120, 119])
def test_ddp_ranks_get_disjoint_slices_of_one_permutation(size: int) -> None:
    for epoch in (0, 5):
        shards = []
        for rank in (0, 1):
            sampler = EpochShardSampler(size, shuffle=True, seed=11, rank=rank, world_size=2)
            sampler.set_epoch(epoch)
            reference = DistributedSampler(range(size), num_replicas=2, rank=rank, seed=11)
            reference.set_epoch(epoch)
            assert sampler.positions().tolist() == list(reference) == list(sampler)
            shards.append(sampler.positions())
        assert len(shards[0]) == len(shards[1]) == math.ceil(size / 2)
        union = torch.cat(shards)
        assert sorted(set(union.tolist())) == list(range(size))  # every sample, once...
        assert len(union) - size == size % 2  # ... plus one repeated when N is odd
        if size % 2 == 0:
            assert not set(shards[0].tolist()) & set(shards[1].tolist())


def test_ddp_ranks_together_make_the_single_process_batches(
    data_root: Path, cifar_md5_ignored
) -> None:
    """With the datamodule under a (simulated) 2-rank trainer: per-device batches of half the
    global batch, and at each step the two ranks' samples are the single-process batch."""
    single = _cifar(data_root, batch_size=16, on_device=True).train_dataloader()
    ranks = []
    for rank in (0, 1):
        datamodule = _cifar(data_root, batch_size=16, on_device=True)
        datamodule.trainer = _fake_trainer(rank=rank, world_size=2)
        ranks.append(datamodule.train_dataloader())
    assert ranks[0].batch_size == 8 and len(ranks[0]) == len(ranks[1]) == len(single)
    for epoch in (0, 1):
        ours = [_epoch(loader, epoch) for loader in ranks]
        theirs = _epoch(single, epoch)
        seen = []
        for step, (_, targets) in enumerate(theirs):
            both = torch.cat([ours[0][step][1], ours[1][step][1]])
            assert sorted(both.tolist()) == sorted(targets.tolist())
            seen.append(both)
        assert sorted(torch.cat(seen).tolist()) == sorted(datamodule.train_set.targets.tolist())
    positions = [loader.sampler.positions() for loader in ranks]
    assert not set(positions[0].tolist()) & set(positions[1].tolist())


@pytest.mark.parametrize("on_device", [True, False])
def test_ddp_evaluation_counts_every_test_sample_once(
    data_root: Path, cifar_md5_ignored, on_device: bool
) -> None:
    """N % world_size != 0: the ranks' test loaders together hold each test sample exactly once
    (a padding sampler would repeat some, and test/acc, test/nc/* would count them twice)."""
    world = 3
    shares = []
    for rank in range(world):
        datamodule = _cifar(data_root, batch_size=12, on_device=on_device)
        datamodule.trainer = _fake_trainer(rank=rank, world_size=world)
        targets = [batch[1] for batch in datamodule.test_dataloader()]
        shares.append(torch.cat(targets))
    test_targets = datamodule.test_set.targets
    assert len(test_targets) % world != 0
    assert sum(len(share) for share in shares) == len(test_targets)
    assert sorted(torch.cat(shares).tolist()) == sorted(test_targets.tolist())


def test_drop_last_keeps_full_batches_only() -> None:
    dataset = TensorImageDataset(
        torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10), (0.0,), (1.0,)
    )
    loader = DeviceBatchLoader(dataset, batch_size=4, shuffle=True, drop_last=True)
    assert len(loader) == 2 and [len(t) for _, t in loader] == [4, 4]
    keep = DeviceBatchLoader(dataset, batch_size=4, shuffle=True)
    assert len(keep) == 3 and [len(t) for _, t in keep] == [4, 4, 2]
    with pytest.raises(ValueError, match="leaves no batch"):
        DeviceBatchLoader(dataset, batch_size=11, shuffle=True, drop_last=True)


def test_imagenet_on_device_is_a_clear_error(tmp_path: Path) -> None:
    assert not ImageNetDataModule.supports_on_device
    assert InMemoryImageDataModule.supports_on_device
    with pytest.raises(ValueError, match=r"ImageNet has no on-device data path.*on_device=false"):
        ImageNetDataModule(str(tmp_path), on_device=True)


# ------------------------------------------------------------------------------------------------
# Through the real configs and Lightning
# ------------------------------------------------------------------------------------------------

FAST = [
    "logger=none",
    "~callbacks.progress_bar",
    "model.widths=[8,8,8]",
    "model.kernel_size=3",
    "optimizer.lr=0.01",
    "data.download=false",
]


def test_fast_dev_run_on_device_with_the_nc_callback(compose_cfg) -> None:
    """``data.on_device=true trainer=debug`` end to end, NC metrics read the on-device loaders."""
    cfg = compose_cfg("data.on_device=true", "trainer=debug", *FAST)
    assert cfg.data.on_device is True and "neural_collapse" in cfg.callbacks
    metrics = train(cfg)
    assert {"train/loss", "val/acc", "test/acc"} <= metrics.keys()
    assert any(key.startswith("test/nc") for key in metrics), "no NC metrics"
    assert all(math.isfinite(value) for value in metrics.values()), metrics


def test_continual_split_on_device(compose_cfg) -> None:
    cfg = compose_cfg(
        "data=split_fashion_mnist",
        "data.on_device=true",
        "data.num_tasks=2",
        "trainer=debug",
        "~callbacks.neural_collapse",
        *FAST,
        config_name="continual",
    )
    results = train_continual(cfg)
    assert len(results["accuracy_matrix"]) == 2 and math.isfinite(results["average_accuracy"])


@pytest.mark.parametrize("name", ["cifar10", "mnist5k", "fashion_mnist_lt", "split_cifar100"])
def test_data_configs_have_the_switch_off(compose_cfg, name: str) -> None:
    assert compose_cfg(f"data={name}").data.on_device is False


class _RecordBatches(Callback):
    def __init__(self) -> None:
        self.targets: dict[int, list[Tensor]] = {}

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        images, targets = batch
        assert images.device == pl_module.device and images.dtype == torch.float32
        self.targets.setdefault(trainer.current_epoch, []).append(targets.cpu())


def test_lightning_reshuffles_every_epoch(compose_cfg) -> None:
    cfg = compose_cfg(
        "data.on_device=true",
        "data.train_subset=64",
        "data.batch_size=16",
        "data.augment=true",
        "trainer=cpu",
        "trainer.max_epochs=3",
        "+trainer.limit_val_batches=0",
        "+trainer.enable_checkpointing=false",
        *FAST,
    )
    seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule.input_shape)
    recorder = _RecordBatches()
    trainer = instantiate(
        cfg.trainer, callbacks=[recorder], logger=False, enable_progress_bar=False
    )
    trainer.fit(module, datamodule=datamodule)
    loader = trainer.train_dataloader
    assert isinstance(loader, DeviceBatchLoader) and loader.sampler.epoch == 2
    expected = sorted(datamodule.train_set.targets.tolist())
    orders = [torch.cat(recorder.targets[epoch]).tolist() for epoch in range(3)]
    assert all(sorted(order) == expected for order in orders)
    assert orders[0] != orders[1] != orders[2]


def test_fused_crop_flip_is_crop_then_flip() -> None:
    """One gather gives what padding, cutting windows and then flipping give, draw for draw."""
    images = torch.randint(0, 256, (64, 3, 10, 12), dtype=torch.uint8)
    padding = 3
    generator = torch.Generator().manual_seed(4)
    top = torch.randint(0, 2 * padding + 1, (64,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (64,), generator=generator)
    flip = torch.rand(64, generator=generator) < 0.5
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    windows = padded.unfold(2, 10, 1).unfold(3, 12, 1)[torch.arange(64), :, top, left]
    expected = torch.where(flip.view(-1, 1, 1, 1), windows.flip(-1), windows)
    generator.manual_seed(4)
    assert torch.equal(random_crop_flip(images, padding, True, generator), expected)
    generator.manual_seed(4)
    assert torch.equal(random_crop_flip(images, padding, False, generator), windows)
    assert random_crop_flip(images, 0, False) is images


@pytest.mark.slow
def test_ddp_on_device_equals_one_process_and_the_dataloader_path(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    """One epoch with 2 DDP ranks on the on-device path ends at the weights of one process on
    the on-device path and on the DataLoader path (no augmentation: the same batches)."""
    weights = {}
    for name, overrides in {
        "dataloader": ["trainer=cpu", "data.on_device=false"],
        "on_device": ["trainer=cpu", "data.on_device=true"],
        "ddp_on_device": ["trainer=ddp_cpu", "data.on_device=true"],
    }.items():
        result = run_hugnc(
            *overrides,
            *TINY_EQUIVALENCE_RUN,
            f"hydra.run.dir={tmp_path / name}",
            cwd=tmp_path,
            data_dir=fashion_mnist_dir,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        weights[name] = final_weights(tmp_path / name)
    reference = weights.pop("dataloader")
    for name, state in weights.items():
        assert state.keys() == reference.keys()
        for key, tensor in reference.items():
            torch.testing.assert_close(
                state[key], tensor, rtol=1e-4, atol=1e-5, msg=f"{name} {key}"
            )
