"""The unconstrained-features model (UFM): what a loss converges to, without a network.

``python -m hugnc.ufm [overrides]`` or ``hugnc-ufm`` (primary config ``conf/ufm.yaml``, any
``loss=`` of the ``loss`` group). The simulation of the official HUG code (``HUG_loss.py``,
``__main__``): free features ``H`` ``[K n, d]`` (n per class) and the head's classifier ``W``
``[K, d]`` (HUG proxies or linear weights) are the only parameters, both initialized
U(-1/sqrt(d), 1/sqrt(d)), and are trained together by SGD (lr 1.0, momentum 0.9, Nesterov, weight
decay 5e-4 on both; official: K=100, n=500, d=512, full batch, 200 x 100 steps). The loss and
the head are the training ones: :class:`hugnc.losses.HUGLoss` on ``(H, W)`` or cross-entropy on
``head.logits(H)``; ``head.after_optimizer_step()`` runs after every step (HUG proxies are
renormalized unless ``head.renormalize=false``; the official simulation does not renormalize).

Every ``log_every`` steps the NC/GNC metrics of :class:`hugnc.metrics.NeuralCollapse` are measured
on all of ``H`` (class means from ``H`` itself, so NC4 is the nearest-class-mean mismatch), with
the loss terms and the mean norms of ``H`` and ``W``. Outputs in the run directory
(``logs/ufm/runs/<stamp>/``): ``ufm.json`` (settings, history, final values), ``ufm_final.pt``
(final classifier and class means) and, with ``ufm.plots``, ``ufm_curves.png`` (metrics over
steps), ``class_cosines_ufm.png`` and, for d = 2 or 3, ``feature_geometry_ufm.png``.
"""

from __future__ import annotations

import json
import math
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict, cast

import hydra
import torch
from annotated_types import Ge
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from hugnc.arguments import (
    FeatureDim,
    NonNegative,
    NonNegativeInt,
    Positive,
    PositiveInt,
    check_fields,
)
from hugnc.config import config_dir
from hugnc.losses import Criterion
from hugnc.metrics import NeuralCollapse
from hugnc.models.heads import Head
from hugnc.preflight import run_checked

#: Rows per NeuralCollapse.update call (bounds the float64 copy in the metric).
MEASURE_CHUNK = 8192

#: Learning-rate schedules of :class:`UFMSettings`.
Schedule = Literal["constant", "cosine"]
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)

#: Columns of the printed table: (history key, header, format).
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("step", "step", "{:>7.0f}"),
    ("loss", "loss", "{:>9.4g}"),
    ("loss_inter", "inter", "{:>9.4g}"),
    ("loss_intra", "intra", "{:>9.4g}"),
    ("nc1", "nc1", "{:>9.3g}"),
    ("nc2_etf_classifier", "etf(W)", "{:>8.4f}"),
    ("nc3", "nc3", "{:>8.4f}"),
    ("gnc_proxies_min_angle_deg", "minang(W)", "{:>9.3f}"),
    ("gnc_means_min_angle_deg", "minang(M)", "{:>9.3f}"),
    ("gnc_intra_mean_cos", "intra_cos", "{:>9.5f}"),
    ("classifier_norm", "|w|", "{:>8.4g}"),
    ("feature_norm", "|h|", "{:>8.4g}"),
)


@dataclass
class UFMSettings:
    """The ``ufm`` node of ``conf/ufm.yaml``.

    Attributes:
        num_classes, samples_per_class, feature_dim: K, n, d.
        steps: optimizer steps.
        batch_size: samples per step (random, reshuffled every pass); ``None``: full batch.
            Weight decay and momentum still act on every feature at every step.
        log_every: measure every this many steps (and at step 0 and the last step).
        lr, momentum, nesterov, weight_decay: SGD on features and classifier.
        schedule: ``"constant"`` (official) or ``"cosine"`` (lr annealed to 0 over ``steps``:
            MHS's max-min objective is non-smooth, and with a constant lr its proxies keep
            oscillating around the optimum).
        device: torch device.
        seed: initialization and minibatch order.
        plots: write the pictures.
        max_points: features drawn in the d = 2 / 3 picture.
    """

    num_classes: Annotated[int, Ge(2)] = 100
    samples_per_class: PositiveInt = 500
    feature_dim: FeatureDim = 512
    steps: NonNegativeInt = 20000
    batch_size: PositiveInt | None = None
    log_every: PositiveInt = 1000
    lr: Positive = 1.0
    momentum: NonNegative = 0.9
    nesterov: bool = True
    weight_decay: NonNegative = 5e-4
    schedule: Schedule = "constant"
    device: str = "cpu"
    seed: NonNegativeInt = 0
    plots: bool = True
    max_points: PositiveInt = 5000

    def __post_init__(self) -> None:
        check_fields(self)


class UFMRunKeys(TypedDict):
    """The keys of ``conf/ufm.yaml`` that no ``_target_`` takes (for the config check)."""

    task_name: str
    ufm: UFMSettings
    loss: dict[str, Any]
    head: dict[str, Any]


