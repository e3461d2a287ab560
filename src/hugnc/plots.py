"""Matplotlib figures from tensors (no Lightning, no W&B)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # headless: runs on clusters and CI without a display

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from hugnc.metrics.geometry import GeometryResult


def _class_colours(num_classes: int) -> np.ndarray:
    return plt.get_cmap("tab10" if num_classes <= 10 else "tab20")(np.arange(num_classes) % 20)


def _unit_inputs(
    kind: str,
    dim: int,
    features: torch.Tensor,
    targets: torch.Tensor,
    classifier: torch.Tensor,
    class_names: Sequence[str] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Normalized features, labels, unit classifier rows, class names and colours for a picture."""
    if features.shape[1] != dim or classifier.shape[1] != dim:
        raise ValueError(
            f"{kind} plot needs {dim}-D features and classifier, got "
            f"{tuple(features.shape)}, {tuple(classifier.shape)}"
        )
    unit = torch.nn.functional.normalize(features.float(), dim=1).cpu().numpy()
    directions = torch.nn.functional.normalize(classifier.detach().float(), dim=1).cpu().numpy()
    num_classes = directions.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    return unit, targets.cpu().numpy(), directions, names, _class_colours(num_classes)


def circle_features_figure(
    features: torch.Tensor,
    targets: torch.Tensor,
    classifier: torch.Tensor,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """The GNC picture for d = 2: normalized features on the unit circle, classifier rows as arrows.

    Args:
        features: ``[N, 2]`` (normalized here); points are jittered radially for visibility.
        targets: ``[N]`` labels, colour per class.
        classifier: ``[K, 2]`` proxies or linear-head rows, unit arrows in their class colour.
        class_names: legend labels (default: class indices).
    """
    unit, labels, directions, names, colours = _unit_inputs(
        "circle", 2, features, targets, classifier, class_names
    )
    radius = 1.0 + np.random.default_rng(0).uniform(-0.04, 0.04, size=len(unit))

    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.7", lw=1))
    for label in range(len(directions)):
        members = labels == label
        ax.scatter(
            unit[members, 0] * radius[members],
            unit[members, 1] * radius[members],
            s=3,
            alpha=0.4,
            color=colours[label],
            label=names[label],
            rasterized=True,
        )
        ax.annotate(
            "",
            xy=directions[label] * 0.92,
            xytext=(0, 0),
            arrowprops={"arrowstyle": "-|>", "color": colours[label], "lw": 2.0},
        )
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="upper right", fontsize=7, markerscale=4, framealpha=0.8)
    ax.set_title(title or "normalized features (points) and classifier directions (arrows)")
    fig.tight_layout()
    return fig


def sphere_features_figure(
    features: torch.Tensor,
    targets: torch.Tensor,
    classifier: torch.Tensor,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """The GNC picture for d = 3: normalized features on the unit sphere, classifier rows as rays.

    Args:
        features: ``[N, 3]`` (normalized here).
        targets: ``[N]`` labels, colour per class.
        classifier: ``[K, 3]`` proxies or linear-head rows, drawn as unit rays in class colours.
        class_names: legend labels (default: class indices).
    """
    unit, labels, directions, names, colours = _unit_inputs(
        "sphere", 3, features, targets, classifier, class_names
    )

    fig = plt.figure(figsize=(7, 7))
    ax = fig.add_subplot(projection="3d")
    u, v = np.mgrid[0 : 2 * np.pi : 25j, 0 : np.pi : 13j]
    ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v), np.cos(v), color="0.85", lw=0.5)
    for label in range(len(directions)):
        members = labels == label
        ax.scatter(*unit[members].T, s=6, alpha=0.6, color=colours[label], label=names[label])
        ray = np.stack([np.zeros(3), directions[label] * 1.15])
        ax.plot(*ray.T, color=colours[label], lw=2.5)
        ax.scatter(*(directions[label] * 1.15), color=colours[label], s=40, marker="^")
    ax.set_box_aspect((1, 1, 1))
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(-1.15, 1.15)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_zticks([])
    ax.legend(loc="upper right", fontsize=7, markerscale=4, framealpha=0.8)
    ax.set_title(title or "normalized features (points) and classifier directions (rays)")
    fig.tight_layout()
    return fig


def _pairwise_cosines(vectors: torch.Tensor) -> np.ndarray:
    """``[K, K]`` cosines of the rows; rows that are all NaN (unseen classes) stay NaN."""
    unit = torch.nn.functional.normalize(vectors.detach().double(), dim=1)
    return (unit @ unit.T).cpu().numpy()


