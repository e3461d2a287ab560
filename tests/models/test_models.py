"""Backbones give [B, feature_dim]; heads expose logits() and the classifier matrix alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hugnc.models import CifarResNet, LeNetPlusPlus, LinearHead, ProxyHead, TorchvisionResNet


@pytest.mark.parametrize(
    ("backbone", "input_shape", "feature_dim"),
    [
        (lambda: LeNetPlusPlus((1, 28, 28), feature_dim=2), (1, 28, 28), 2),
        (lambda: LeNetPlusPlus((3, 32, 32), 5, widths=(8, 8, 8), kernel_size=3), (3, 32, 32), 5),
        (lambda: CifarResNet(18, (3, 32, 32)), (3, 32, 32), 512),
        (lambda: CifarResNet(34, (1, 28, 28), feature_dim=64), (1, 28, 28), 64),
        (lambda: TorchvisionResNet("resnet18", (3, 64, 64), feature_dim=128), (3, 64, 64), 128),
        (lambda: TorchvisionResNet("resnet50", (1, 32, 32)), (1, 32, 32), 2048),
    ],
)
def test_backbone_feature_shape(backbone, input_shape, feature_dim) -> None:
    net = backbone().eval()
    assert net.feature_dim == feature_dim
    with torch.no_grad():
        assert net(torch.randn(3, *input_shape)).shape == (3, feature_dim)


def test_invalid_backbone_arguments() -> None:
    with pytest.raises(ValueError, match="depth must be one of"):
        CifarResNet(depth=50)
    for arch in ("vgg16", "resnet"):  # "resnet" is torchvision's module, not a constructor
        with pytest.raises(ValueError, match="arch must be one of resnet18, resnet34"):
            TorchvisionResNet(arch)
    with pytest.raises(ValueError, match="odd kernel_size"):
        LeNetPlusPlus(kernel_size=4)


def test_linear_head_logits_and_classifier() -> None:
    head = LinearHead(feature_dim=4, num_classes=3)
    features = torch.randn(5, 4)
    expected = features @ head.linear.weight.T + head.linear.bias
    torch.testing.assert_close(head.logits(features), expected)
    assert head.classifier is head.linear.weight


def test_proxy_head_cosine_logits() -> None:
    torch.manual_seed(0)
    head = ProxyHead(feature_dim=3, num_classes=4, scale=10.0)
    bound = 1 / 3**0.5
    assert head.proxies.abs().max() <= bound  # official init U(-1/sqrt(d), 1/sqrt(d))
    features = torch.randn(6, 3) * 7
    cosines = F.cosine_similarity(features[:, None, :], head.proxies[None, :, :], dim=2)
    torch.testing.assert_close(head.logits(features), 10.0 * cosines)
    assert head.classifier is head.proxies


@pytest.mark.parametrize("renormalize", [True, False])
def test_proxy_head_renormalizes_after_step(renormalize: bool) -> None:
    head = ProxyHead(feature_dim=2, num_classes=5, renormalize=renormalize)
    with torch.no_grad():
        head.proxies.mul_(3.0)
    before = head.proxies.detach().clone()
    head.after_optimizer_step()
    norms = head.proxies.norm(dim=1)
    if renormalize:
        torch.testing.assert_close(norms, torch.ones(5))
        torch.testing.assert_close(head.proxies, F.normalize(before, dim=1))
    else:
        torch.testing.assert_close(head.proxies, before)


def test_lenet_without_feature_dim_keeps_the_flattened_last_stage() -> None:
    """``model.feature_dim=null`` (as for the ResNets): no linear layer, the flattened features."""
    net = LeNetPlusPlus(input_shape=(1, 28, 28), feature_dim=None, widths=(8, 16, 32))
    assert isinstance(net.fc, torch.nn.Identity)
    assert net.feature_dim == 32 * 4 * 4
    with torch.no_grad():
        assert net(torch.randn(2, 1, 28, 28)).shape == (2, 32 * 4 * 4)
    with pytest.raises(ValueError, match="LeNetPlusPlus: feature_dim must be >= 2 or null, got 1"):
        LeNetPlusPlus(feature_dim=1)
