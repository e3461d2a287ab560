"""Backbones (images -> features) and heads (features -> logits); no knowledge of losses."""

from hugnc.models.backbones import CifarResNet, LeNetPlusPlus, TorchvisionResNet
from hugnc.models.heads import LinearHead, ProxyHead

__all__ = ["CifarResNet", "LeNetPlusPlus", "LinearHead", "ProxyHead", "TorchvisionResNet"]