def cosine_heatmaps_figure(
    centred_means: torch.Tensor,
    classifier: torch.Tensor,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """Heatmaps of pairwise cosines of centred class means and of classifier rows, any d.

    The simplex-ETF value ``-1/(K-1)`` is marked on the colour bar and in the histogram of the
    off-diagonal cosines (third panel). Rows of ``centred_means`` that are NaN (classes without
    samples) are left blank and skipped in the histogram.

    Args:
        centred_means: ``[K, d]`` class means minus the global mean (``mu_c - mu_G``).
        classifier: ``[K, d]`` proxies or linear-head rows.
        class_names: tick labels (shown for K <= 20).
    """
    if centred_means.shape != classifier.shape or centred_means.ndim != 2:
        raise ValueError(
            "centred_means and classifier must both be [K, d], got "
            f"{tuple(centred_means.shape)}, {tuple(classifier.shape)}"
        )
    num_classes = classifier.shape[0]
    etf = -1.0 / (num_classes - 1)
    panels = {
        "centred class means": _pairwise_cosines(centred_means),
        "classifier rows / proxies": _pairwise_cosines(classifier),
    }
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    off_diagonal = ~np.eye(num_classes, dtype=bool)

    fig, axes = plt.subplots(
        1, 3, figsize=(17, 5.5), gridspec_kw={"width_ratios": [1, 1, 1.1]}, layout="constrained"
    )
    image = None
    for ax, (name, cosines) in zip(axes[:2], panels.items(), strict=True):
        image = ax.imshow(cosines, cmap="RdBu_r", vmin=-1.0, vmax=1.0, interpolation="nearest")
        values = cosines[off_diagonal]
        values = values[np.isfinite(values)]
        stats = f"off-diag mean {values.mean():.3f}, std {values.std():.3f}" if len(values) else ""
        ax.set_title(f"{name}\n{stats}", fontsize=10)
        if num_classes <= 20:
            ax.set_xticks(range(num_classes), names, rotation=90, fontsize=7)
            ax.set_yticks(range(num_classes), names, fontsize=7)
        else:
            ax.set_xlabel("class")
            ax.set_ylabel("class")
    assert image is not None  # the loop above drew both panels
    colourbar = fig.colorbar(image, ax=axes[1], fraction=0.046, pad=0.04, label="cosine")
    colourbar.ax.axhline(etf, color="k", lw=2)
    ticks = [t for t in (-1.0, -0.5, 0.0, 0.5, 1.0) if abs(t - etf) >= 0.1]
    colourbar.set_ticks(
        sorted([*ticks, etf]),
        labels=[f"ETF {t:.3f}" if t == etf else f"{t:g}" for t in sorted([*ticks, etf])],
    )
    hist_ax = axes[2]
    bins = np.linspace(-1.0, 1.0, 81)
    for (name, cosines), colour in zip(panels.items(), ("tab:blue", "tab:orange"), strict=True):
        values = cosines[off_diagonal]
        values = values[np.isfinite(values)]
        hist_ax.hist(values, bins=bins, alpha=0.6, color=colour, label=name)
    hist_ax.axvline(etf, color="k", ls="--", lw=1.5, label=f"simplex ETF -1/(K-1) = {etf:.3f}")
    hist_ax.set_xlabel("pairwise cosine (off-diagonal)")
    hist_ax.set_ylabel("pairs (ordered)")
    hist_ax.legend(fontsize=8)
    hist_ax.set_title("distribution of pairwise cosines", fontsize=10)
    fig.suptitle(title or f"pairwise cosines, K = {num_classes}")
    return fig


#: Panels of :func:`nc_curves_figure`: title, metric keys, log scale.
CURVE_PANELS: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("NC1 within-class variability", ("nc1", "nc1_trace_ratio"), True),
    (
        "NC2 equinorm / equiangularity",
        ("nc2_equinorm_means", "nc2_equinorm_classifier", "nc2_equiangularity", "nc2_max_angle"),
        False,
    ),
    ("NC2 ETF distance, NC3", ("nc2_etf_means", "nc2_etf_classifier", "nc3"), False),
    ("NC4 nearest-class-mean mismatch", ("nc4",), False),
    (
        "GNC min pairwise angle (deg)",
        ("gnc_means_min_angle_deg", "gnc_proxies_min_angle_deg"),
        False,
    ),
    ("GNC Riesz s=2 energy", ("gnc_means_energy", "gnc_proxies_energy"), True),
    ("GNC Gaussian-Gram log-det", ("gnc_means_gram_logdet", "gnc_proxies_gram_logdet"), False),
    ("GNC intra-class angle (deg)", ("gnc_intra_angle_deg",), False),
)


