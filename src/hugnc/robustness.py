"""Adversarial robustness with torchattacks: L-inf FGSM and PGD, clean and robust accuracy.

No Lightning, Hydra or W&B here: the callback (:class:`hugnc.callbacks.AdversarialRobustness`)
and ``hugnc-attack RUN_DIR`` (:mod:`hugnc.tools.attack`) are thin layers over
:func:`robust_accuracy`.

Normalization (torchattacks >= 3.5)
-----------------------------------
hugnc's datamodules return *normalized* images ``(x - mean) / std``, and models are trained on
them. Attack budgets (``eps``, ``alpha``) are defined in pixel space, where images lie in [0, 1].
torchattacks handles exactly this with ``Attack.set_normalization_used(mean, std)``: the attack
is then called with normalized images, maps them back to pixels in [0, 1]
(``x * std + mean``), perturbs and clamps there, normalizes before every model call, and returns
normalized adversarial images. So:

- the attacked model is :class:`LogitsModel` (backbone + ``head.logits``: the model on
  normalized inputs, exactly ``HUGClassifier.forward``);
- batches come straight from the datamodule's loaders, no separate [0, 1] data path;
- ``mean``/``std`` come from the datamodule (:func:`normalization_stats`).

:func:`to_pixels` / :func:`from_pixels` are the same maps, for checks and for measuring the
perturbation actually applied (``max_linf``, in pixel units, <= ``eps``).

Logits
------
Both heads' logits go into torchattacks' cross-entropy alike: ``W f + b`` (CE head) or
``scale * cos(f, w_c)`` (HUG proxy head, ``head.scale``, default 16). Accuracies ignore the scale
(argmax); the attack's gradient does not: the scale sets how saturated the softmax is, hence which
wrong classes the CE gradient pushes towards.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from hugnc.models.heads import Head

#: The attacks :func:`build_attack` knows (L-inf).
ATTACKS = ("fgsm", "pgd")
#: CIFAR's usual budget: eps 8/255, PGD step 2/255.
DEFAULT_EPS = 8 / 255
DEFAULT_ALPHA = 2 / 255
#: The default attacks of the callback and of ``hugnc-attack``.
DEFAULT_ATTACKS = ("fgsm", "pgd10", "pgd20")

_SHORT = re.compile(r"^(fgsm|pgd)(\d*)$")
_FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")


def parse_budget(value: float | int | str) -> float:
    """A budget as a float: a number, or a fraction string such as ``"8/255"``.

    Raises:
        ValueError: not a number, not a fraction, or outside [0, 1] (pixel units: ``8`` is a
            slip for ``8/255``, and anything above 1 allows every image).
    """
    if isinstance(value, str):
        match = _FRACTION.match(value)
        try:
            number = float(match.group(1)) / float(match.group(2)) if match else float(value)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"not a number or fraction like 8/255: {value!r}") from None
    else:
        number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"attack budgets must be finite and >= 0, got {value!r}")
    if number > 1:
        raise ValueError(
            f"attack budgets are in [0, 1] pixel units (images lie in [0, 1]), got {value!r}; "
            f"for {value} of 255 levels write {value}/255"
        )
    return number


@dataclass(frozen=True)
class AttackSpec:
    """One L-inf attack.

    Attributes:
        name: ``"fgsm"`` or ``"pgd"``.
        eps: maximum perturbation per pixel, in [0, 1] pixel units.
        alpha: PGD step size (pixel units); FGSM ignores it.
        steps: PGD iterations (0: no step, the clean images unless ``random_start``); FGSM: 1.
        random_start: PGD starts from a uniform point in the eps-ball.
        label: name in logs and tables; default ``fgsm`` / ``pgd<steps>``.
    """

    name: str
    eps: float = DEFAULT_EPS
    alpha: float = DEFAULT_ALPHA
    steps: int = 10
    random_start: bool = True
    label: str = ""

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"attack name must be one of {ATTACKS}, got {self.name!r}")
        if self.steps < 0:
            raise ValueError(f"attack steps must be >= 0, got {self.steps}")
        for name in ("eps", "alpha"):
            object.__setattr__(self, name, parse_budget(getattr(self, name)))
        if self.name == "fgsm":
            object.__setattr__(self, "steps", 1)
            object.__setattr__(self, "random_start", False)
        if not self.label:
            label = "fgsm" if self.name == "fgsm" else f"pgd{self.steps}"
            object.__setattr__(self, "label", label)

    def describe(self) -> str:
        """E.g. ``pgd20: eps=0.03137 alpha=0.007843 steps=20 random start``."""
        if self.name == "fgsm":
            return f"{self.label}: eps={self.eps:.4g}"
        start = "random start" if self.random_start else "no random start"
        return f"{self.label}: eps={self.eps:.4g} alpha={self.alpha:.4g} steps={self.steps} {start}"


def parse_attacks(
    entries: Iterable[str | Mapping[str, Any]],
    eps: float | str = DEFAULT_EPS,
    alpha: float | str = DEFAULT_ALPHA,
    random_start: bool = True,
) -> list[AttackSpec]:
    """Attack specs from short names or mappings; missing budgets take the shared defaults.

    Args:
        entries: ``"fgsm"``, ``"pgd"`` (10 steps), ``"pgd20"`` (20 steps), or mappings with the
            fields of :class:`AttackSpec` (``name`` required; e.g. ``{name: pgd, steps: 50,
            eps: 0.3}``).
        eps, alpha, random_start: defaults for entries that do not set them (numbers or
            fractions such as ``"8/255"``).

    Raises:
        ValueError: unknown attack, bad field, or two attacks with the same label.
    """
    shared = {"eps": parse_budget(eps), "alpha": parse_budget(alpha), "random_start": random_start}
    specs = []
    for entry in entries:
        if isinstance(entry, str):
            match = _SHORT.match(entry.strip().lower())
            if match is None:
                raise ValueError(f"unknown attack {entry!r}: use fgsm, pgd or pgd<steps>")
            fields: dict[str, Any] = {"name": match.group(1)}
            if match.group(2):
                fields["steps"] = int(match.group(2))
        else:
            fields = dict(entry)
            unknown = set(fields) - set(AttackSpec.__dataclass_fields__)
            if unknown or "name" not in fields:
                raise ValueError(
                    f"attack entry {entry!r}: needs 'name', allows only "
                    f"{sorted(AttackSpec.__dataclass_fields__)}"
                )
        specs.append(AttackSpec(**{**shared, **fields}))
    labels = [spec.label for spec in specs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"attack labels must be unique (set 'label'), got {labels}")
    return specs


# ---------------------------------------------------------------------------------------------
# Normalization
# ---------------------------------------------------------------------------------------------

Stats = tuple[tuple[float, ...], tuple[float, ...]]


def normalization_stats(datamodule: Any) -> Stats:
    """Per-channel ``(mean, std)`` of pixels in [0, 1] that ``datamodule``'s images are normalized
    with: its ``mean``/``std`` (every hugnc datamodule has them).

    Raises:
        ValueError: the datamodule has none (pass ``mean``/``std`` explicitly).
    """
    mean, std = getattr(datamodule, "mean", ()), getattr(datamodule, "std", ())
    if not (len(mean) and len(std)):
        raise ValueError(
            f"{type(datamodule).__name__} has no normalization statistics (mean/std "
            "attributes): pass mean and std explicitly"
        )
    return tuple(map(float, mean)), tuple(map(float, std))


def _channel_view(values: Sequence[float], like: Tensor) -> Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def to_pixels(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Normalized ``[B, C, H, W]`` -> pixels ``x * std + mean`` in [0, 1] (clamped: float
    rounding can leave 1e-7 outside)."""
    return (images * _channel_view(std, images) + _channel_view(mean, images)).clamp_(0.0, 1.0)


