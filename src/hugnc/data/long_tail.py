"""Long-tailed subsampling (LDAM-DRW style), generic over any dataset with integer targets."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

ImbType = Literal["exp", "step"]
IMB_TYPES: tuple[str, ...] = typing.get_args(ImbType)


def long_tail_counts(
    n_max: int, num_classes: int, imb_type: str = "exp", imb_factor: float = 0.01
) -> list[int]:
    """Per-class image counts of a long-tailed training set (LDAM's formula, Cao et al. 2019).

    - ``exp``: ``n_i = int(n_max * imb_factor ** (i / (K - 1)))``;
    - ``step``: the first ``K // 2`` classes keep ``n_max``, the rest ``int(n_max * imb_factor)``.

    ``imb_factor`` is 1 / imbalance ratio (0.01 for ratio 100); 1 gives a balanced set.
    E.g. ``long_tail_counts(5000, 10)`` (CIFAR-10-LT, ratio 100) is
    ``[5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]``.
    """
    if imb_type not in IMB_TYPES:
        raise ValueError(f"imb_type must be one of {', '.join(IMB_TYPES)}, got {imb_type!r}")
    if not (isinstance(imb_factor, int | float) and 0 < imb_factor <= 1):
        raise ValueError(
            f"imb_factor must be in (0, 1] (1 / imbalance ratio, e.g. 0.01 for ratio 100), "
            f"got {imb_factor!r}"
        )
    if num_classes < 2 or n_max < 1:
        raise ValueError(
            f"a long-tailed set needs num_classes >= 2 and n_max >= 1, got {num_classes}, {n_max}"
        )
    if imb_type == "exp":
        # The exact float expression of LDAM's get_img_num_per_cls, so the counts match it.
        return [int(n_max * (imb_factor ** (i / (num_classes - 1.0)))) for i in range(num_classes)]
    head = num_classes // 2
    return [n_max] * head + [int(n_max * imb_factor)] * (num_classes - head)


def sample_per_class(
    targets: Tensor, counts: Sequence[int], generator: torch.Generator | None = None
) -> Tensor:
    """Positions (ascending) of a seeded random choice of ``counts[c]`` samples of each class ``c``.

    Vectorized: one random permutation, a stable sort by class, and each sample's rank in its class.

    Raises:
        ValueError: a class has fewer samples than requested.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    wanted = torch.as_tensor(list(counts), dtype=torch.long)
    available = torch.bincount(targets, minlength=len(wanted))
    if len(available) > len(wanted):
        raise ValueError(f"targets hold class {len(available) - 1}, counts cover {len(wanted)}")
    short = (wanted > available).nonzero().flatten().tolist()
    if short:
        raise ValueError(
            f"classes {short} have {available[short].tolist()} samples, "
            f"fewer than the requested {wanted[short].tolist()}"
        )
    perm = torch.randperm(len(targets), generator=generator)
    shuffled = targets[perm]
    order = torch.argsort(shuffled, stable=True)
    grouped, classes = perm[order], shuffled[order]  # by class, random order within a class
    starts = torch.cumsum(available, 0) - available
    rank = torch.arange(len(targets)) - starts[classes]
    return grouped[rank < wanted[classes]].sort().values
