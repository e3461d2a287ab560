"""`make gpu-check`: the GPU paths no CPU test can measure, in one table (a few minutes on a GPU).

Sections, each measured on ``--device`` (default: cuda if available), cheapest first so that a run
cut short by ``--budget-s`` (or by a lent machine's time limit) still reports the others:

1. host syncs per training step of a real fit with the GPU trainer's defaults (``trainer=gpu``:
   bf16-mixed, channels_last, on-device data, progress bar on): on CUDA counted by
   ``torch.cuda.set_sync_debug_mode("warn")``, on the CPU by the aten ops that read a value (the
   test suite's method). Steps where reads are documented (Lightning's logging every
   ``log_every_n_steps``, the NaN guard and the progress bar every 50) are reported apart.
2. TF32 vs float32: cosine between the proxy gradients of each HUG variant at d = 2, K = 10
   under ``matmul_precision`` high and highest (CUDA only: the CPU has no TF32).
3. the loss benchmark (hugnc vs a per-class loop vs the Gram floor) at K = 10, 100, 1000.
4. one epoch of ``experiment=quickstart`` with the device's trainer, end to end.
5. steady-state img/s of a training step: CIFAR ResNet-18, batch 512, bf16-mixed, channels_last,
   CE and each HUG head, DataLoader vs on-device data.
6. the same with ``compile=true`` (its compilations dominate the check's time; not in ``--quick``).

Data: real Fashion-MNIST where the machine has it (Debian's package, ``--data``, or ``.gz`` files
in ``--fashion-mnist-gz``), else a fixture in its format; CIFAR-shaped synthetic tensors.
``--quick`` shrinks every section (the test suite's smoke run on the CPU). On a lent machine
without a package index: ``benchmarks/gpu_machine.sh`` (README, "GPU check").
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from lightning import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_losses
import bench_training
from torch.utils._python_dispatch import TorchDispatchMode

from hugnc.data.fashion_mnist import DEBIAN_DIR
from hugnc.losses import VARIANTS, HUGLoss
from hugnc.train import train

#: aten ops that read a tensor's value on the host (a sync on a GPU), for the CPU count.
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "bincount", "unique", "_unique2", "masked_select"}
LOG_EVERY, READ_EVERY = 20, 50


class _AtenReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


class _SyncsPerStep(Callback):
    """Syncs seen between each training batch's start and end (CUDA warnings or aten reads)."""

    def __init__(self, counter: _AtenReads | None, caught: list) -> None:
        self.counter, self.caught = counter, caught
        self.per_step: dict[int, int] = {}

    def _seen(self) -> int:
        if self.counter is not None:
            return self.counter.count
        return sum("synchroniz" in str(w.message) for w in self.caught)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = self._seen()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.per_step[trainer.global_step] = self._seen() - self.start


def check_syncs(device: torch.device, data_dir: Path, steps: int) -> str:
    trainer = "gpu" if device.type == "cuda" else "cpu"
    overrides = [
        f"trainer={trainer}",
        "logger=none",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={data_dir / 'sync-run'}",
        "data.batch_size=128",
        "data.on_device=true",
        "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={steps}",
        "+trainer.limit_val_batches=1",
        f"trainer.log_every_n_steps={LOG_EVERY}",
        "test=false",
        "~callbacks.neural_collapse",
        "~callbacks.training_dynamics",
    ]
    cfg = bench_training.compose_config(overrides)
    counter = None if device.type == "cuda" else _AtenReads()
    from hugnc import devices

    reads_are_free = devices.host_reads_are_free
    if counter is not None:
        # The NaN guard and MGD's Cholesky read on the CPU (free there); count accelerator modes.
        devices.host_reads_are_free = lambda device: False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe = _SyncsPerStep(counter, caught)
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with counter if counter is not None else contextlib.nullcontext():
                train(cfg, extra_callbacks=[probe])
        finally:
            devices.host_reads_are_free = reads_are_free
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode(0)
    documented = {s for s in probe.per_step if s % LOG_EVERY == 0 or s % READ_EVERY == 0}
    others = {s: n for s, n in probe.per_step.items() if s not in documented and s > 1}
    worst = max(others.values(), default=0)
    how = "CUDA sync debug mode" if device.type == "cuda" else "aten value reads (CPU)"
    return (
        f"syncs per training step ({how}, {len(probe.per_step)} steps): max {worst} in the "
        f"{len(others)} ordinary steps; {sum(probe.per_step[s] for s in documented)} in the "
        f"{len(documented)} documented every-N steps  [{'ok' if worst == 0 else 'FAIL'}]"
    )


