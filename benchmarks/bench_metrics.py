"""Benchmark of the NC/GNC metrics (run: ``python benchmarks/bench_metrics.py [--quick]``).

Part (a), :func:`bench_streaming_vs_naive`: K = 1000 classes, d = 512, N in {10k, 100k} synthetic
features (class mean + noise; classifier = noisy class means). Each case runs in a fresh
subprocess, which reports wall time and peak memory (resident set sampled every millisecond, minus
the resident set just before the work):

- ``streaming``: :class:`hugnc.metrics.NeuralCollapse` exactly as the callback runs it: pass 1 the
  class means (batches of 1024), pass 2 the metric with those means; the batches are regenerated
  from their seed in each pass (as a loader re-reads data), so no pass holds more than one batch;
- ``naive``: every feature in memory (float64), the definitions of HUG.md written directly
  (centred Sigma_W, N x K distance matrix for NC4, per-sample angles).

Both include generating the features and logits (the ``generate`` row: that alone, one pass). The
streaming and naive values are compared (max relative difference over all metrics).

Part (b), :func:`bench_callback_cost`: what the callback adds per measurement, on real
Fashion-MNIST when available (else random images): the default measurement (10 batches of 1024
training images) of :func:`hugnc.callbacks.measure_geometry` with the feature cache (the default:
one forward pass) and without (two forward passes), against a plain eval pass (backbone + head,
``no_grad``) over the same loader, for the quickstart LeNet++ (d = 2) and LeNet++ with d = 512;
and one quickstart training epoch (forward, HUG loss, backward, SGD step) for scale. The goal is
callback <= 1.2 x the plain eval pass. Times are the minimum of ``--repeats`` interleaved runs,
wall and CPU time (the ratios use CPU time, which other processes on the cores disturb less).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hugnc.metrics import NeuralCollapse
from hugnc.metrics.neural_collapse import add_by_class

K, D, BATCH = 1000, 512, 1024
GOAL_CALLBACK_VS_EVAL = 1.2


# ---------------------------------------------------------------------------------------------
# (a) streaming vs naive
# ---------------------------------------------------------------------------------------------


def _problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(K, D, generator=generator) * 2.0
    classifier = means + 0.5 * torch.randn(K, D, generator=generator)
    return means, classifier


def _batch(index: int, size: int, means: torch.Tensor, classifier: torch.Tensor):
    """Batch ``index`` of the synthetic data: the same tensors every time it is asked for."""
    generator = torch.Generator().manual_seed(1000 + index)
    targets = torch.randint(0, K, (size,), generator=generator)
    features = means[targets] + torch.randn(size, D, generator=generator)
    return features, targets, features @ classifier.T


def _batches(num: int, means: torch.Tensor, classifier: torch.Tensor):
    for start in range(0, num, BATCH):
        yield _batch(start // BATCH, min(BATCH, num - start), means, classifier)


def run_streaming(num: int) -> dict[str, float]:
    means, classifier = _problem()
    counts = torch.zeros(K, dtype=torch.long)
    sums = torch.zeros(K, D, dtype=torch.float64)
    for features, targets, _ in _batches(num, means, classifier):  # pass 1: class means
        counts += torch.bincount(targets, minlength=K)
        add_by_class(sums, targets, features.double())
    metric = NeuralCollapse(K, D, class_means=sums / counts[:, None])
    for features, targets, logits in _batches(num, means, classifier):  # pass 2
        metric.update(features, targets, logits)
    return metric.compute(classifier)


def run_generate(num: int) -> dict[str, float]:
    means, classifier = _problem()
    for _ in _batches(num, means, classifier):
        pass
    return {}


def _energies(prefix: str, vectors: torch.Tensor) -> dict[str, float]:
    unit = F.normalize(vectors, dim=1)
    sq_all = (2.0 - 2.0 * unit @ unit.T).clamp(min=0.0)
    i, j = torch.triu_indices(len(unit), len(unit), offset=1)
    sq = sq_all[i, j]
    ridge = 1e-6 * torch.eye(len(unit), dtype=unit.dtype)
    return {
        f"gnc_{prefix}_energy": sq.pow(-1.0).mean().item(),
        f"gnc_{prefix}_log_energy": (-0.5 * sq.log()).mean().item(),
        f"gnc_{prefix}_min_angle_deg": math.degrees(math.acos(1.0 - 0.5 * sq.min().item())),
        f"gnc_{prefix}_gram_logdet": torch.linalg.slogdet(torch.exp(-sq_all) + ridge)[1].item(),
        f"gnc_{prefix}_log_kernel_variance": sq.log().var(correction=0).item(),
    }


def run_naive(num: int) -> dict[str, float]:
    """All N features in memory, float64, HUG.md's formulas written out."""
    means_true, classifier = _problem()
    parts = list(_batches(num, means_true, classifier))
    H = torch.cat([p[0] for p in parts]).double()
    y = torch.cat([p[1] for p in parts])
    predictions = torch.cat([p[2].argmax(1) for p in parts])
    del parts
    W = classifier.double()
    counts = torch.bincount(y, minlength=K).double()
    mu = torch.zeros(K, D, dtype=torch.float64).index_add_(0, y, H) / counts[:, None]
    mu_g = H.mean(0)
    M = mu - mu_g
    centred = H - mu[y]
    sigma_w = centred.T @ centred / num
    sigma_b = M.T @ M / K
    pinv = torch.linalg.pinv(sigma_b, rtol=1e-10, hermitian=True)
    unit_m = F.normalize(M, dim=1)
    i, j = torch.triu_indices(K, K, offset=1)
    cos = (unit_m @ unit_m.T)[i, j]

    def etf(x: torch.Tensor) -> float:
        g = x @ x.T
        target = (torch.eye(K, dtype=g.dtype) - 1.0 / K) / math.sqrt(K - 1)
        return torch.linalg.matrix_norm(g / torch.linalg.matrix_norm(g) - target).item()

    nearest = torch.cdist(H, mu).argmin(1)  # N x K distances in memory
    unit_h = F.normalize(H, dim=1)
    cos_to_mean = (unit_h * F.normalize(mu, dim=1)[y]).sum(1).clamp(-1, 1)
    out = {
        "nc1": torch.trace(sigma_w @ pinv).item() / K,
        "nc1_trace_ratio": (torch.trace(sigma_w) / torch.trace(sigma_b)).item(),
        "nc2_equinorm_means": (M.norm(dim=1).std(correction=0) / M.norm(dim=1).mean()).item(),
        "nc2_equinorm_classifier": (W.norm(dim=1).std(correction=0) / W.norm(dim=1).mean()).item(),
        "nc2_equiangularity": cos.std(correction=0).item(),
        "nc2_max_angle": (cos + 1.0 / (K - 1)).abs().mean().item(),
        "nc2_etf_means": etf(M),
        "nc2_etf_classifier": etf(W),
        "nc3": (W / torch.linalg.matrix_norm(W) - M / torch.linalg.matrix_norm(M))
        .pow(2)
        .sum()
        .item(),
        "nc4": (nearest != predictions).double().mean().item(),
        "gnc_intra_angle_deg": math.degrees(torch.arccos(cos_to_mean).mean().item()),
    }
    out.update(_energies("means", M))
    out.update(_energies("proxies", W))
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child(case: str, num: int) -> None:
    """Run one case in this (fresh) process; print JSON with time, peak memory and values."""
    run = {"streaming": run_streaming, "naive": run_naive, "generate": run_generate}[case]
    run(2 * BATCH)  # warm-up: allocator, BLAS threads
    peak, stop = [_rss_bytes()], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    baseline = _rss_bytes()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    values = run(num)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    print(
        json.dumps({"seconds": seconds, "peak_mb": (peak[0] - baseline) / 2**20, "values": values})
    )


