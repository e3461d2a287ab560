"""Matplotlib figures from tensors (no Lightning, no W&B)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: runs on clusters and CI without a display

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure


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
    if features.shape[1] != 2 or classifier.shape[1] != 2:
        raise ValueError(
            "circle plot needs 2-D features and classifier, got "
            f"{tuple(features.shape)}, {tuple(classifier.shape)}"
        )
    unit = torch.nn.functional.normalize(features.float(), dim=1).cpu().numpy()
    directions = torch.nn.functional.normalize(classifier.detach().float(), dim=1).cpu().numpy()
    labels = targets.cpu().numpy()
    num_classes = directions.shape[0]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    colours = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")(np.arange(num_classes) % 20)
    radius = 1.0 + np.random.default_rng(0).uniform(-0.04, 0.04, size=len(unit))

    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.7", lw=1))
    for label in range(num_classes):
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
