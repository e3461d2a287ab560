"""Scale-invariant weights, effective step size and angular update against naive references."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from hugnc.metrics.dynamics import (
    angular_update,
    effective_step_size,
    scale_invariant_weights,
    squared_norms,
)
from hugnc.models import LeNetPlusPlus


def test_lenet_pp_convs_are_scale_invariant_and_the_feature_layer_is_not() -> None:
    torch.manual_seed(0)
    model = LeNetPlusPlus((1, 28, 28), 8, (4, 8, 8), 3, 2, True).train()
    found = scale_invariant_weights(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [w for _, w in found] == [m.weight for m in convs]
    assert all(name.endswith(".weight") and "fc" not in name for name, _ in found)
    images = torch.randn(16, 1, 28, 28)
    reference = model(images)
    with torch.no_grad():
        for _, weight in found:
            weight.mul_(3.0)
    # Batch norm in training mode: scaling every found weight changes nothing ...
    torch.testing.assert_close(model(images), reference, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        model.fc.weight.mul_(3.0)
    # ... while the (not normalized) feature layer does change the output.
    assert not torch.allclose(model(images), reference, atol=1e-2)


def test_resnet_layout_and_models_without_normalization() -> None:
    resnet = torchvision.models.resnet18(num_classes=10)
    found = scale_invariant_weights(resnet)
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert len(found) == len(convs) == 20  # every conv, downsample ones included
    assert scale_invariant_weights(LeNetPlusPlus(batch_norm=False)) == []


def test_effective_step_size_is_mean_of_lr_over_squared_norms() -> None:
    weights = [torch.full((3,), 2.0), torch.full((2, 2), 0.5)]
    norms = [12.0, 1.0]
    torch.testing.assert_close(squared_norms(weights), torch.tensor(norms))
    expected = sum(0.1 / n for n in norms) / 2
    assert effective_step_size(0.1, weights).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least one"):
        squared_norms([])


def test_angular_update_matches_arccos_and_resolves_tiny_rotations() -> None:
    torch.manual_seed(0)
    before = [torch.randn(5, 3), torch.randn(7)]
    after = [w + 0.3 * torch.randn_like(w) for w in before]
    naive = [
        math.acos(
            float(torch.dot(a.flatten().double(), b.flatten().double()))
            / float(a.double().norm() * b.double().norm())
        )
        for a, b in zip(before, after, strict=True)
    ]
    torch.testing.assert_close(angular_update(before, after), torch.tensor(naive).float())
    # A 1e-6 rad rotation in a plane, at any scale: arccos of a float cosine would return 0.
    angle = 1e-6
    u = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    v = torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=torch.float64)
    measured = angular_update([u * 5.0], [v * 0.2])
    assert measured.item() == pytest.approx(angle, rel=1e-4)
    with pytest.raises(ValueError, match="matching"):
        angular_update([u], [])