def check_tf32(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["TF32 vs float32 proxy gradients at d=2: n/a on the CPU (no TF32)"]
    lines = []
    previous = torch.get_float32_matmul_precision()
    for variant in VARIANTS:
        cosines = []
        for seed in range(5):
            gen = torch.Generator().manual_seed(seed)
            proxies = torch.nn.functional.normalize(torch.randn(10, 2, generator=gen), dim=1)
            features = torch.randn(64, 2, generator=gen)
            grads = []
            for precision in ("highest", "high"):
                torch.set_float32_matmul_precision(precision)
                p = proxies.to(device).requires_grad_(True)
                targets = (torch.arange(64) % 10).to(device)
                HUGLoss(variant, 0.15, 0.015)(features.to(device), p, targets).loss.backward()
                grads.append(p.grad.flatten())
            cosines.append(float(torch.nn.functional.cosine_similarity(*grads, dim=0)))
        torch.set_float32_matmul_precision(previous)
        lines.append(
            f"TF32 vs float32 proxy gradient cosine, {variant.upper()}-HUG d=2 K=10 (5 seeds): "
            f"min {min(cosines):.6f}  [{'ok' if min(cosines) > 0.9999 else 'FAIL'}]"
        )
    return lines


class Deadline:
    """The time left of the check's budget (``None``: no budget)."""

    def __init__(self, seconds: float | None) -> None:
        self.end = math.inf if seconds is None else time.perf_counter() + seconds

    def passed(self) -> bool:
        return time.perf_counter() >= self.end


def check_throughput(
    device: torch.device, data_dir: Path, quick: bool, deadline: Deadline, *, compiled: bool
) -> list[str]:
    batch, warmup, steps = (16, 1, 2) if quick else (512, 10, 30)
    model = "lenet_pp" if quick else "resnet18"
    trainer = "gpu" if device.type == "cuda" else "cpu"
    lines = [
        f"training step img/s, {model}{', compiled' if compiled else ''}, CIFAR-shaped, "
        f"batch {batch}, {trainer} trainer:"
    ]
    for loss in ("ce", *(f"{v}_hug" for v in VARIANTS)):
        cells = []
        for on_device in (False, True):
            name = "on-device" if on_device else "DataLoader"
            if deadline.passed():
                cells.append(f"{name} skipped (time budget)")
                continue
            cfg = bench_training.compose_config(
                [
                    "data=cifar10",
                    f"model={model}",
                    f"loss={loss}",
                    f"trainer={trainer}",
                    "logger=none",
                    "scheduler=none",
                    f"paths.data_dir={data_dir}",
                    f"paths.output_dir={data_dir / 'bench-run'}",
                    "data.download=false",
                    f"data.batch_size={batch}",
                    f"data.on_device={str(on_device).lower()}",
                    "trainer.precision=bf16-mixed",
                    "channels_last=true",
                    f"compile={str(compiled).lower()}",
                ]
            )
            # As train() sets it: a run's float32 matmuls (outside autocast) may use TF32.
            torch.set_float32_matmul_precision(cfg.matmul_precision)
            timing = bench_training.time_lightning(cfg, warmup, steps)
            cells.append(f"{name} {timing.images_per_s:,.0f}")
        lines.append(f"  {loss:<8} " + " | ".join(cells))
    return lines


def check_losses(device: torch.device, quick: bool) -> str:
    classes = (10, 100) if quick else (10, 100, 1000)
    rows = bench_losses.bench_loss_table(
        num_classes=classes,
        batch_size=64 if quick else 512,
        dim=64 if quick else 512,
        min_run_time=0.05 if quick else 0.5,
        device=str(device),
    )
    table = bench_losses.format_loss_table(rows, 64 if quick else 512, 64 if quick else 512)
    return table.replace("CPU float32", f"{device.type} float32")


def check_quickstart(device: torch.device, data_dir: Path, quick: bool) -> str:
    trainer = "gpu" if device.type == "cuda" else "cpu"
    overrides = [
        "experiment=quickstart",
        f"trainer={trainer}",
        "logger=none",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={data_dir / 'quickstart-run'}",
        "trainer.max_epochs=1",
        "~callbacks.progress_bar",
    ]
    if quick:
        overrides += ["debug=limit", "callbacks.neural_collapse.max_batches=1"]
    start = time.perf_counter()
    metrics = train(bench_training.compose_config(overrides))
    seconds = time.perf_counter() - start
    return (
        f"experiment=quickstart trainer={trainer}, 1 epoch end to end: test acc "
        f"{100 * metrics.get('test/acc', float('nan')):.2f}% in {seconds:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    parser.add_argument("--data", type=Path, help="data dir (default: a temporary one)")
    parser.add_argument(
        "--fashion-mnist-gz",
        type=Path,
        default=Path(DEBIAN_DIR),
        help=f"where Fashion-MNIST's four .gz files are (default: Debian's {DEBIAN_DIR})",
    )
    parser.add_argument(
        "--table", type=Path, help="also append the table (without the runs' logs) to this file"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        help="seconds after which the measurements not yet started are skipped (default: none)",
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    deadline = Deadline(args.budget_s)
    # The CIFAR-shaped data is a fixture in torchvision's format, not the real archive: only
    # torchvision's md5 check is skipped (as in bench_training.py).
    import os

    from torchvision.datasets import cifar as tv_cifar

    tv_cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
    started = time.perf_counter()
    table = open(args.table, "a") if args.table else contextlib.nullcontext()  # noqa: SIM115

    def report(line: str) -> None:
        print(line, flush=True)
        if args.table:
            print(line, file=table, flush=True)

    with table, tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data or Path(scratch)
        fashion = bench_training.prepare_data(data_dir, 512 * 40, args.fashion_mnist_gz)
        report(f"# hugnc GPU check: {bench_training.machine_info(device)}; {fashion}")
        sections = [
            lambda: [check_syncs(device, data_dir, 12 if args.quick else 120)],
            lambda: check_tf32(device),
            lambda: [check_losses(device, args.quick)],
            lambda: [check_quickstart(device, data_dir, args.quick)],
            lambda: check_throughput(device, data_dir, args.quick, deadline, compiled=False),
            lambda: (
                ["compiled training steps: not measured with --quick"]
                if args.quick
                else check_throughput(device, data_dir, False, deadline, compiled=True)
            ),
        ]
        failed = []
        for number, section in enumerate(sections, start=1):
            if deadline.passed():
                report(f"{number}. skipped (--budget-s {args.budget_s:g} s spent)")
                continue
            section_start = time.perf_counter()
            try:
                lines = section()
            except Exception as error:  # one run on a lent machine: report it, measure the rest
                traceback.print_exc()
                reason = str(error).splitlines()[0] if str(error) else ""
                lines = [f"FAILED ({type(error).__name__}: {reason}; traceback in the log)"]
                failed.append(number)
            for line in lines:
                report(f"{number}. {line}" if not line.startswith(" ") else line)
            report(f"   ({time.perf_counter() - section_start:.0f} s)")
        report(f"# done in {time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