def _run_case(case: str, num: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", case, str(num)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def _max_rel_diff(a: dict[str, float], b: dict[str, float]) -> tuple[float, str]:
    worst, name = 0.0, ""
    for key in b:
        if key in a and math.isfinite(b[key]):
            diff = abs(a[key] - b[key]) / max(abs(b[key]), 1e-12)
            if diff > worst:
                worst, name = diff, key
    return worst, name


def bench_streaming_vs_naive(sizes: list[int]) -> list[str]:
    lines = [
        f"(a) K={K}, d={D}, synthetic; streaming = 2 passes in batches of {BATCH}",
        f"{'N':>8}  {'method':<10} {'time s':>8} {'peak MB':>9}  max rel diff vs naive",
    ]
    for num in sizes:
        results = {case: _run_case(case, num) for case in ("generate", "streaming", "naive")}
        diff, key = _max_rel_diff(results["streaming"]["values"], results["naive"]["values"])
        for case, result in results.items():
            note = f"{diff:.1e} ({key})" if case == "streaming" else ""
            if case == "generate":
                note = "data only, one pass"
            lines.append(
                f"{num:>8}  {case:<10} {result['seconds']:>8.2f} {result['peak_mb']:>9.0f}  {note}"
            )
    return lines


# ---------------------------------------------------------------------------------------------
# (b) callback cost vs a plain eval pass
# ---------------------------------------------------------------------------------------------


def _quickstart_module(feature_dim: int):
    from hydra import compose, initialize_config_dir

    from hugnc.config import config_dir
    from hugnc.train import build_module

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(
            "train",
            overrides=[
                "experiment=quickstart",
                f"model.feature_dim={feature_dim}",
                "paths.data_dir=.",
                "paths.output_dir=.",
            ],
        )
    return build_module(cfg, (1, 28, 28)), cfg


def _loader(batches: int, data_dir: str | None):
    from torch.utils.data import DataLoader, TensorDataset

    from hugnc.data import split_loader

    if data_dir:
        from hugnc.data import FashionMNISTDataModule

        datamodule = FashionMNISTDataModule(
            data_dir=data_dir, eval_batch_size=BATCH, batch_size=256
        )
        datamodule.setup("fit")
        return split_loader(datamodule, "train", max_batches=batches), datamodule
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batches * BATCH, 1, 28, 28, generator=generator)
    targets = torch.randint(0, 10, (batches * BATCH,), generator=generator)
    return DataLoader(TensorDataset(images, targets), batch_size=BATCH), None


