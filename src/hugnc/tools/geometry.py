"""``hugnc-geometry RUN_DIR``: NC/GNC metrics and geometry pictures again from a run's checkpoint.

Rebuilds the run (:func:`hugnc.tools.runs.load_run`), measures the split the run's callback
measured (default train) with its two passes and the test set against the train class means,
exactly as :class:`hugnc.callbacks.NeuralCollapseMonitor` does, then prints a table and writes
``metrics.json`` and the pictures into ``RUN_DIR/geometry/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import OmegaConf

from hugnc import run_dir
from hugnc.data.subsets import SPLITS, split_loader
from hugnc.errors import one_line_errors
from hugnc.metrics import optimal_min_angle_deg
from hugnc.metrics.geometry import GeometryResult, compute_class_means, measure_geometry
from hugnc.plots import save_curves, save_figures
from hugnc.tools.runs import Run, load_run_from_args, run_dir_parser

DEFAULT_MAX_BATCHES = 10


def callback_settings(run: Run) -> dict[str, Any]:
    """The run's ``callbacks.neural_collapse`` settings ({} if the run had no such callback)."""
    node = OmegaConf.select(run.cfg, "callbacks.neural_collapse", default=None)
    if node is None:
        return {}
    return cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))  # a mapping node


def measure_run(
    run: Run,
    split: str | None = None,
    max_batches: int | str | None = "config",
    test: bool = True,
) -> dict[str, GeometryResult]:
    """NC/GNC of ``split`` (two passes) and, with ``test``, of the test set with train means.

    Args:
        split: default the run's callback split (else ``"train"``).
        max_batches: global batches per loader; ``"config"`` takes the run's callback value (else
            :data:`DEFAULT_MAX_BATCHES`); ``None``: whole splits.

    Returns:
        ``{split: result}`` plus ``{"test": result}`` (``split`` ``"test"`` is measured once, with
        the train means when ``test`` is set).
    """
    settings = callback_settings(run)
    split = split or settings.get("split", "train")
    if max_batches == "config":
        max_batches = settings.get("max_batches", DEFAULT_MAX_BATCHES)
    options: dict[str, Any] = {"max_batches": max_batches, "batch_size": settings.get("batch_size")}
    options["seed"] = settings.get("seed", 0)
    results: dict[str, GeometryResult] = {}
    if split != "test" or not test:
        results[split] = measure_geometry(
            run.module, split_loader(run.datamodule, split, **options)
        )
    if test:
        means = compute_class_means(run.module, split_loader(run.datamodule, "train", **options))
        results["test"] = measure_geometry(
            run.module, split_loader(run.datamodule, "test", **options), class_means=means
        )
    return results


def gnc_prediction(num_classes: int, feature_dim: int) -> str:
    """A few lines on what (generalized) neural collapse predicts for K classes in d dimensions."""
    K, d = num_classes, feature_dim
    optimum = optimal_min_angle_deg(K, d)
    if d + 1 >= K:
        return (
            f"K = {K} <= d + 1 = {d + 1}: a simplex ETF fits, so GNC coincides with NC. The "
            f"normalized centred class means and the proxies should become equiangular with "
            f"pairwise cosine -1/(K-1) = {-1 / (K - 1):.4f}, i.e. a minimum pairwise angle of "
            f"{optimum:.2f} degrees, and the features of each class should collapse onto their "
            "class direction (intra-class angle -> 0)."
        )
    if d == 2:
        return (
            f"K = {K} > d + 1 = 3: no simplex ETF exists in d = 2, so classic NC (NC2) cannot "
            f"hold. GNC predicts the maximally uniform arrangement instead: a regular {K}-gon on "
            f"the circle, every angular gap {optimum:.1f} degrees (the heatmap cannot reach "
            f"-1/(K-1) = {-1 / (K - 1):.3f} for all pairs), with each class collapsed onto "
            "its own direction."
        )
    return (
        f"K = {K} > d + 1 = {d + 1}: no simplex ETF exists, so classic NC2 cannot hold. GNC "
        "predicts class means and proxies spread as uniformly as possible on the sphere "
        "(minimum hyperspherical energy; maximal minimum angle, the Tammes problem, which has no "
        "closed form here) while each class collapses onto its own direction. Watch the minimum "
        "pairwise angle grow and the energy fall rather than the ETF distance reach 0."
    )