def nc_curves_figure(history: Sequence[dict[str, float]], title: str = "") -> Figure:
    """NC and GNC metrics over epochs: one panel per group of :data:`CURVE_PANELS`.

    Args:
        history: one dict per evaluation with an ``"epoch"`` key and the metric keys of
            :class:`hugnc.metrics.NeuralCollapse` (missing or NaN values are skipped).
            ``gnc_optimal_min_angle_deg``, when finite, is drawn as the optimum line.
    """
    if not history:
        raise ValueError("nc_curves_figure needs at least one evaluation")
    epochs = np.array([entry["epoch"] for entry in history], dtype=float)

    def series(key: str) -> np.ndarray:
        return np.array([entry.get(key, np.nan) for entry in history], dtype=float)

    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    for ax, (panel_title, keys, log_scale) in zip(axes.flat, CURVE_PANELS, strict=True):
        for key in keys:
            values = series(key)
            if np.isfinite(values).any():
                ax.plot(epochs, values, marker="o", ms=3, label=key)
        if keys[0].endswith("min_angle_deg"):
            optimum = series("gnc_optimal_min_angle_deg")
            if np.isfinite(optimum).any():
                ax.axhline(np.nanmax(optimum), color="k", ls="--", lw=1, label="known optimum")
        lines = ax.get_lines()
        positive = all((np.asarray(line.get_ydata()) > 0).all() for line in lines)
        if log_scale and lines and positive:
            ax.set_yscale("log")
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("epoch")
        if lines:
            ax.legend(fontsize=7)
    fig.suptitle(title or "neural collapse (NC) and generalized NC (GNC) over training")
    fig.tight_layout()
    return fig


def geometry_figures(
    features: torch.Tensor,
    targets: torch.Tensor,
    centred_means: torch.Tensor,
    classifier: torch.Tensor,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> dict[str, Figure]:
    """The geometry pictures that exist for this feature dimension d.

    Returns:
        ``"features"`` (d = 2: :func:`circle_features_figure`, d = 3:
        :func:`sphere_features_figure`; absent for other d) and ``"cosines"``
        (:func:`cosine_heatmaps_figure`, any d).
    """
    dim = classifier.shape[1]
    figures: dict[str, Figure] = {}
    if dim in (2, 3) and len(features):
        draw = circle_features_figure if dim == 2 else sphere_features_figure
        figures["features"] = draw(features, targets, classifier, class_names, title)
    figures["cosines"] = cosine_heatmaps_figure(centred_means, classifier, class_names, title)
    return figures


def sweep_heatmap_figure(
    means: Sequence[Sequence[float]],
    failed: Sequence[Sequence[int]],
    x_values: Sequence[str],
    y_values: Sequence[str],
    x_label: str,
    y_label: str,
    metric: str,
) -> Figure:
    """Heatmap of a sweep's ``metric`` (rows ``y_values``, columns ``x_values``).

    Cells show the mean over completed jobs; cells with failed jobs say so (``failed`` counts).
    """
    grid = np.array(means, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(x_values) + 2.5, 0.9 * len(y_values) + 1.8))
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", origin="lower", aspect="auto")
    fig.colorbar(image, ax=ax, label=metric)
    for row in range(grid.shape[0]):
        for col in range(grid.shape[1]):
            text = "" if np.isnan(grid[row, col]) else f"{grid[row, col]:.3f}"
            if failed[row][col]:
                text = f"{text}\n{failed[row][col]} failed".strip()
            ax.text(
                col,
                row,
                text,
                ha="center",
                va="center",
                fontsize=8,
                color="red" if failed[row][col] else "white",
            )
    ax.set_xticks(range(len(x_values)), x_values)
    ax.set_yticks(range(len(y_values)), y_values)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(f"{metric} over the sweep")
    fig.tight_layout()
    return fig


