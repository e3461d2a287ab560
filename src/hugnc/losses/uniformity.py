"""Hyperspherical uniformity measures of a set of K directions in R^d (pure torch).

These are the inter-class terms of the three HUG variants (see ../shared/HUG.md) and, applied to
normalized class means or classifier rows, the GNC metrics. All functions take *unnormalized*
vectors ``[K, d]`` and normalize them first, so gradients are tangent to the sphere.

Computation happens in at least float32 (bf16/fp16 inputs are upcast) because the Riesz energy
and the Gram log-determinant overflow or lose all precision in half precision, and the Gram's
matmuls in full float32 even where TF32 is allowed (:func:`full_float32_matmul`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from hugnc import devices

#: Squared distances below this are clamped before the Riesz energy, so coincident directions give
#: a large finite energy (1e8 at s=2) instead of inf; their gradient is then zero, not NaN.
MIN_SQ_DISTANCE = 1e-8

#: Ridge added to the Gaussian Gram matrix before its log-determinant (as in HUG.md).
GRAM_RIDGE = 1e-6


def _at_least_float32(vectors: Tensor) -> Tensor:
    if vectors.dtype in (torch.float16, torch.bfloat16):
        return vectors.float()
    return vectors


def unit_vectors(vectors: Tensor) -> Tensor:
    """Rows of ``vectors`` ``[K, d]`` scaled to unit L2 norm (in at least float32)."""
    return F.normalize(_at_least_float32(vectors), dim=-1)


@contextmanager
def full_float32_matmul() -> Iterator[None]:
    """float32 matmuls inside run in full float32 whatever ``torch.set_float32_matmul_precision``
    says. ``matmul_precision: high`` lets cuBLAS round their inputs to TF32 (10-bit mantissa) on
    Ampere and newer GPUs, which at d = 2 turns HUG's proxy gradients elsewhere; the K x K Gram is
    tiny, so exactness costs nothing measurable."""
    previous = torch.get_float32_matmul_precision()
    if previous == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class _Gram(torch.autograd.Function):
    """``unit @ unit.T`` whose backward is one matmul, ``(g + g^T) @ unit``, instead of autograd's
    two (``g @ unit`` and ``g^T @ unit``): the Gram matmuls dominate the inter terms at large K."""

    @staticmethod
    def forward(ctx, unit: Tensor) -> Tensor:
        ctx.save_for_backward(unit)
        with full_float32_matmul():
            return unit @ unit.mT

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (unit,) = ctx.saved_tensors
        with torch.autocast(device_type=unit.device.type, enabled=False), full_float32_matmul():
            return (grad + grad.mT).to(unit.dtype) @ unit


def _cosine_gram(vectors: Tensor) -> Tensor:
    """``[K, K]`` cosines of the rows, in at least float32 even under autocast (whose bf16/fp16
    matmul would otherwise undo the upcast and make ``slogdet`` fail)."""
    unit = unit_vectors(vectors)
    with torch.autocast(device_type=unit.device.type, enabled=False):
        return _Gram.apply(unit)


def pairwise_sq_distances(vectors: Tensor) -> Tensor:
    """Squared chordal distances ``||u_i - u_j||^2 = 2 - 2 cos_ij`` of the normalized rows.

    Args:
        vectors: ``[K, d]``, any norm.

    Returns:
        ``[K, K]`` symmetric, in [0, 4], zero on the diagonal up to rounding.
    """
    return (2.0 - 2.0 * _cosine_gram(vectors)).clamp(min=0.0, max=4.0)


def riesz_energy(vectors: Tensor, power: float = 2.0) -> Tensor:
    """Mean Riesz s-energy over pairs i<j of the normalized rows (MHE).

    ``mean_{i<j} ||u_i - u_j||^(-s)`` for s > 0, and the log energy
    ``mean_{i<j} -log ||u_i - u_j||`` for s = 0. Squared distances are clamped at
    :data:`MIN_SQ_DISTANCE`.

    Args:
        vectors: ``[K, d]`` with K >= 2.
        power: s >= 0.

    Returns:
        Scalar tensor.
    """
    if power < 0:
        raise ValueError(f"Riesz power s must be >= 0 (0 = log energy), got {power}")
    num = vectors.shape[0]
    sq_dist = (2.0 - 2.0 * _cosine_gram(vectors)).clamp(min=MIN_SQ_DISTANCE, max=4.0)
    # The diagonal is set (in place: no [K, K] mask) to a constant before the power so it gives
    # neither inf nor gradient, and to 0 after it so it drops out of the sum.
    sq_dist.fill_diagonal_(1.0)
    pair_energy = -0.5 * sq_dist.log() if power == 0 else sq_dist.pow(-0.5 * power)
    return pair_energy.fill_diagonal_(0.0).sum() / (num * (num - 1))


def min_pairwise_sq_distance(vectors: Tensor) -> Tensor:
    """Smallest ``||u_i - u_j||^2`` over pairs i != j (MHS maximizes it: the Tammes problem).

    Args:
        vectors: ``[K, d]`` with K >= 2.

    Returns:
        Scalar tensor in [0, 4]; only the closest pair receives gradient.
    """
    return pairwise_sq_distances(vectors).fill_diagonal_(float("inf")).min()


def _factorize_spd(matrix: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``log det`` of a symmetric positive definite ``[K, K]`` matrix and its factors.

    Cholesky where its success can be read for free (CPU tensors); LU where the factorization fails
    (numerically singular in float32: near-coincident rows) and on accelerators, where reading
    Cholesky's status would make the host wait for the device at every step. Same values either
    way up to float32 rounding. The factors are ``(L,)`` or ``(LU, pivots)``.
    """
    if devices.host_reads_are_free(matrix.device):
        factor, info = torch.linalg.cholesky_ex(matrix)
        if int(info) == 0:
            return 2.0 * factor.diagonal().log().sum(), (factor,)
    lu, pivots, _ = torch.linalg.lu_factor_ex(matrix)
    return lu.diagonal().abs().log().sum(), (lu, pivots)