def metrics_table(results: dict[str, GeometryResult]) -> str:
    """A fixed-width text table: one row per metric, one column per measured split."""
    names = list(next(iter(results.values())).metrics)
    splits = list(results)
    width = max(len(n) for n in names)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{s:>12}" for s in splits)]
    for name in names:
        cells = []
        for split in splits:
            value = results[split].metrics.get(name, math.nan)
            cells.append(f"{value:>12.5g}" if math.isfinite(value) else f"{'n/a':>12}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def write_outputs(
    run: Run, results: dict[str, GeometryResult], output_dir: str | Path
) -> dict[str, Path]:
    """``metrics.json`` (NaN -> null), the pictures of every split and, when the run left a
    ``nc_history.json``, its curves, all in ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    class_names = getattr(run.datamodule, "classes", None)
    payload = {
        "checkpoint": str(run.checkpoint),
        "samples": {split: result.num_samples for split, result in results.items()},
        **{
            split: {k: (v if math.isfinite(v) else None) for k, v in result.metrics.items()}
            for split, result in results.items()
        },
    }
    paths = {"metrics": run_dir.metrics_file(output_dir)}
    paths["metrics"].write_text(json.dumps(payload, indent=2))
    for split, result in results.items():
        title = f"{split} features, {run.checkpoint.name}"
        for name, path in save_figures(result, output_dir, split, class_names, title).items():
            paths[f"{name}_{split}"] = path
    history_path = run.run_dir / "nc_history.json"
    if history_path.is_file():
        history = [
            {k: (math.nan if v is None else v) for k, v in entry.items()}
            for entry in json.loads(history_path.read_text())
        ]
        if history:
            paths.update(save_curves(history, output_dir))
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = run_dir_parser(
        "hugnc-geometry",
        "Recompute NC/GNC metrics and geometry pictures from a run's checkpoint.",
    )
    parser.add_argument(
        "--split", choices=SPLITS, default=None, help="split to measure (default: the run's)"
    )
    parser.add_argument(
        "--max-batches",
        default="config",
        help="global batches per split: an integer, 'all', or 'config' (the run's; default)",
    )
    parser.add_argument("--no-test", action="store_true", help="skip the test-set measurement")
    parser.add_argument("--data-dir", default=None, help="override the run's paths.data_dir")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/geometry")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def _max_batches(value: str, parser: argparse.ArgumentParser) -> int | str | None:
    if value in ("config", "all"):
        return None if value == "all" else value
    if not value.isdigit() or int(value) < 1:
        parser.error(f"--max-batches must be a positive integer, 'all' or 'config', got {value!r}")
    return int(value)


@one_line_errors("hugnc-geometry")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    max_batches = _max_batches(args.max_batches, parser)
    run = load_run_from_args(args, parser)
    results = measure_run(run, args.split, max_batches, test=not args.no_test)
    paths = write_outputs(run, results, args.out or run.run_dir / "geometry")
    num_classes, feature_dim = run.module.head.classifier.shape
    print(f"run: {run.run_dir}\ncheckpoint: {run.checkpoint}")
    print(", ".join(f"{s}: {r.num_samples} samples" for s, r in results.items()))
    print(metrics_table(results))
    prediction = gnc_prediction(num_classes, feature_dim)
    print(f"\nGNC for K = {num_classes}, d = {feature_dim}: {prediction}")
    print("\nwritten:\n" + "\n".join(f"  {path}" for path in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