class UnconstrainedFeatures(nn.Module):
    """Free features ``H`` ``[K n, d]`` with class-major labels ``[K n]``, and a head.

    Args:
        head: ``LinearHead`` or ``ProxyHead`` of ``hugnc.models`` (``logits``, ``classifier``
            ``[K, d]``, ``after_optimizer_step``), built for ``(d, K)``.
        num_classes, samples_per_class, feature_dim: K, n, d.
    """

    labels: Tensor
    head: Head

    def __init__(
        self, head: Head, num_classes: int, samples_per_class: int, feature_dim: int
    ) -> None:
        super().__init__()
        if tuple(head.classifier.shape) != (num_classes, feature_dim):
            raise ValueError(
                f"head classifier {tuple(head.classifier.shape)} != (K, d) = "
                f"({num_classes}, {feature_dim})"
            )
        bound = 1.0 / math.sqrt(feature_dim)
        total = num_classes * samples_per_class
        self.features = nn.Parameter(torch.empty(total, feature_dim).uniform_(-bound, bound))
        self.register_buffer(
            "labels", torch.arange(num_classes).repeat_interleave(samples_per_class)
        )
        self.head = head
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class

    def class_means(self) -> Tensor:
        """``[K, d]`` float64 class means of ``H`` (labels are class-major: a reshape)."""
        features = self.features.detach().double()
        return features.view(self.num_classes, self.samples_per_class, -1).mean(dim=1)


@torch.no_grad()
def measure(ufm: UnconstrainedFeatures, criterion: Criterion) -> dict[str, float]:
    """Loss terms on all of ``H``, NC/GNC metrics (:class:`NeuralCollapse`, class means from
    ``H``) and the mean norms ``feature_norm`` (rows of H) and ``classifier_norm`` (rows of W)."""
    head, features, labels = ufm.head, ufm.features, ufm.labels
    classifier = head.classifier
    out = {
        name: float(value) for name, value in criterion.loss_terms(features, labels, head).items()
    }
    metric = NeuralCollapse(ufm.num_classes, features.shape[1], class_means=ufm.class_means()).to(
        features.device
    )
    for start in range(0, len(labels), MEASURE_CHUNK):
        chunk = features[start : start + MEASURE_CHUNK]
        metric.update(chunk, labels[start : start + MEASURE_CHUNK], head.logits(chunk))
    out.update(metric.compute(classifier))
    out["feature_norm"] = float(features.norm(dim=1).mean())
    out["classifier_norm"] = float(classifier.norm(dim=1).mean())
    return out


