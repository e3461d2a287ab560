"""Backbones: image batch ``[B, C, H, W]`` -> features ``[B, feature_dim]``.

Every backbone exposes ``feature_dim`` so heads and metrics can be built from it (timm-style:
features first, then a head). None of them knows about losses.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Literal

import torch
import torchvision
from torch import Tensor, nn

from hugnc.arguments import FeatureDim, PositiveInt, checked


def _conv_block(
    in_channels: int, out_channels: int, kernel_size: int, batch_norm: bool
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not batch_norm
        )
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers.append(nn.PReLU(out_channels))
    return nn.Sequential(*layers)


class LeNetPlusPlus(nn.Module):
    """LeNet++ (Wen et al., center loss) for 28x28 inputs: the usual net for 2-D feature pictures.

    Three stages of ``convs_per_stage`` convolutions with PReLU, each followed by 2x2 max-pooling,
    then a linear layer to ``feature_dim``. The original uses two 5x5 convs per stage with 32-64-128
    channels and no batch norm; narrower 3x3 stages with batch norm train ~5x faster on CPU.

    Args:
        input_shape: ``(C, H, W)`` of the images (the datamodule's ``input_shape``).
        feature_dim: output feature size (2 for the GNC picture); ``None``: the flattened last
            stage, without the linear layer.
        widths: channels of the three stages.
        kernel_size: odd convolution size (5 original, 3 fast).
        convs_per_stage: convolutions per stage.
        batch_norm: add BatchNorm after each convolution.
    """

    @checked
    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        feature_dim: FeatureDim | None = 2,
        widths: Sequence[int] = (32, 64, 128),
        kernel_size: PositiveInt = 5,
        convs_per_stage: PositiveInt = 2,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise ValueError(f"LeNetPlusPlus needs an odd kernel_size, got {kernel_size}")
        stages: list[nn.Module] = []
        channels, height, width_px = input_shape
        for width in widths:
            for _ in range(convs_per_stage):
                stages.append(_conv_block(channels, width, kernel_size, batch_norm))
                channels = width
            stages.append(nn.MaxPool2d(2, ceil_mode=True))
        self.body = nn.Sequential(*stages)
        for _ in widths:
            height, width_px = -(-height // 2), -(-width_px // 2)
        flat_dim = channels * height * width_px
        self.fc = _projection(flat_dim, feature_dim)
        self.feature_dim = feature_dim or flat_dim

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.body(images), 1))


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


#: CIFAR ResNet depth -> residual blocks per stage (the allowed ``depth`` values).
CIFAR_RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
#: The torchvision ResNet constructors :class:`TorchvisionResNet` takes as ``arch``.
TorchvisionResNetName = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
TORCHVISION_RESNETS: tuple[str, ...] = typing.get_args(TorchvisionResNetName)


class CifarResNet(nn.Module):
    """ResNet-18/34 for 32x32 inputs (3x3 stem, no max-pool), as in the paper's CIFAR experiments.

    Args:
        depth: 18 or 34.
        input_shape: ``(C, H, W)``; any H, W (global average pooling).
        feature_dim: output size; ``None`` keeps the 512-d pooled features, any other value adds a
            linear projection (the paper uses 64/128 on CIFAR-100).
    """

    @checked
    def __init__(
        self,
        depth: Literal[18, 34] = 18,
        input_shape: Sequence[int] = (3, 32, 32),
        feature_dim: FeatureDim | None = None,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        in_planes = 64
        for stage, num_blocks in enumerate(CIFAR_RESNET_BLOCKS[depth]):
            planes = 64 * 2**stage
            for block in range(num_blocks):
                layers.append(
                    _BasicBlock(in_planes, planes, stride=2 if stage > 0 and block == 0 else 1)
                )
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.projection = _projection(in_planes, feature_dim)
        self.feature_dim = feature_dim or in_planes

    def forward(self, images: Tensor) -> Tensor:
        pooled = torch.flatten(
            nn.functional.adaptive_avg_pool2d(self.layers(self.stem(images)), 1), 1
        )
        return self.projection(pooled)


class TorchvisionResNet(nn.Module):
    """torchvision's ImageNet ResNet (randomly initialized) without its classifier.

    Args:
        arch: a torchvision ResNet constructor name, e.g. ``"resnet50"``.
        input_shape: ``(C, H, W)``; C != 3 replaces the stem convolution.
        feature_dim: ``None`` keeps the pooled features (2048 for ResNet-50), else a projection.
    """

    @checked
    def __init__(
        self,
        arch: TorchvisionResNetName = "resnet50",
        input_shape: Sequence[int] = (3, 224, 224),
        feature_dim: FeatureDim | None = None,
    ) -> None:
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        if input_shape[0] != 3:
            net.conv1 = nn.Conv2d(input_shape[0], 64, 7, stride=2, padding=3, bias=False)
        pooled_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.projection = _projection(pooled_dim, feature_dim)
        self.feature_dim = feature_dim or pooled_dim

    def forward(self, images: Tensor) -> Tensor:
        return self.projection(self.net(images))


def _projection(in_dim: int, feature_dim: int | None) -> nn.Module:
    if feature_dim is None or feature_dim == in_dim:
        return nn.Identity()
    return nn.Linear(in_dim, feature_dim)