def _plain_eval(module, loader) -> None:
    module.eval()
    with torch.no_grad():
        for images, _ in loader:
            module.head.logits(module.backbone(images))


def _train_epoch(module, datamodule) -> None:
    module.train()
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    for images, targets in datamodule.train_dataloader():
        features = module.backbone(images)
        loss = module.criterion(features, module.head.classifier, targets).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _best_times(runs: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """``{name: (min wall s, min CPU s of this process)}`` over ``repeats`` interleaved rounds."""
    for run in runs.values():  # warm-up
        run()
    best = {name: (math.inf, math.inf) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def bench_callback_cost(batches: int, repeats: int, data_dir: str | None, epoch: bool) -> list[str]:
    from hugnc.metrics import measure_geometry

    loader, datamodule = _loader(batches, data_dir)
    source = "Fashion-MNIST train" if datamodule else "random images"
    lines = [
        f"(b) one measurement: {batches} batches of {BATCH} {source} images, "
        f"{torch.get_num_threads()} threads; min over {repeats} rounds of wall and of CPU time "
        "(CPU time is what the ratio uses: other processes on the cores inflate wall time)",
        f"{'model':<12} {'plain eval s':>15} {'callback s':>15} {'ratio':>6} "
        f"{'no cache s':>15} {'ratio':>6}",
    ]
    for dim in (2, 512):
        module, _ = _quickstart_module(dim)
        best = _best_times(
            {
                "eval": lambda module=module: _plain_eval(module, loader),
                "callback": lambda module=module: measure_geometry(module, loader),
                "no_cache": lambda module=module: measure_geometry(module, loader, cache_bytes=0),
            },
            repeats,
        )

        def cell(name: str, best=best) -> str:
            return f"{best[name][0]:>6.2f} ({best[name][1]:>5.2f})"

        ratio = best["callback"][1] / best["eval"][1]
        flag = "" if ratio <= GOAL_CALLBACK_VS_EVAL else " (over goal)"
        lines.append(
            f"{'LeNet++ d=' + str(dim):<12} {cell('eval'):>15} {cell('callback'):>15} "
            f"{ratio:>6.2f} {cell('no_cache'):>15} "
            f"{best['no_cache'][1] / best['eval'][1]:>6.2f}{flag}"
        )
        if epoch and dim == 2 and datamodule is not None:
            wall, cpu = time.perf_counter(), time.process_time()
            _train_epoch(module, datamodule)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            lines.append(
                f"   one quickstart training epoch: {wall:.1f} s ({cpu:.1f} s CPU) -> the default "
                f"measurement adds {100 * best['callback'][1] / cpu:.1f}% per epoch"
            )
    lines.append("   wall s (CPU s); d=2 is the quickstart model; callback = default settings")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=10k only, 1 repeat, no epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    parser.add_argument("--batches", type=int, default=10, help="batches per measurement (b)")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("HUGNC_DATA_DIR", str(Path(__file__).resolve().parents[1] / "data")),
        help="Fashion-MNIST root for (b); random images if absent",
    )
    parser.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return
    sizes = [10_000] if args.quick else [10_000, 100_000]
    data_dir = args.data_dir
    if not (Path(data_dir) / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        data_dir = None
    lines = [*bench_streaming_vs_naive(sizes), ""] if args.part in ("a", "all") else []
    if args.part in ("b", "all"):
        lines += bench_callback_cost(
            args.batches, 1 if args.quick else args.repeats, data_dir, epoch=not args.quick
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
