"""Optimization dynamics of scale-invariant networks (pure torch, no Lightning).

A weight tensor ``w`` whose layer output is batch-normalized leaves the network's function
unchanged when scaled: ``f(c w) = f(w)`` for any ``c > 0``. Its gradient is then orthogonal to
``w`` and scales as ``1 / ||w||``, so an SGD step of size ``lr`` rotates ``w`` by about
``lr ||g_unit|| / ||w||^2``: what matters is the *effective* step size ``lr / ||w||^2``, and weight
decay, by shrinking ``||w||``, raises it over time (van Laarhoven 2017; Li & Arora 2020). These
functions measure that: which weights are scale-invariant, their norms, the effective step size
and the angle they actually rotate per optimizer step (the direct measure, whatever the optimizer,
momentum and weight decay do).

All functions return tensors on the weights' device (no host reads), shapes given per function.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

_NORMALIZATIONS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
_LINEAR_MAPS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def scale_invariant_weights(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weights of ``model`` whose scale does not change its output, in registration order.

    A convolution or linear layer counts when the next leaf module registered after it is a
    normalization layer (BatchNorm, GroupNorm, LayerNorm): the layout of ``nn.Sequential`` stacks,
    torchvision's ResNets (``conv1``, ``bn1``; ``downsample = [conv, bn]``) and hugnc's LeNet++.
    Its bias, if any, is not scale-invariant and is left out.

    Returns:
        ``[(qualified name, parameter)]``; empty when the model has no normalization layers.
    """
    leaves = [
        (name, module) for name, module in model.named_modules() if not list(module.children())
    ]
    found = []
    for (name, module), (_, following) in itertools.pairwise(leaves):
        if isinstance(module, _LINEAR_MAPS) and isinstance(following, _NORMALIZATIONS):
            # A Parameter (torch types the attribute as Tensor).
            weight = cast(nn.Parameter, module.weight)
            found.append((f"{name}.weight" if name else "weight", weight))
    return found


def squared_norms(weights: Sequence[Tensor]) -> Tensor:
    """``[L]`` squared L2 norms of the ``L`` weight tensors (float32)."""
    if not weights:
        raise ValueError("squared_norms needs at least one weight tensor")
    return torch.stack([w.detach().float().pow(2).sum() for w in weights])


def effective_step_size(lr: float | Tensor, weights: Sequence[Tensor]) -> Tensor:
    """Mean over the ``L`` scale-invariant layers of ``lr / ||w_l||^2`` (scalar tensor).

    The step size an SGD update has on a scale-invariant layer's direction; the mean over layers
    (not ``lr / sum ||w_l||^2``) so it does not depend on how many layers there are.
    """
    return (lr / squared_norms(weights)).mean()


def angular_update(before: Sequence[Tensor], after: Sequence[Tensor]) -> Tensor:
    """``[L]`` angles in radians between each weight tensor before and after an update.

    ``2 atan2(||u - v||, ||u + v||)`` of the unit directions ``u``, ``v``: exact down to the tiny
    angles of one step, which ``arccos`` of the cosine loses.
    """
    if len(before) != len(after) or not before:
        raise ValueError(f"need matching non-empty weight lists, got {len(before)}, {len(after)}")
    angles = []
    for old, new in zip(before, after, strict=True):
        u = torch.nn.functional.normalize(old.detach().double().flatten(), dim=0)
        v = torch.nn.functional.normalize(new.detach().double().flatten(), dim=0)
        angles.append(
            2.0 * torch.atan2(torch.linalg.vector_norm(u - v), torch.linalg.vector_norm(u + v))
        )
    return torch.stack(angles).float()


__all__ = ["angular_update", "effective_step_size", "scale_invariant_weights", "squared_norms"]