def _inverse(factors: tuple[Tensor, ...]) -> Tensor:
    """The inverse of the matrix :func:`_factorize_spd` factored."""
    if len(factors) == 1:
        return torch.cholesky_inverse(factors[0])
    lu, pivots = factors
    return torch.linalg.lu_solve(lu, pivots, torch.eye(len(lu), dtype=lu.dtype, device=lu.device))


class _GaussianGramLogdet(torch.autograd.Function):
    """``logdet(E + ridge * I)``, ``E_ij = exp(-||u_i - u_j||^2)``, of unit rows ``[K, d]``.

    Fused because at large K the [K, K] elementwise steps and their autograd temporaries cost as
    much as the factorization: ``E = exp(clamp(2 cos - 2, -4, 0))`` is built in place on the Gram
    (the same floats as ``exp(-clamp(2 - 2 cos, 0, 4))``), and the backward is one inverse and one
    matmul, ``d logdet / d unit = 4 ((E + ridge I)^{-1} * E) @ unit``. It ignores the clamp: its
    bounds are reached only by rounding, where ``u_j = +-u_i`` and the pair's gradient is radial,
    which the normalization's backward removes.
    """

    @staticmethod
    def forward(ctx, unit: Tensor) -> Tensor:
        with full_float32_matmul():
            exponent = unit @ unit.mT
        kernel = exponent.mul_(2.0).sub_(2.0).clamp_(-4.0, 0.0).exp_()
        diagonal = kernel.diagonal()
        diagonal.add_(GRAM_RIDGE)
        logdet, factors = _factorize_spd(kernel)
        diagonal.sub_(GRAM_RIDGE)
        ctx.save_for_backward(unit, kernel, *factors)
        return logdet

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        unit, kernel, *factors = ctx.saved_tensors
        weights = _inverse(tuple(factors)).mul_(kernel)
        with torch.autocast(device_type=unit.device.type, enabled=False), full_float32_matmul():
            return (weights @ unit).mul_(4.0 * grad)


def gaussian_gram_logdet(vectors: Tensor) -> Tensor:
    """``logdet(G + ridge * I)`` with ``G_ij = exp(-||u_i - u_j||^2)`` of the normalized rows (MGD).

    Args:
        vectors: ``[K, d]``.

    Returns:
        Scalar tensor, <= 0 (G has unit diagonal, so det <= 1); larger means more uniform.
    """
    unit = unit_vectors(vectors)
    with torch.autocast(device_type=unit.device.type, enabled=False):
        return _GaussianGramLogdet.apply(unit)


def pairwise_log_kernel_variance(vectors: Tensor) -> Tensor:
    """Variance over pairs i<j of ``log ||u_i - u_j||^2`` (0 when all pairs are equidistant)."""
    num = vectors.shape[0]
    upper = torch.triu_indices(num, num, offset=1, device=vectors.device)
    sq_dist = pairwise_sq_distances(vectors)[upper[0], upper[1]].clamp(min=MIN_SQ_DISTANCE)
    return sq_dist.log().var(unbiased=False)