def from_pixels(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Pixels ``[B, C, H, W]`` in [0, 1] -> normalized ``(x - mean) / std``."""
    return (pixels - _channel_view(mean, pixels)) / _channel_view(std, pixels)


# ---------------------------------------------------------------------------------------------
# Model and attacks
# ---------------------------------------------------------------------------------------------


class LogitsModel(nn.Module):
    """The attacked model: normalized images ``[B, C, H, W]`` -> logits ``[B, K]``.

    ``head.logits(backbone(images))`` of a :class:`hugnc.module.HUGClassifier` (or any module
    with ``backbone`` and ``head``), without the LightningModule around it, so torchattacks sees
    a plain ``nn.Module``. Parameters are shared, not copied. Put it in eval mode (torchattacks
    restores the training mode it finds after every attack).
    """

    backbone: nn.Module
    head: Head

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.backbone = cast(nn.Module, module.backbone)
        self.head = cast(Head, module.head)

    def forward(self, images: Tensor) -> Tensor:
        return self.head.logits(self.backbone(images))


def build_attack(
    model: nn.Module, spec: AttackSpec, mean: Sequence[float], std: Sequence[float]
) -> Any:
    """The torchattacks attack of ``spec`` on ``model``, normalization set (module docstring).

    Called with normalized images and labels, it returns normalized adversarial images.
    """
    import torchattacks  # ~1 s to import: only when attacks are built

    if spec.name == "fgsm":
        attack = torchattacks.FGSM(model, eps=spec.eps)
    else:
        attack = torchattacks.PGD(
            model, eps=spec.eps, alpha=spec.alpha, steps=spec.steps, random_start=spec.random_start
        )
    attack.set_normalization_used(mean=list(mean), std=list(std))
    return attack


@dataclass
class RobustnessResult:
    """Correct counts of a :func:`robust_accuracy` pass (sums: add them across DDP ranks).

    Attributes:
        specs: the attacks, in order.
        total: samples evaluated.
        clean_correct: correct predictions on the clean images.
        robust_correct: ``{label: correct predictions on that attack's images}``.
        max_linf: ``{label: largest pixel-space L-inf perturbation applied}`` (<= eps).
        seconds: ``{label: wall seconds}`` spent in each attack.
    """

    specs: list[AttackSpec]
    total: int = 0
    clean_correct: int = 0
    robust_correct: dict[str, int] = field(default_factory=dict)
    max_linf: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def clean_acc(self) -> float:
        return self.clean_correct / self.total if self.total else math.nan

    def robust_acc(self, label: str) -> float:
        return self.robust_correct[label] / self.total if self.total else math.nan

    def metrics(self, prefix: str = "test/") -> dict[str, float]:
        """``{<prefix>clean_acc, <prefix>robust_acc/<label>}``: the logged names."""
        out = {f"{prefix}clean_acc": self.clean_acc}
        out.update({f"{prefix}robust_acc/{s.label}": self.robust_acc(s.label) for s in self.specs})
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable summary (NaN -> ``None``)."""

        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        return {
            "samples": self.total,
            "clean_acc": finite(self.clean_acc),
            "attacks": {
                spec.label: {
                    **asdict(spec),
                    "robust_acc": finite(self.robust_acc(spec.label)),
                    "max_linf": self.max_linf.get(spec.label),
                    "seconds": self.seconds.get(spec.label),
                }
                for spec in self.specs
            },
        }

    def table(self) -> str:
        """A fixed-width text table: clean, then one row per attack."""
        lines = [f"{'attack':<10} {'eps':>8} {'alpha':>8} {'steps':>5} {'start':>6} {'acc':>8}"]
        lines.append(f"{'clean':<10} {'-':>8} {'-':>8} {'-':>5} {'-':>6} {self.clean_acc:>8.4f}")
        for spec in self.specs:
            alpha = f"{spec.alpha:>8.4g}" if spec.name == "pgd" else f"{'-':>8}"
            start = ("rand" if spec.random_start else "none") if spec.name == "pgd" else "-"
            lines.append(
                f"{spec.label:<10} {spec.eps:>8.4g} {alpha} {spec.steps:>5} {start:>6} "
                f"{self.robust_acc(spec.label):>8.4f}"
            )
        lines.append(f"({self.total} test images; eps and alpha in [0, 1] pixel units)")
        return "\n".join(lines)


def robust_accuracy(
    module: nn.Module,
    batches: Iterable,
    specs: Sequence[AttackSpec],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> RobustnessResult:
    """Clean and robust accuracy of ``module`` on ``batches`` under every attack of ``specs``.

    Each batch ``(images [B, C, H, W] normalized, targets [B])`` is attacked by every attack as a
    whole (torchattacks is batched); the module is in eval mode throughout (mode restored after),
    and gradients are enabled even if the caller runs under ``no_grad``/``inference_mode``. PGD's
    random start uses torch's global RNG (seed it for reproducible numbers).

    Args:
        module: has ``backbone`` and ``head`` (a :class:`~hugnc.module.HUGClassifier`).
        batches: iterable of normalized ``(images, targets)``.
        specs: attacks (:func:`parse_attacks`).
        mean, std: the images' normalization (:func:`normalization_stats`).
        device: where to compute; default the module's device.
        forward_context: context around the clean and adversarial evaluations (e.g. Lightning's
            precision context); the attacks themselves run in float32 (autocast off).
    """
    # eval() on the wrapper too: torchattacks puts a model that was in training mode back into
    # training mode after each attack (BatchNorm would then use batch statistics).
    model = LogitsModel(module).eval()
    device = torch.device(device) if device is not None else next(module.parameters()).device
    result = RobustnessResult(list(specs))
    seconds = {spec.label: 0.0 for spec in specs}
    total = 0
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # Made here, not under the caller's inference_mode: inference tensors can neither be
            # updated in place nor enter autograd (torchattacks' mean/std tensors).
            attacks = [(spec, build_attack(model, spec, mean, std)) for spec in specs]
            correct = {
                spec.label: torch.zeros((), dtype=torch.long, device=device) for spec in specs
            }
            linf = {spec.label: torch.zeros((), device=device) for spec in specs}
            clean_correct = torch.zeros((), dtype=torch.long, device=device)
            for batch in batches:
                # clone(): batches made under inference_mode cannot enter autograd.
                images = batch[0].to(device).clone()
                targets = torch.as_tensor(batch[1]).to(device).clone()
                with torch.no_grad(), forward_context():
                    clean_correct += (model(images).argmax(dim=1) == targets).sum()
                pixels = to_pixels(images, mean, std)
                for spec, attack in attacks:
                    start = _now(device)
                    # The attack's input gradients in float32 whatever the training precision:
                    # under float16 autocast (16-mixed, no loss scaling here) they underflow to
                    # zero, the attack stalls and robust accuracy is over-reported.
                    with torch.autocast(device_type=device.type, enabled=False):
                        adversarial = attack(images, targets)
                    with torch.no_grad():
                        with forward_context():
                            logits = model(adversarial)
                        correct[spec.label] += (logits.argmax(dim=1) == targets).sum()
                        moved = (to_pixels(adversarial, mean, std) - pixels).abs().amax()
                        linf[spec.label] = torch.maximum(linf[spec.label], moved)
                    seconds[spec.label] += _now(device) - start
                total += len(targets)
    finally:
        module.train(was_training)
    result.total = total
    result.clean_correct = int(clean_correct)
    result.robust_correct = {label: int(value) for label, value in correct.items()}
    result.max_linf = {label: float(value) for label, value in linf.items()}
    result.seconds = seconds
    return result


def _now(device: torch.device) -> float:
    """Wall time, after the device's queued work (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


__all__ = [
    "ATTACKS",
    "DEFAULT_ALPHA",
    "DEFAULT_ATTACKS",
    "DEFAULT_EPS",
    "AttackSpec",
    "LogitsModel",
    "RobustnessResult",
    "build_attack",
    "from_pixels",
    "normalization_stats",
    "parse_attacks",
    "parse_budget",
    "robust_accuracy",
    "to_pixels",
]