def simulate(
    ufm: UnconstrainedFeatures,
    criterion: Criterion,
    settings: UFMSettings,
    on_measure: Callable[[dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``ufm`` (features and head) with ``criterion`` for ``settings.steps`` SGD steps.

    Returns:
        The measurements (:func:`measure` plus ``step`` and ``seconds`` since the start) at step
        0, every ``log_every`` steps and at the last step; each is also passed to ``on_measure``.
    """
    optimizer = torch.optim.SGD(
        ufm.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.nesterov,
        weight_decay=settings.weight_decay,
    )
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(settings.steps, 1))
        if settings.schedule == "cosine"
        else None
    )
    total = len(ufm.labels)
    batch_size = settings.batch_size or total
    generator = torch.Generator().manual_seed(settings.seed)
    order = torch.arange(total)
    position = total  # a new permutation at the first minibatch step
    history: list[dict[str, float]] = []
    start_time = time.perf_counter()

    def record(step: int) -> None:
        entry = {"step": float(step), **measure(ufm, criterion)}
        entry["seconds"] = time.perf_counter() - start_time
        history.append(entry)
        if on_measure is not None:
            on_measure(entry)

    features: Tensor
    for step in range(settings.steps):
        if step % settings.log_every == 0:
            record(step)
        if batch_size >= total:
            features, labels = ufm.features, ufm.labels
        else:
            if position + batch_size > total:
                order = torch.randperm(total, generator=generator)
                position = 0
            index = order[position : position + batch_size].to(ufm.labels.device)
            position += batch_size
            features, labels = ufm.features[index], ufm.labels[index]
        terms = criterion.loss_terms(features, labels, ufm.head)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        ufm.head.after_optimizer_step()
        if scheduler is not None:
            scheduler.step()
    record(settings.steps)
    return history


def format_row(entry: dict[str, float]) -> str:
    """One line of the table (``-`` for missing values)."""
    cells = []
    for key, header, fmt in TABLE_COLUMNS:
        value = entry.get(key, math.nan)
        width = max(len(header), int(fmt.split(">")[1].split(".")[0]))
        cells.append(fmt.format(value).rjust(width) if math.isfinite(value) else "-".rjust(width))
    return " ".join(cells)


def table_header() -> str:
    widths = [max(len(h), int(f.split(">")[1].split(".")[0])) for _, h, f in TABLE_COLUMNS]
    return " ".join(h.rjust(w) for (_, h, _), w in zip(TABLE_COLUMNS, widths, strict=True))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def save_plots(
    ufm: UnconstrainedFeatures, history: list[dict[str, float]], output_dir: Path, max_points: int
) -> list[Path]:
    """``ufm_curves.png`` (metrics over steps) and the geometry pictures of the final state."""
    import matplotlib.pyplot as plt

    from hugnc.plots import geometry_figures, nc_curves_figure

    paths = []
    figure = nc_curves_figure(
        [{**entry, "epoch": entry["step"]} for entry in history],
        title="unconstrained features: NC and GNC over SGD steps",
    )
    for ax in figure.axes:
        ax.set_xlabel("step")
    paths.append(output_dir / "ufm_curves.png")
    figure.savefig(paths[-1], dpi=100)
    plt.close(figure)

    means = ufm.class_means()
    generator = torch.Generator().manual_seed(0)
    keep = torch.randperm(len(ufm.labels), generator=generator)[:max_points]
    features = ufm.features.detach()[keep.to(ufm.labels.device)].float().cpu()
    figures = geometry_figures(
        features,
        ufm.labels[keep.to(ufm.labels.device)].cpu(),
        (means - means.mean(dim=0)).cpu(),
        ufm.head.classifier.detach().double().cpu(),
        title=f"UFM, step {int(history[-1]['step'])}",
    )
    names = {"features": "feature_geometry_ufm.png", "cosines": "class_cosines_ufm.png"}
    for kind, fig in figures.items():
        paths.append(output_dir / names[kind])
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def run_ufm(cfg: DictConfig) -> dict[str, Any]:
    """Build the head and loss of ``cfg`` (``head``, ``loss``: the ``loss`` group), simulate
    ``cfg.ufm``, print the table, write the outputs into ``cfg.paths.output_dir``.

    Returns:
        ``{"settings", "loss", "head", "history", "final"}`` (as written to ``ufm.json``).
    """
    from hydra.utils import instantiate

    settings = UFMSettings(**cast(dict[str, Any], OmegaConf.to_container(cfg.ufm, resolve=True)))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    K, n, d = settings.num_classes, settings.samples_per_class, settings.feature_dim
    head = instantiate(cfg.head, feature_dim=d, num_classes=K)
    criterion = instantiate(cfg.loss)
    ufm = UnconstrainedFeatures(head, K, n, d).to(settings.device)
    criterion = criterion.to(settings.device)
    loss_cfg = OmegaConf.to_container(cfg.loss, resolve=True)
    head_cfg = OmegaConf.to_container(cfg.head, resolve=True)
    print(f"UFM: K={K} classes x n={n} free features in d={d}; loss {loss_cfg}; head {head_cfg}")
    print(
        f"SGD lr={settings.lr} momentum={settings.momentum} nesterov={settings.nesterov} "
        f"wd={settings.weight_decay} ({settings.schedule}), {settings.steps} steps, batch "
        f"{settings.batch_size or 'full'}; W = {type(head).__name__}.classifier"
    )
    print(table_header(), flush=True)
    history = simulate(
        ufm, criterion, settings, on_measure=lambda entry: print(format_row(entry), flush=True)
    )
    final = history[-1]
    optimum = final["gnc_optimal_min_angle_deg"]
    if math.isfinite(optimum):
        print(
            f"min pairwise angle of W: {final['gnc_proxies_min_angle_deg']:.3f} deg, "
            f"known optimum for K={K}, d={d}: {optimum:.3f} deg"
        )
    else:
        print(f"no closed-form optimum min angle for K={K}, d={d} (K > d + 1 and d > 2)")
    payload = {
        "settings": asdict(settings),
        "loss": loss_cfg,
        "head": head_cfg,
        "seconds": final["seconds"],
        "history": history,
        "final": final,
    }
    (output_dir / "ufm.json").write_text(json.dumps(_json_safe(payload), indent=1))
    torch.save(
        {
            "classifier": head.classifier.detach().cpu(),
            "class_means": ufm.class_means().cpu(),
            "labels_per_class": n,
        },
        output_dir / "ufm_final.pt",
    )
    written = [output_dir / "ufm.json", output_dir / "ufm_final.pt"]
    if settings.plots:
        written += save_plots(ufm, history, output_dir, settings.max_points)
    print("written:\n" + "\n".join(f"  {path}" for path in written))
    return payload


__all__ = [
    "UFMSettings",
    "UnconstrainedFeatures",
    "measure",
    "run_ufm",
    "simulate",
]


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="ufm")
def _run(cfg: DictConfig) -> float:
    payload = run_ufm(cfg)
    print(f"run directory: {cfg.paths.output_dir}")
    return float(payload["final"]["loss"])


def main() -> None:
    run_checked(_run, config_name="ufm")


if __name__ == "__main__":
    main()