def search_scatter_figure(
    points: Sequence[tuple[float, float, float]],
    failed: Sequence[tuple[float, float]],
    x_label: str,
    y_label: str,
    metric: str,
    best: tuple[float, float] | None = None,
    labels: Sequence[str] = (),
) -> Figure:
    """The points a hyperparameter search tried, on log axes, coloured by ``metric``.

    Args:
        points: ``(x, y, metric value)`` of each completed trial (x, y > 0: log axes).
        failed: ``(x, y)`` of each failed trial, drawn as red crosses.
        best: ``(x, y)`` of the best trial, circled.
        labels: a short name per point (the trial's job number), written beside it.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    if points:
        xs, ys, values = (np.array(column, dtype=float) for column in zip(*points, strict=True))
        image = ax.scatter(xs, ys, c=values, cmap="viridis", s=45, edgecolors="black", zorder=2)
        fig.colorbar(image, ax=ax, label=metric)
        for x, y, label in zip(xs, ys, labels, strict=False):
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
    if failed:
        fx, fy = zip(*failed, strict=True)
        ax.scatter(fx, fy, marker="x", color="red", s=45, label="failed", zorder=2)
        ax.legend(loc="best", fontsize=8)
    if best is not None:
        ax.scatter(*best, s=220, facecolors="none", edgecolors="red", linewidths=1.5, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    title = f"{metric} over the search ({len(points)} completed, {len(failed)} failed)"
    ax.set_title(title + ("; best circled" if best is not None else ""), fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return fig


#: Panels of :func:`dynamics_curves_figure`: history key, title, log scale.
DYNAMICS_PANELS: tuple[tuple[str, str, bool], ...] = (
    ("weight_norm", "scale-invariant weight norm", False),
    ("effective_lr", "effective step size lr / ||w||^2", True),
    ("angular_update_deg", "angle rotated per step (deg)", True),
    ("feature_grad_norm", "gradient norm reaching the features", True),
    ("intra_distance", "intra distance to the class's classifier row", False),
    ("classifier_min_angle_deg", "classifier min pairwise angle (deg)", False),
)


def dynamics_curves_figure(
    histories: Sequence[dict[str, float]] | dict[str, Sequence[dict[str, float]]], title: str = ""
) -> Figure:
    """Training dynamics (``TrainingDynamicsMonitor``'s history) against optimizer steps.

    Args:
        histories: one run's history (a list of per-epoch dicts with ``"step"`` and the
            :data:`DYNAMICS_PANELS` keys), or ``{label: history}`` to compare runs in each panel.
    """
    runs = histories if isinstance(histories, dict) else {"": histories}
    if not any(runs.values()):
        raise ValueError("dynamics_curves_figure needs at least one epoch")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, panel_title, log_scale) in zip(axes.flat, DYNAMICS_PANELS, strict=True):
        for label, history in runs.items():
            steps = np.array([entry["step"] for entry in history], dtype=float)
            values = np.array(
                [np.nan if entry.get(key) is None else entry[key] for entry in history],
                dtype=float,
            )
            if np.isfinite(values).any():
                ax.plot(steps, values, marker="o", ms=2, label=label or None)
        if log_scale and ax.get_lines():
            ax.set_yscale("log")
        ax.set_title(panel_title, fontsize=10)
        ax.set_xlabel("optimizer step")
        if len(runs) > 1 and ax.get_lines():
            ax.legend(fontsize=7)
    fig.suptitle(title or "training dynamics (scale-invariant backbone weights)")
    fig.tight_layout()
    return fig


def save_figures(
    result: GeometryResult,
    output_dir: str | Path,
    split: str,
    class_names: Sequence[str] | None = None,
    title: str = "",
) -> dict[str, Path]:
    """Draw :func:`hugnc.plots.geometry_figures` of ``result`` into ``output_dir``.

    Files: ``feature_geometry_<split>.png`` (d = 2 or 3) and ``class_cosines_<split>.png``.

    Returns:
        ``{"feature_geometry" | "class_cosines": path}`` of the files written.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    figures = geometry_figures(
        result.features,
        result.targets,
        result.centred_means,
        result.classifier,
        class_names=class_names,
        title=title,
    )
    names = {"features": "feature_geometry", "cosines": "class_cosines"}
    paths = {}
    for kind, figure in figures.items():
        path = output_dir / f"{names[kind]}_{split}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths[names[kind]] = path
    return paths


def save_curves(history: Sequence[dict[str, float]], output_dir: str | Path) -> dict[str, Path]:
    """Write ``nc_history.json`` and ``nc_curves.png`` (NC/GNC over epochs) into ``output_dir``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    history_path = output_dir / "nc_history.json"
    # NaN is not JSON: undefined values become null.
    clean = [
        {k: (v if v is None or math.isfinite(v) else None) for k, v in entry.items()}
        for entry in history
    ]
    history_path.write_text(json.dumps(clean, indent=1))
    figure = nc_curves_figure(history)
    curves_path = output_dir / "nc_curves.png"
    figure.savefig(curves_path, dpi=100)
    plt.close(figure)
    return {"nc_history": history_path, "nc_curves": curves_path}
