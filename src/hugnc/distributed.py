"""The global batch under DDP: a differentiable all_gather for losses that need every sample.

Launching ranks (Hydra, SLURM) is :mod:`hugnc.launching`'s; this module is what the
Lightning module needs at training time.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0 whose backward returns this rank's slice of the summed gradient.

    Every rank computes the same loss on the gathered batch (same samples, same synchronized
    parameters), so the gradient reaching the gathered tensor is the same on every rank and its sum
    over ranks is ``world_size`` times it: the backward scales this rank's slice instead of
    all-reducing (no collective in the backward). DDP's averaging of parameter gradients then gives
    exactly the single-process gradient. Works on gloo (CPU) as well as NCCL.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(pieces, tensor.contiguous())
        ctx.rank, ctx.size, ctx.world = dist.get_rank(), tensor.shape[0], len(pieces)
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size] * ctx.world


def gather_batch(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` ``[b, ...]`` from all ranks to ``[world * b, ...]`` (rank order).

    Differentiable; the identity without an initialized process group. All ranks must pass the
    same ``b`` (DistributedSampler pads the last batch so they do).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    if tensor.requires_grad:
        return _GatherWithGrad.apply(tensor)
    pieces = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(pieces, tensor.contiguous())
    return torch.cat(pieces)
