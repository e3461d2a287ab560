"""HUG's K x K Gram stays float32 when the global matmul precision allows TF32 (GPUs, d = 2).

No GPU here: TF32 is emulated by a TorchFunctionMode that rounds the float32 inputs of every
matmul to TF32's 10-bit mantissa whenever ``torch.get_float32_matmul_precision()`` is not
"highest", which is what cuBLAS does on Ampere and newer GPUs under ``matmul_precision: high``.
"""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from hugnc.losses import HUGLoss

_MATMULS = {"matmul", "mm", "bmm", "__matmul__"}


def _round_to_tf32(tensor: torch.Tensor) -> torch.Tensor:
    """Round float32 values to 10 explicit mantissa bits (round half up on the bit pattern)."""
    bits = tensor.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return tensor + (rounded - tensor).detach()  # rounded value, gradient of the identity


class EmulatedTF32(TorchFunctionMode):
    """float32 matmuls with TF32-rounded inputs unless the precision is "highest"."""

    def __init__(self) -> None:
        super().__init__()
        self.rounded_calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        matmul = getattr(func, "__name__", None) in _MATMULS
        tf32 = torch.get_float32_matmul_precision() != "highest"
        float32 = all(isinstance(a, torch.Tensor) and a.dtype == torch.float32 for a in args[:2])
        if matmul and tf32 and float32:
            self.rounded_calls += 1
            args = (_round_to_tf32(args[0]), _round_to_tf32(args[1]), *args[2:])
        return func(*args, **kwargs)


def _proxy_gradient(variant: str, proxies: torch.Tensor) -> torch.Tensor:
    proxies = proxies.clone().requires_grad_(True)
    features = torch.randn(64, proxies.shape[1], generator=torch.Generator().manual_seed(1))
    targets = torch.arange(64) % proxies.shape[0]
    HUGLoss(variant, 0.15, 0.015)(features, proxies, targets).loss.backward()
    return proxies.grad


def test_emulation_rounds_matmuls_under_high_precision() -> None:
    a = torch.tensor([[1.0 + 2.0**-12]])
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        with EmulatedTF32() as mode:
            assert (a @ torch.ones(1, 1)).item() == 1.0
        assert mode.rounded_calls == 1
    finally:
        torch.set_float32_matmul_precision(previous)


@pytest.mark.parametrize("variant", ["mhe", "mgd", "mhs"])
@pytest.mark.parametrize("seed", range(5))
def test_proxy_gradients_at_d2_are_float32_under_tf32(variant: str, seed: int) -> None:
    proxies = torch.nn.functional.normalize(
        torch.randn(10, 2, generator=torch.Generator().manual_seed(seed)), dim=1
    )
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        reference = _proxy_gradient(variant, proxies)
        torch.set_float32_matmul_precision("high")
        with EmulatedTF32():
            emulated = _proxy_gradient(variant, proxies)
        assert torch.get_float32_matmul_precision() == "high"  # restored after the Gram
    finally:
        torch.set_float32_matmul_precision(previous)
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(), emulated.flatten(), dim=0)
    assert cosine > 0.9999, f"{variant}: gradient cosine {cosine:.4f} under TF32"
    torch.testing.assert_close(emulated, reference, rtol=1e-4, atol=1e-6)
