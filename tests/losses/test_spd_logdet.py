"""MGD's log-determinant (fused kernel, factorization and backward): Cholesky on the CPU, LU where
Cholesky fails or on accelerators; the same values and gradients as autograd through the naive
kernel and ``torch.linalg.slogdet`` (LU, the official code's route)."""

from __future__ import annotations

import pytest
import torch

from hugnc import devices
from hugnc.losses import gaussian_gram_logdet, uniformity
from hugnc.losses.uniformity import GRAM_RIDGE, pairwise_sq_distances


def _lu_gaussian_gram_logdet(vectors: torch.Tensor) -> torch.Tensor:
    gram = torch.exp(-pairwise_sq_distances(vectors))
    return torch.linalg.slogdet(gram + GRAM_RIDGE * torch.eye(len(gram))).logabsdet


@pytest.mark.parametrize(("num", "dim"), [(10, 2), (100, 64), (1000, 512)])
def test_cholesky_matches_lu_values_and_gradients(num: int, dim: int) -> None:
    torch.manual_seed(num)
    proxies = torch.randn(num, dim, dtype=torch.float64, requires_grad=True)
    value = gaussian_gram_logdet(proxies)
    (grad,) = torch.autograd.grad(value, proxies)
    reference = _lu_gaussian_gram_logdet(proxies)
    (reference_grad,) = torch.autograd.grad(reference, proxies)
    torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-8, atol=1e-10)
    # float32 (training precision): the goal is the same values to 1e-5.
    proxies32 = proxies.detach().float().requires_grad_()
    value32 = gaussian_gram_logdet(proxies32)
    (grad32,) = torch.autograd.grad(value32, proxies32)
    assert abs(value32.item() - reference.item()) <= 1e-5 * max(1.0, abs(reference.item()))
    torch.testing.assert_close(grad32.double(), reference_grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("cholesky", [True, False], ids=["cholesky", "lu"])
def test_gradcheck_of_both_routes(cholesky: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "host_reads_are_free", lambda device: cholesky)
    torch.manual_seed(0)
    vectors = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gaussian_gram_logdet, (vectors,))


def test_distances_at_the_clamp_bounds_have_the_reference_gradient() -> None:
    """Coincident and antipodal rows put distances at (or by rounding past) the clamp's bounds,
    where the reference's gradient is zero and the fused backward's is radial, which the
    normalization's backward removes: the same gradient."""
    torch.manual_seed(3)
    base = torch.randn(4, 5, dtype=torch.float64)
    rows = torch.cat([base, base[:1], -base[1:2], 3.0 * base[2:3]])  # same, opposite, scaled
    sq_distances = 2.0 - 2.0 * uniformity._cosine_gram(rows)
    assert ((sq_distances < 0) | (sq_distances > 4)).any()  # the clamp acts in this case
    proxies = rows.requires_grad_()
    value = gaussian_gram_logdet(proxies)
    (grad,) = torch.autograd.grad(value, proxies)
    reference = _lu_gaussian_gram_logdet(proxies)
    (reference_grad,) = torch.autograd.grad(reference, proxies)
    torch.testing.assert_close(value, reference)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-6, atol=1e-6)


def test_numerically_singular_gram_falls_back_to_lu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Near-coincident proxies make the float32 Gram indefinite by rounding: Cholesky reports it and
    LU gives the value the official code's logdet route gives, with its gradient."""
    torch.manual_seed(0)
    base = torch.randn(1, 3)
    proxies = (base + 1e-4 * torch.randn(300, 3)).requires_grad_()
    gram = torch.exp(-pairwise_sq_distances(proxies)) + GRAM_RIDGE * torch.eye(300)
    assert torch.linalg.cholesky_ex(gram.detach()).info.item() != 0  # the case exists
    monkeypatch.setattr(
        torch, "cholesky_inverse", lambda *a: pytest.fail("the failed Cholesky factor was used")
    )
    value = gaussian_gram_logdet(proxies)
    torch.testing.assert_close(value, _lu_gaussian_gram_logdet(proxies))
    (grad,) = torch.autograd.grad(value, proxies)
    assert torch.isfinite(grad).all()


def test_accelerator_tensors_never_read_the_factorization_status(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where a host read would wait for the device, the LU route runs and nothing is read."""
    monkeypatch.setattr(devices, "host_reads_are_free", lambda device: False)
    monkeypatch.setattr(
        torch.linalg, "cholesky_ex", lambda *a, **k: pytest.fail("Cholesky status read")
    )
    proxies = torch.randn(50, 8, requires_grad=True)
    value = gaussian_gram_logdet(proxies)
    reference = _lu_gaussian_gram_logdet(proxies)
    torch.testing.assert_close(value, reference)
    torch.testing.assert_close(
        torch.autograd.grad(value, proxies)[0], torch.autograd.grad(reference, proxies)[0]
    )
