"""The intra-class term of HUG (official form, shared by all three variants)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def intra_class_distance(features: Tensor, proxies: Tensor, targets: Tensor) -> Tensor:
    """Class-balanced mean distance of normalized features to their detached normalized proxy.

    ``(1/|C_B|) sum_{c in C_B} (1/n_c) sum_{i: y_i = c} ||x_i - sg(u_c)||_2`` where C_B are the
    classes present in the batch. Vectorized: each sample is weighted by ``1 / (n_{y_i} |C_B|)``,
    which needs no boolean indexing and no host-device sync on GPUs.

    Args:
        features: ``[B, d]`` backbone features, any norm.
        proxies: ``[K, d]`` class proxies, any norm; detached here.
        targets: ``[B]`` int64 labels in ``[0, K)``.

    Returns:
        Scalar tensor in [0, 2].
    """
    unit_features = F.normalize(features, dim=1)
    unit_proxies = F.normalize(proxies.detach().to(unit_features.dtype), dim=1)
    # vector_norm's backward is defined as 0 at a zero difference (a feature exactly on its proxy).
    distances = torch.linalg.vector_norm(unit_features - unit_proxies[targets], dim=1)
    # scatter_add_, not bincount: bincount reads the labels' min and max back to the host (two
    # device syncs per step on GPUs).
    class_counts = torch.zeros(proxies.shape[0], dtype=distances.dtype, device=targets.device)
    class_counts.scatter_add_(0, targets, torch.ones_like(distances))
    num_present = (class_counts > 0).sum()
    return (distances / class_counts[targets]).sum() / num_present
