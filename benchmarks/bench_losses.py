"""Benchmark of the HUG losses (run: ``python benchmarks/bench_losses.py [--quick]``).

Part (a), :func:`bench_loss_table`: for K in {10, 100, 1000}, B = 512, d = 512 and each HUG variant,
fwd+bwd time of

- hugnc's vectorized :class:`hugnc.losses.HUGLoss`;
- a per-class Python loop written like the official ``HUG_loss.py`` (yulonghui/Uniformity-Gap,
  class ``HUG_MHE``): intra term by a loop over the classes present, inter term from ``cdist`` over
  all proxy pairs (MHE as in the official code; MHS and MGD built the same way);
- the floor: normalizing the K x d proxies and the K x K Gram matmul, fwd+bwd, nothing else;

all measured side by side in one run, with the max abs difference loop vs hugnc over the values
(loss, intra, inter).

CPU timings of [B, d] / [K, K] temporaries are sensitive to the allocator: glibc malloc hands
MB-sized blocks back to the OS, so each step pays page faults (about 2x on hugnc rows at small K);
``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=1073741824:glibc.malloc.trim_threshold=1073741824``
(or jemalloc/tcmalloc) removes that. Other processes on the cores distort the numbers even more.

Part (b), :func:`bench_train_step_table`: one training step (forward, loss, backward, SGD step and,
for HUG, the proxy renormalization) of the same backbone with the CE head vs each HUG head, timed
interleaved so that machine noise hits all heads alike. Goal: HUG/CE <= 1.03x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.benchmark import Timer

from hugnc.losses import VARIANTS, HUGLoss
from hugnc.models import CifarResNet, LeNetPlusPlus, LinearHead, ProxyHead

#: Paper settings (HUG.md): alpha=0.15 for all, beta=0.015 (MHE, MHS) or 0.03 (MGD).
PAPER_WEIGHTS = {"mhe": (0.15, 0.015), "mhs": (0.15, 0.015), "mgd": (0.15, 0.03)}
GOAL_VS_LOOP = 3.0  # hugnc at least this many times faster than the loop, for K >= 100
GOAL_VS_FLOOR = 1.3  # hugnc at most this many times the floor, at K = 1000
GOAL_STEP_VS_CE = 1.03  # a HUG training step at most this many times a CE step


# ---------------------------------------------------------------------------------------------
# The per-class loop reference (official code structure)
# ---------------------------------------------------------------------------------------------


def loop_hug_loss(
    variant: str,
    features: Tensor,
    proxies: Tensor,
    targets: Tensor,
    alpha: float,
    beta: float,
    mhe_power: float = 2.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """HUG written like the official ``HUG_MHE.forward``; returns ``(loss, intra, inter)``."""
    weight = proxies / torch.norm(proxies, 2, 1, keepdim=True)
    num = weight.shape[0]

    # Inter term over all proxy pairs i < j.
    dist = torch.cdist(weight, weight)
    if variant == "mhe":
        upper = torch.triu(dist, diagonal=1)
        pair_dist = upper[upper > 0]
        if mhe_power == 0:
            inter = torch.mean(-torch.log(pair_dist))
        else:
            inter = torch.mean(pair_dist ** (-mhe_power))
    elif variant == "mhs":
        upper = torch.triu(dist, diagonal=1)
        inter = -torch.min(upper[upper > 0] ** 2)
    else:
        gram = torch.exp(-(dist**2)) + 1e-6 * torch.eye(num, dtype=dist.dtype)
        inter = -torch.logdet(gram) / num

    # Intra term: loop over the classes present in the batch.
    intra_sum = 0
    class_indices = torch.unique(targets)
    for class_i in class_indices:
        mask = targets == class_i
        feat_class = features[mask]
        feat_class = feat_class / torch.norm(feat_class, 2, 1, keepdim=True)
        class_mean = weight[class_i].unsqueeze(0)
        intra_sum = intra_sum + torch.mean(torch.cdist(feat_class, class_mean.detach()))
    intra = intra_sum / len(class_indices)
    return alpha * inter + beta * intra, intra, inter


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def _time_ms(fn: Callable[[], object], min_run_time: float, warm_up: bool = True) -> float:
    """Median wall time of ``fn()`` in ms, with the default (not Timer's 1) thread count."""
    if warm_up:
        fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def _interleaved_ms(fns: tuple[Callable[[], object], ...], min_run_time: float) -> list[float]:
    """Median wall time in ms of each of ``fns``, timed in interleaved rounds so that a slow spell
    of the machine (other processes, page faults) hits all of them alike."""
    rounds = 5
    times: list[list[float]] = [[] for _ in fns]
    for round_number in range(rounds):
        for fn, fn_times in zip(fns, times, strict=True):
            fn_times.append(_time_ms(fn, min_run_time / rounds, warm_up=round_number == 0))
    return [statistics.median(fn_times) for fn_times in times]


def _gram_floor(proxies: Tensor) -> Tensor:
    unit = F.normalize(proxies, dim=1)
    return (unit @ unit.T).sum()


def _hugnc_loss(criterion: HUGLoss, features: Tensor, proxies: Tensor, targets: Tensor) -> Tensor:
    return criterion(features, proxies, targets).loss


def _loop_loss(variant: str, *args: Tensor | float) -> Tensor:
    return loop_hug_loss(variant, *args)[0]


def _fwd_bwd(loss_fn: Callable[[], Tensor], inputs: tuple[Tensor, ...]) -> Callable[[], object]:
    return lambda: torch.autograd.grad(loss_fn(), inputs)


@dataclass
class Row:
    num_classes: int
    variant: str
    hugnc_ms: float
    loop_ms: float
    floor_ms: float
    max_abs_diff: float

    @property
    def loop_ratio(self) -> float:
        return self.loop_ms / self.hugnc_ms

    @property
    def floor_ratio(self) -> float:
        return self.hugnc_ms / self.floor_ms


def bench_loss_table(
    num_classes: tuple[int, ...] = (10, 100, 1000),
    batch_size: int = 512,
    dim: int = 512,
    variants: tuple[str, ...] = VARIANTS,
    min_run_time: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> list[Row]:
    """Time hugnc, the per-class loop and the Gram floor (fwd+bwd, float32 on ``device``) side
    by side (Timer synchronizes CUDA around each measurement); hugnc and the floor, whose ratio
    is a goal, interleaved."""
    rows = []
    for num in num_classes:
        gen = torch.Generator().manual_seed(seed + num)
        features = torch.randn(batch_size, dim, generator=gen).to(device).requires_grad_()
        bound = 1.0 / dim**0.5
        proxies = ((2 * torch.rand(num, dim, generator=gen) - 1) * bound).to(device)
        proxies.requires_grad_()
        targets = torch.randint(0, num, (batch_size,), generator=gen).to(device)

        floor = _fwd_bwd(partial(_gram_floor, proxies), (proxies,))
        for variant in variants:
            alpha, beta = PAPER_WEIGHTS[variant]
            criterion = HUGLoss(variant, alpha=alpha, beta=beta)

            args = (features, proxies, targets)
            with torch.no_grad():
                ours, theirs = criterion(*args), loop_hug_loss(variant, *args, alpha, beta)
                diff = max((a - b).abs().item() for a, b in zip(ours, theirs, strict=True))
            inputs = (features, proxies)
            hugnc = _fwd_bwd(partial(_hugnc_loss, criterion, *args), inputs)
            loop = _fwd_bwd(partial(_loop_loss, variant, *args, alpha, beta), inputs)
            hugnc_ms, floor_ms = _interleaved_ms((hugnc, floor), min_run_time)
            rows.append(
                Row(
                    num_classes=num,
                    variant=variant,
                    hugnc_ms=hugnc_ms,
                    loop_ms=_time_ms(loop, min_run_time),
                    floor_ms=floor_ms,
                    max_abs_diff=diff,
                )
            )
    return rows


def format_loss_table(rows: list[Row], batch_size: int, dim: int) -> str:
    header = (
        f"HUG loss fwd+bwd, CPU float32, B={batch_size}, d={dim} "
        f"(median ms; goals: loop/hugnc >= {GOAL_VS_LOOP:g}x at K >= 100, "
        f"hugnc/floor <= {GOAL_VS_FLOOR:g}x at K = 1000)\n"
        f"{'K':>5} {'variant':>7} {'hugnc':>9} {'loop':>9} {'loop/hugnc':>11} "
        f"{'floor':>9} {'hugnc/floor':>12} {'max|diff|':>10}"
    )
    lines = [header, "-" * len(header.splitlines()[-1])]
    for r in rows:
        loop_goal = _mark(r.loop_ratio >= GOAL_VS_LOOP) if r.num_classes >= 100 else "   "
        floor_goal = _mark(r.floor_ratio <= GOAL_VS_FLOOR) if r.num_classes >= 1000 else "   "
        lines.append(
            f"{r.num_classes:>5} {r.variant:>7} {r.hugnc_ms:>9.3f} {r.loop_ms:>9.3f} "
            f"{r.loop_ratio:>7.1f}x {loop_goal} {r.floor_ms:>9.3f} {r.floor_ratio:>8.2f}x "
            f"{floor_goal} {r.max_abs_diff:>10.1e}"
        )
    return "\n".join(lines)


@dataclass
class StepRow:
    setting: str
    head: str
    step_ms: float
    ce_ms: float

    @property
    def ratio(self) -> float:
        return self.step_ms / self.ce_ms


def _train_step(
    backbone: torch.nn.Module,
    head: torch.nn.Module,
    loss_name: str,
    images: Tensor,
    targets: Tensor,
) -> Callable[[], object]:
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=2e-4)
    if loss_name == "ce":
        criterion = torch.nn.CrossEntropyLoss()

        def loss_fn() -> Tensor:
            return criterion(head.logits(backbone(images)), targets)
    else:
        alpha, beta = PAPER_WEIGHTS[loss_name]
        hug = HUGLoss(loss_name, alpha=alpha, beta=beta)

        def loss_fn() -> Tensor:
            features = backbone(images)
            head.logits(features)  # accuracy needs the logits every step, as in training
            return hug(features, head.classifier, targets).loss

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn().backward()
        optimizer.step()
        head.after_optimizer_step()

    return step


def bench_train_step_table(
    rounds: int = 5, steps_per_round: int = 5, seed: int = 0
) -> list[StepRow]:
    """CE head vs HUG heads on the same backbone and batch, interleaved rounds, median step time."""
    settings = {
        "LeNet++ 16-32-64 d=2, K=10, B=256, 1x28x28": (
            lambda: LeNetPlusPlus((1, 28, 28), 2, widths=(16, 32, 64), kernel_size=3),
            10,
            (256, 1, 28, 28),
        ),
        "CIFAR ResNet-18 d=512, K=100, B=32, 3x32x32": (
            lambda: CifarResNet(18, (3, 32, 32)),
            100,
            (32, 3, 32, 32),
        ),
    }
    rows = []
    for setting, (make_backbone, num_classes, shape) in settings.items():
        gen = torch.Generator().manual_seed(seed)
        images = torch.randn(*shape, generator=gen)
        targets = torch.randint(0, num_classes, (shape[0],), generator=gen)
        steps = {}
        for name in ("ce", *VARIANTS):
            torch.manual_seed(seed)
            backbone = make_backbone()
            head_cls = LinearHead if name == "ce" else ProxyHead
            head = head_cls(backbone.feature_dim, num_classes)
            steps[name] = _train_step(backbone, head, name, images, targets)
            steps[name]()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(steps_per_round):
                    step()
                times[name].append((time.perf_counter() - start) / steps_per_round * 1e3)
        ce_ms = statistics.median(times["ce"])
        rows += [StepRow(setting, name, statistics.median(t), ce_ms) for name, t in times.items()]
    return rows


def format_step_table(rows: list[StepRow]) -> str:
    header = (
        f"training step, CE head vs HUG heads (median ms over interleaved rounds; goal: "
        f"HUG/CE <= {GOAL_STEP_VS_CE:g}x)\n"
        f"{'setting':<44} {'head':>5} {'step ms':>9} {'vs CE':>8}"
    )
    lines = [header, "-" * len(header.splitlines()[-1])]
    for r in rows:
        goal = "" if r.head == "ce" else _mark(r.ratio <= GOAL_STEP_VS_CE)
        lines.append(f"{r.setting:<44} {r.head:>5} {r.step_ms:>9.2f} {r.ratio:>7.3f}x {goal}")
    return "\n".join(lines)


def _mark(ok: bool) -> str:
    return " ok" if ok else "MISS"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short timing runs (noisier)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's default")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = bench_loss_table(
        batch_size=args.batch_size, dim=args.dim, min_run_time=0.2 if args.quick else 1.0
    )
    print(format_loss_table(rows, args.batch_size, args.dim))
    print()
    print(format_step_table(bench_train_step_table(rounds=3 if args.quick else 7)))


if __name__ == "__main__":
    main()
