"""Training throughput: raw PyTorch vs hugnc's Lightning loop, DataLoader vs on-device data.

Run: ``python benchmarks/bench_training.py [--quick]``. Side by side in one run, on the same model,
loss, optimizer and data (each setup built from the composed hugnc config, ``conf/train.yaml``
with overrides, so the rows measure the real package):

1. ``raw loop``: a plain PyTorch loop (no Lightning) over the DataLoader path: the same backbone,
   head, HUG loss and SGD, ``zero_grad / backward / step`` and the proxy renormalization, nothing
   else. The limit for (2).
2. ``lightning``: :class:`hugnc.module.HUGClassifier` in a ``lightning.Trainer`` on the DataLoader
   path (``data.on_device=false``; metrics and loss terms logged as in a real run).
3. ``lightning, on-device``: the same with ``data.on_device=true``
   (:mod:`hugnc.data.on_device`); ``raw loop, on-device`` is its raw-PyTorch limit.
4. ``lightning, on-device, channels_last + bf16-mixed``: ``channels_last=true
   trainer.precision=bf16-mixed`` on top of (3).

Setups: Fashion-MNIST (the real 60k images when available, else an idx fixture) with the LeNet++
of ``conf/model/lenet_pp.yaml``; CIFAR-shaped: a synthetic CIFAR-10 fixture in torchvision's
format (32x32 RGB) with the same model (``--cifar-model resnet18`` for the paper's backbone).
Augmentation on (random crop + flip, ``data.augment=true``) in every row, so the data path does
all its work.

The Lightning rows run the callbacks of ``conf/callbacks/default.yaml`` that act at every step
(the NaN guard); no logger, checkpoint, progress bar or validation.

Timing: ``steps`` training steps after ``warmup`` steps, each from the start of one step to the
start of the next (one batch fetched and one step), wall and process CPU time; a row's step time
is the median over its steps pooled from ``rounds`` rounds (robust to other processes' bursts),
the rows interleaved within a round (in alternating order) so that slow phases of the machine hit
all rows alike. The goal ratios come with a 95% bootstrap interval: on the CPU, where the model's
step is ~1000x the data path's cost, (2) and (3) do the same work up to that cost and can only be
"equal within noise" at the step level; ``data path alone`` (ms per batch drawn, min: the path's
own cost; median; nothing trained) then shows which path is cheaper.

On a machine shared with other jobs, 2 intra-op threads stall whenever one is descheduled (tens
of ms per parallel op): wall times then mostly measure the load. ``--threads 1`` makes the CPU-time
columns a load-independent measure of each row's own work.
Host memory: as ``python -m hugnc`` does by default (``retain_host_memory=true``), every row runs
with glibc's malloc keeping freed memory (:mod:`hugnc.host_memory`); ``--host-memory system``
measures the system allocator's behavior (a page fault for every page of every large tensor, each
step), the setting being process-wide.

Goals (issue 8): (2)/(1) <= 1.05; (3) at least as fast as (2).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import lightning
import numpy as np
import torch
import torchvision.datasets.cifar as tv_cifar
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from lightning import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from omegaconf import DictConfig

from hugnc.config import config_dir
from hugnc.data import (
    DatasetUnavailableError,
    DeviceBatchLoader,
    InMemoryImageDataModule,
    ensure_fashion_mnist,
)
from hugnc.data.fashion_mnist import DEBIAN_DIR
from hugnc.data.synthetic import write_cifar, write_mnist
from hugnc.host_memory import retain_freed_host_memory
from hugnc.train import build_module

GOAL_LIGHTNING_VS_RAW = 1.05
GOAL_ON_DEVICE_VS_DATALOADER = 1.0
#: Callbacks of conf/callbacks/default.yaml that run at every training step (kept in the rows).
PER_STEP_CALLBACKS = ("finite_loss",)

# Row name -> (Lightning?, on-device data?, channels_last + bf16-mixed?)
ROWS: dict[str, tuple[bool, bool, bool]] = {
    "(1) raw loop": (False, False, False),
    "(1') raw loop, on-device": (False, True, False),
    "(2) lightning": (True, False, False),
    "(3) lightning, on-device": (True, True, False),
    "(4) lightning, on-device, CL+bf16": (True, True, True),
}


@dataclass
class Timing:
    """Per-step ``(wall s, process CPU s)`` of one row, each step one batch fetched + one step,
    pooled over rounds (:meth:`merge`)."""

    steps: list[tuple[float, float]]
    batch_size: int

    @classmethod
    def from_clocks(cls, clocks: list[tuple[float, float]], batch_size: int) -> Timing:
        """From clock readings at the start of each timed step and after the last one."""
        intervals = [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(clocks)]
        return cls(intervals, batch_size)

    def merge(self, other: Timing) -> Timing:
        return Timing(self.steps + other.steps, self.batch_size)

    def times(self, which: int) -> np.ndarray:
        return np.array([step[which] for step in self.steps])

    def _median_ms(self, which: int) -> float:
        return 1000 * float(np.median(self.times(which)))

    @property
    def step_ms(self) -> float:
        """Median wall milliseconds per step (robust to other processes' bursts)."""
        return self._median_ms(0)

    @property
    def cpu_ms(self) -> float:
        """Median process CPU milliseconds per step (all threads)."""
        return self._median_ms(1)

    @property
    def images_per_s(self) -> float:
        return 1000 * self.batch_size / self.step_ms


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _clock(device: torch.device) -> tuple[float, float]:
    _sync(device)
    return time.perf_counter(), time.process_time()


class StepTimer(Callback):
    """Clocks at the start of training batches ``warmup`` .. ``warmup + steps``."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.clocks: list[tuple[float, float]] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int
    ) -> None:
        if self.warmup <= batch_idx <= self.warmup + self.steps:
            self.clocks.append(_clock(pl_module.device))

    def timing(self, batch_size: int) -> Timing:
        if len(self.clocks) != self.steps + 1:
            raise RuntimeError("the epoch ended before the timed steps: use a larger fixture")
        return Timing.from_clocks(self.clocks, batch_size)


# ---------------------------------------------------------------------------------------------
# Configs, data, model
# ---------------------------------------------------------------------------------------------


def compose_config(overrides: list[str]) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` (as ``python -m hugnc`` would)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return compose(config_name="train", overrides=overrides)


def speed_overrides(cfg: DictConfig, fast: bool) -> tuple[list[str], str]:
    """Overrides for fp32 NCHW (``fast=False``) or channels_last + bf16-mixed, and a note on the
    switches this checkout lacks (``channels_last`` is a top-level key of newer configs)."""
    overrides = [f"trainer.precision={'bf16-mixed' if fast else '32-true'}"]
    if "channels_last" in cfg:
        overrides.append(f"channels_last={str(fast).lower()}")
        return overrides, ""
    return overrides, "no channels_last key in conf/train.yaml: bf16-mixed only" if fast else ""


def prepare_data(root: Path, images_needed: int, debian_dir: Path = Path(DEBIAN_DIR)) -> str:
    """Fashion-MNIST (real if a local copy or Debian's ``.gz`` files in ``debian_dir`` exist, else
    a fixture) and a CIFAR-10 fixture of at least ``images_needed`` training images, under
    ``root``; returns what Fashion-MNIST is."""
    try:
        ensure_fashion_mnist(root, debian_dir, download=False)
        fashion = "Fashion-MNIST (real, 55k train)"
    except DatasetUnavailableError:  # no local copy: a fixture in the same format
        write_mnist(root / "FashionMNIST" / "raw", num_train=60000, num_test=1000)
        fashion = "Fashion-MNIST fixture (idx files, 55k train)"
    per_class = max(1000, -(-images_needed // 10))
    write_cifar(root, 10, train_per_class=per_class, test_per_class=10)
    return fashion


def setup_overrides(setup: str, args: argparse.Namespace, root: Path) -> list[str]:
    data, model = {
        "fashion_mnist": ("fashion_mnist", "lenet_pp"),
        "cifar": ("cifar10", args.cifar_model),
    }[setup]
    return [
        f"data={data}",
        f"model={model}",
        "loss=mhe_hug",
        "optimizer=sgd",
        "scheduler=none",
        f"trainer={args.trainer}",
        "logger=none",
        f"paths.data_dir={root}",
        f"paths.output_dir={root / 'run'}",
        "data.download=false",
        "data.augment=true",
        f"data.batch_size={args.batch_size}",
        *args.overrides,
    ]


def make_datamodule(cfg: DictConfig) -> InMemoryImageDataModule:
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def raw_loader(
    datamodule: InMemoryImageDataModule, on_device: bool, device: torch.device, seed: int
) -> Iterable:
    """The training batches of either data path without a Trainer (one process)."""
    if on_device:
        dataset = datamodule.to_device(datamodule.train_set, device)
        return DeviceBatchLoader(dataset, datamodule.batch_size, shuffle=True, seed=seed)
    return datamodule.loader(datamodule.train_set, train=True)


# ---------------------------------------------------------------------------------------------
# The measured loops
# ---------------------------------------------------------------------------------------------


def time_raw_loop(
    cfg: DictConfig, on_device: bool, device: torch.device, warmup: int, steps: int
) -> Timing:
    """(1): the same modules and optimizer as hugnc's, in a bare PyTorch loop."""
    seed_everything(cfg.seed, verbose=False)
    datamodule = make_datamodule(cfg)
    module = build_module(cfg, datamodule.input_shape).to(device).train()
    backbone, head, criterion = module.backbone, module.head, module.criterion
    optimizer = instantiate(cfg.optimizer)(params=module.parameters())
    batches = iter(raw_loader(datamodule, on_device, device, cfg.seed))
    clocks: list[tuple[float, float]] = []
    for step in range(warmup + steps + 1):
        if step >= warmup:
            clocks.append(_clock(device))
        if step == warmup + steps:
            break
        images, targets = next(batches)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        features = backbone(images)
        loss = criterion.loss_terms(features, targets, head)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        head.after_optimizer_step()
    return Timing.from_clocks(clocks, datamodule.batch_size)


def time_lightning(cfg: DictConfig, warmup: int, steps: int) -> Timing:
    """(2)-(4): hugnc's module and datamodule from ``cfg`` in the configured Trainer."""
    seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule.input_shape)
    timer = StepTimer(warmup, steps)
    # The callbacks that act every step (the NaN guard); checkpoints and NC metrics act at epoch
    # ends, the progress bar is off (a terminal's cost, not the loop's).
    per_step = [
        instantiate(cfg.callbacks[name]) for name in PER_STEP_CALLBACKS if name in cfg.callbacks
    ]
    trainer: Trainer = instantiate(
        cfg.trainer,
        callbacks=[*per_step, timer],
        logger=False,
        max_epochs=1,
        limit_train_batches=warmup + steps + 1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    return timer.timing(datamodule.per_device_batch_size)


def time_data_path(
    cfg: DictConfig, on_device: bool, device: torch.device, batches: int
) -> tuple[float, float]:
    """(min, median) milliseconds per training batch of the data path alone, batch on the
    device. The min is the path's own cost; other processes' stalls lift the median."""
    seed_everything(cfg.seed, verbose=False)
    iterator = iter(raw_loader(make_datamodule(cfg), on_device, device, cfg.seed))
    next(iterator)
    times = []
    for _ in range(batches):
        start = _clock(device)[0]
        images, _ = next(iterator)
        images.to(device, non_blocking=True)
        times.append(_clock(device)[0] - start)
    return 1000 * min(times), 1000 * float(np.median(times))


def run_setup(
    setup: str, args: argparse.Namespace, root: Path, device: torch.device
) -> tuple[dict[str, Timing], dict[str, tuple[float, float]], list[str]]:
    base = setup_overrides(setup, args, root)
    probe = compose_config(base)
    notes: list[str] = []
    configs: dict[str, DictConfig] = {}
    for name, (_, on_device, fast) in ROWS.items():
        speed, note = speed_overrides(probe, fast)
        if note:
            notes.append(f"{name}: {note}")
        configs[name] = compose_config([*base, f"data.on_device={str(on_device).lower()}", *speed])
    pooled: dict[str, Timing] = {}
    for round_index in range(args.rounds):
        # Alternate the order so that a row is not always the one after the same other row.
        order = list(ROWS.items())
        for name, (lightning_loop, on_device, _) in order[:: 1 if round_index % 2 == 0 else -1]:
            cfg = configs[name]
            if lightning_loop:
                timing = time_lightning(cfg, args.warmup, args.steps)
            else:
                timing = time_raw_loop(cfg, on_device, device, args.warmup, args.steps)
            pooled[name] = pooled[name].merge(timing) if name in pooled else timing
    pooled = {name: pooled[name] for name in ROWS}
    data_ms = {
        path: time_data_path(
            configs["(1) raw loop"], path == "on-device", device, args.data_batches
        )
        for path in ("DataLoader", "on-device")
    }
    return pooled, data_ms, notes


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def machine_info(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (
        f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), lightning {lightning.__version__}{gpu}; load average "
        f"{os.getloadavg()[0]:.1f} (other processes distort wall times)"
    )


def format_table(
    title: str,
    rows: dict[str, Timing],
    data_ms: dict[str, tuple[float, float]],
    notes: list[str],
) -> str:
    reference = rows["(1) raw loop"]
    header = (
        f"| {'loop':<34} | {'step ms':>8} | {'img/s':>7} | {'vs (1)':>6} | "
        f"{'CPU ms':>7} | {'CPU vs (1)':>10} |"
    )
    rule = "|".join("-" * len(cell) for cell in header.split("|")[1:-1])
    lines = [f"**{title}**", "", header, f"|{rule}|"]
    for name, timing in rows.items():
        lines.append(
            f"| {name:<34} | {timing.step_ms:>8.1f} | {timing.images_per_s:>7.0f} | "
            f"{timing.step_ms / reference.step_ms:>5.2f}x | {timing.cpu_ms:>7.1f} | "
            f"{timing.cpu_ms / reference.cpu_ms:>9.2f}x |"
        )
    lightning = rows["(2) lightning"]
    on_device = rows["(3) lightning, on-device"]
    # Both ratios as "times slower than the reference" (step time over step time).
    overhead, overhead_interval = median_ratio(lightning, reference)
    slowdown, slowdown_interval = median_ratio(on_device, lightning)
    lines += [
        "",
        "data path alone, ms per batch (min / median): "
        + ", ".join(f"{path} {low:.2f} / {mid:.2f}" for path, (low, mid) in data_ms.items()),
        f"(2)/(1) step time {overhead:.3f}, 95% CI {_interval(overhead_interval)} (CPU time "
        f"{lightning.cpu_ms / reference.cpu_ms:.3f}; goal <= {GOAL_LIGHTNING_VS_RAW}): "
        f"{'ok' if overhead <= GOAL_LIGHTNING_VS_RAW else 'MISSED'}",
        f"(3)/(2) img/s {1 / slowdown:.3f}, 95% CI {_interval(1 / slowdown_interval[::-1])} "
        f"(CPU time {lightning.cpu_ms / on_device.cpu_ms:.3f}; goal >= "
        f"{GOAL_ON_DEVICE_VS_DATALOADER}): {_at_least_as_fast(slowdown, slowdown_interval)}",
        *notes,
    ]
    return "\n".join(lines)


def median_ratio(
    timing: Timing, reference: Timing, resamples: int = 4000
) -> tuple[float, np.ndarray]:
    """Median wall step time of ``timing`` over ``reference``'s, and a 95% percentile-bootstrap
    interval of that ratio (each row's steps resampled independently; seeded)."""
    rng = np.random.default_rng(0)
    numerator, denominator = timing.times(0), reference.times(0)

    def resampled_medians(times: np.ndarray) -> np.ndarray:
        picks = rng.integers(0, len(times), size=(resamples, len(times)))
        return np.median(times[picks], axis=1)

    ratios = resampled_medians(numerator) / resampled_medians(denominator)
    ratio = float(np.median(numerator) / np.median(denominator))
    return ratio, np.percentile(ratios, [2.5, 97.5])


def _interval(bounds: np.ndarray) -> str:
    return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def _at_least_as_fast(slowdown: float, interval: np.ndarray) -> str:
    """The verdict on "(3) at least as fast as (2)" from the step-time ratio (3)/(2)."""
    if slowdown <= 1 / GOAL_ON_DEVICE_VS_DATALOADER:
        return "ok"
    if interval[0] <= 1 / GOAL_ON_DEVICE_VS_DATALOADER:
        return "equal within noise (the 95% CI includes 1)"
    return "MISSED"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="few short steps (< 2 min on 2 idle cores)"
    )
    parser.add_argument("--trainer", default=None, help="trainer config (default: gpu if any)")
    parser.add_argument("--batch-size", type=int, default=None, help="global batch (512)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row")
    parser.add_argument("--rounds", type=int, default=None, help="rounds; steps pooled")
    parser.add_argument("--data-batches", type=int, default=None, help="batches, data path alone")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's). On a shared machine, 1 thread makes the CPU-time "
        "columns a load-independent measure of each row's work",
    )
    parser.add_argument(
        "--host-memory",
        choices=["retain", "system"],
        default="retain",
        help="retain: glibc malloc keeps freed memory (retain_host_memory=true, the default of "
        "python -m hugnc); system: the allocator as it comes",
    )
    parser.add_argument(
        "--overrides",
        nargs="*",
        default=[],
        help="Hydra overrides for every row, e.g. a data-bound small model: "
        "'model.widths=[8,16,32]' model.convs_per_stage=1",
    )
    parser.add_argument("--cifar-model", default="lenet_pp", help="model config, CIFAR setup")
    parser.add_argument(
        "--setups",
        nargs="+",
        default=["fashion_mnist", "cifar"],
        choices=["fashion_mnist", "cifar"],
    )
    args = parser.parse_args(argv)
    quick = {"batch_size": 256, "warmup": 2, "steps": 3, "rounds": 1, "data_batches": 10}
    full = {"batch_size": 512, "warmup": 3, "steps": 10, "rounds": 3, "data_batches": 30}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    retained = args.host_memory == "retain" and retain_freed_host_memory()
    if args.trainer is None:
        args.trainer = "gpu" if torch.cuda.is_available() else "cpu"
    device = torch.device("cuda" if args.trainer in ("gpu", "ddp") else "cpu")
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # Lightning 2.6 on torch >= 2.14
    # The CIFAR fixture is not the real archive: only here, skip torchvision's md5 check.
    tv_cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
    start = time.perf_counter()
    print(machine_info(device))
    print(
        f"batch {args.batch_size}, {args.steps} timed steps after {args.warmup} in each of "
        f"{args.rounds} round(s), augmentation on, HUG mhe loss, SGD, trainer={args.trainer}, "
        f"host memory {'retained' if retained else 'system allocator'}"
        + (f", overrides {' '.join(args.overrides)}" if args.overrides else "")
        + "\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        needed = args.batch_size * (args.warmup + args.steps + 2)
        fashion = prepare_data(root, max(needed, args.batch_size * (args.data_batches + 2)))
        titles = {
            "fashion_mnist": f"{fashion}, LeNet++ (conf/model/lenet_pp.yaml)",
            "cifar": f"CIFAR-10-shaped fixture (3x32x32), {args.cifar_model}",
        }
        for setup in args.setups:
            rows, data_ms, notes = run_setup(setup, args, root, device)
            print(format_table(titles[setup], rows, data_ms, notes))
            print()
    GlobalHydra.instance().clear()
    print(f"total {time.perf_counter() - start:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
