"""HUGLoss against naive per-class / per-pair references written from HUG.md.

The references below use explicit Python loops over classes and pairs, in float64, so they share no
code path with the vectorized implementation in ``hugnc.losses``.
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch
import torch.nn.functional as F

from hugnc.losses import HUGLoss

# (variant, mhe_power): MHE with Riesz s=2, s=1 and the log energy s=0, then MHS and MGD.
VARIANT_CASES = [("mhe", 2.0), ("mhe", 1.0), ("mhe", 0.0), ("mhs", 2.0), ("mgd", 2.0)]
VARIANT_IDS = ["mhe-s2", "mhe-s1", "mhe-log", "mhs", "mgd"]

REL_TOL = 1e-9


# ---------------------------------------------------------------------------------------------
# Naive references (HUG.md formulas, loops, float64)
# ---------------------------------------------------------------------------------------------


def _norm(vector: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((vector * vector).sum())


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / _norm(vector)


def ref_intra(features: torch.Tensor, proxies: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(1/|C_B|) sum_{c in C_B} (1/n_c) sum_{i: y_i = c} ||x_i - sg(u_c)||."""
    per_class = []
    for c in range(proxies.shape[0]):
        members = [i for i in range(features.shape[0]) if int(targets[i]) == c]
        if not members:
            continue
        u_c = _unit(proxies[c].detach())
        total = sum(_norm(_unit(features[i]) - u_c) for i in members)
        per_class.append(total / len(members))
    return sum(per_class) / len(per_class)


def _pair_sq_distances(proxies: torch.Tensor) -> dict[tuple[int, int], torch.Tensor]:
    units = [_unit(proxies[c]) for c in range(proxies.shape[0])]
    num = len(units)
    return {
        (i, j): ((units[i] - units[j]) ** 2).sum() for i in range(num) for j in range(i + 1, num)
    }


def ref_inter(variant: str, proxies: torch.Tensor, power: float) -> torch.Tensor:
    """Inter-class term over ALL K proxies (HUG.md)."""
    num = proxies.shape[0]
    sq = _pair_sq_distances(proxies)
    if variant == "mhe":
        if power == 0:
            terms = [-torch.log(torch.sqrt(v)) for v in sq.values()]
        else:
            terms = [torch.sqrt(v) ** (-power) for v in sq.values()]
        return sum(terms) / len(terms)
    if variant == "mhs":
        return -min(sq.values())
    assert variant == "mgd"
    one = torch.ones((), dtype=proxies.dtype)
    rows = []
    for i in range(num):
        row = []
        for j in range(num):
            if i == j:
                row.append(one + 1e-6)
            else:
                row.append(torch.exp(-sq[(min(i, j), max(i, j))]))
        rows.append(torch.stack(row))
    chol = torch.linalg.cholesky(torch.stack(rows))
    logdet = 2.0 * sum(torch.log(chol[k, k]) for k in range(num))
    return -logdet / num


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _random_rows(gen: torch.Generator, rows: int, dim: int) -> torch.Tensor:
    """Random directions with norms in [0.5, 3] (the loss must normalize them)."""
    vectors = torch.randn(rows, dim, generator=gen, dtype=torch.float64)
    norms = 0.5 + 2.5 * torch.rand(rows, 1, generator=gen, dtype=torch.float64)
    return F.normalize(vectors, dim=1) * norms


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rel: float = REL_TOL) -> None:
    assert actual.dtype == expected.dtype == torch.float64
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * max(scale, 1e-12))


def _grads(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return tuple(
        torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True)
    )


def _targets(*counts_per_class: int) -> torch.Tensor:
    return torch.tensor([c for c, n in enumerate(counts_per_class) for _ in range(n)])


# (K, d, targets). Properties are asserted in test_reference_cases_cover_the_edge_cases.
REFERENCE_CASES = {
    # classes 1 and 3 missing, class 2 has exactly one sample
    "K5-d3-missing-singleton": (5, 3, _targets(4, 0, 1, 0, 4)),
    # K = 2, d = 2, class 0 a singleton
    "K2-d2": (2, 2, _targets(1, 3)),
    # K > B, d = 64: most classes missing, one singleton
    "K20-d64-K>B": (20, 64, torch.tensor([3, 3, 17, 0, 17, 3])),
    # d = 2 with K > d + 1, last class missing
    "K7-d2": (7, 2, torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0, 1, 2, 3, 1])),
    # every class present, d = 64
    "K10-d64-all": (10, 64, torch.arange(32) % 10),
}


def test_reference_cases_cover_the_edge_cases() -> None:
    counts = {name: torch.bincount(t, minlength=k) for name, (k, _, t) in REFERENCE_CASES.items()}
    assert any((c == 0).any() for c in counts.values()), "a case with a missing class"
    assert any((c == 1).any() for c in counts.values()), "a case with a singleton class"
    assert any(k == 2 for k, _, _ in REFERENCE_CASES.values())
    assert any(k > len(t) for k, _, t in REFERENCE_CASES.values())
    assert {d for _, d, _ in REFERENCE_CASES.values()} >= {2, 64}


# ---------------------------------------------------------------------------------------------
# Values and gradients against the references
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "power"), VARIANT_CASES, ids=VARIANT_IDS)
@pytest.mark.parametrize("case", list(REFERENCE_CASES))
def test_matches_naive_reference(variant: str, power: float, case: str) -> None:
    num_classes, dim, targets = REFERENCE_CASES[case]
    gen = torch.Generator().manual_seed(zlib.crc32(f"{case}/{variant}/{power}".encode()))
    features = _random_rows(gen, len(targets), dim).requires_grad_()
    proxies = _random_rows(gen, num_classes, dim).requires_grad_()
    alpha, beta = 0.7, 1.3
    if variant == "mhs":  # the min pair must be unique for a well-defined gradient
        sq = torch.stack(list(_pair_sq_distances(proxies.detach()).values())).sort().values
        assert len(sq) == 1 or sq[1] - sq[0] > 1e-6

    out = HUGLoss(variant, alpha=alpha, beta=beta, mhe_power=power)(features, proxies, targets)
    intra = ref_intra(features, proxies, targets)
    inter = ref_inter(variant, proxies, power)
    loss = alpha * inter + beta * intra

    _assert_close(out.intra, intra)
    _assert_close(out.inter, inter)
    _assert_close(out.loss, loss)
    got_grads = _grads(out.loss, features, proxies)
    for got, want in zip(got_grads, _grads(loss, features, proxies), strict=True):
        _assert_close(got, want)


@pytest.mark.parametrize(("variant", "power"), VARIANT_CASES, ids=VARIANT_IDS)
def test_gradcheck(variant: str, power: float) -> None:
    gen = torch.Generator().manual_seed(7)
    targets = torch.tensor([0, 0, 1, 3, 3, 3])  # class 2 missing, class 1 a singleton
    features = _random_rows(gen, len(targets), 3).requires_grad_()
    proxies = _random_rows(gen, 4, 3).requires_grad_()
    sq = torch.stack(list(_pair_sq_distances(proxies.detach()).values())).sort().values
    assert sq[1] - sq[0] > 1e-2  # unique MHS minimum pair, far beyond gradcheck's eps
    criterion = HUGLoss(variant, alpha=0.7, beta=1.3, mhe_power=power)

    # features -> all outputs (proxies fixed); proxies -> inter term (the intra term detaches them,
    # so a finite-difference check through it must disagree by design: see the next test).
    fixed_proxies, fixed_features = proxies.detach(), features.detach()
    assert torch.autograd.gradcheck(lambda f: tuple(criterion(f, fixed_proxies, targets)), features)
    assert torch.autograd.gradcheck(lambda p: criterion(fixed_features, p, targets).inter, proxies)


# ---------------------------------------------------------------------------------------------
# Gradient routing: proxies learn from the inter term only
# ---------------------------------------------------------------------------------------------


def _loss_grads(variant: str, power: float, alpha: float, beta: float):
    gen = torch.Generator().manual_seed(3)
    targets = torch.tensor([0, 1, 1, 4, 4, 2, 0])
    features = _random_rows(gen, len(targets), 8).requires_grad_()
    proxies = _random_rows(gen, 5, 8).requires_grad_()
    out = HUGLoss(variant, alpha=alpha, beta=beta, mhe_power=power)(features, proxies, targets)
    return _grads(out.loss, features, proxies)


@pytest.mark.parametrize(("variant", "power"), VARIANT_CASES, ids=VARIANT_IDS)
def test_proxies_get_gradient_from_inter_term_only(variant: str, power: float) -> None:
    feat_grad, proxy_grad = _loss_grads(variant, power, alpha=0.0, beta=1.0)
    assert torch.all(proxy_grad == 0)
    assert feat_grad.abs().max() > 1e-3

    feat_grad, proxy_grad = _loss_grads(variant, power, alpha=1.0, beta=0.0)
    assert torch.all(feat_grad == 0)
    assert proxy_grad.abs().max() > 1e-3

    _, proxy_grad_both = _loss_grads(variant, power, alpha=0.4, beta=2.0)
    _, proxy_grad_inter = _loss_grads(variant, power, alpha=0.4, beta=0.0)
    assert torch.equal(proxy_grad_both, proxy_grad_inter)


# ---------------------------------------------------------------------------------------------
# Composition, range, validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("variant", "power"), VARIANT_CASES, ids=VARIANT_IDS)
def test_loss_is_weighted_sum_and_intra_in_range(variant: str, power: float) -> None:
    gen = torch.Generator().manual_seed(11)
    targets = torch.tensor([0, 2, 2, 1, 0, 2])
    proxies = _random_rows(gen, 3, 16)
    features = _random_rows(gen, len(targets), 16)
    alpha, beta = 0.15, 0.03
    criterion = HUGLoss(variant, alpha=alpha, beta=beta, mhe_power=power)

    out = criterion(features, proxies, targets)
    torch.testing.assert_close(out.loss, alpha * out.inter + beta * out.intra, rtol=1e-12, atol=0)
    assert 0.0 < out.intra.item() < 2.0

    # Extremes: features on their own proxy -> 0; on the antipode -> 2 (feature norm irrelevant).
    on_proxy = criterion(3.0 * proxies[targets], proxies, targets).intra
    antipodal = criterion(-0.2 * proxies[targets], proxies, targets).intra
    torch.testing.assert_close(on_proxy, torch.zeros((), dtype=torch.float64), rtol=0, atol=1e-7)
    torch.testing.assert_close(antipodal, torch.full((), 2.0, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"variant": "mhx", "alpha": 1.0, "beta": 1.0}, r"variant must be one of .*mhe.*'mhx'"),
        ({"variant": "mhe", "alpha": -0.1, "beta": 1.0}, r"alpha must be >= 0, got -0\.1"),
        ({"variant": "mhs", "alpha": 1.0, "beta": -2.0}, r"beta must be >= 0, got -2\.0"),
        (
            {"variant": "mhe", "alpha": 1.0, "beta": 1.0, "mhe_power": -1.0},
            r"mhe_power must be >= 0, got -1\.0",
        ),
    ],
)
def test_invalid_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HUGLoss(**kwargs)


# ---------------------------------------------------------------------------------------------
# Numerical robustness
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("variant", "power"), VARIANT_CASES, ids=VARIANT_IDS)
def test_coincident_proxies_finite(variant: str, power: float, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    proxies = _random_rows(gen, 4, 3).to(dtype)
    proxies[1] = proxies[0]  # exactly coincident
    proxies[2] = 2.5 * proxies[0]  # same direction, different norm
    proxies.requires_grad_()
    features = _random_rows(gen, 5, 3).to(dtype).requires_grad_()
    targets = torch.tensor([0, 1, 2, 3, 3])

    out = HUGLoss(variant, alpha=1.0, beta=1.0, mhe_power=power)(features, proxies, targets)
    assert torch.isfinite(out.inter) and torch.isfinite(out.loss)
    if variant == "mhe" and power > 0:
        assert out.inter.item() > 1e3  # coincident pairs dominate the energy, but stay finite
    for grad in _grads(out.loss, features, proxies):
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize(("variant", "power"), VARIANT_CASES, ids=VARIANT_IDS)
def test_bfloat16_inputs_finite(variant: str, power: float) -> None:
    gen = torch.Generator().manual_seed(13)
    proxies = _random_rows(gen, 100, 32).to(torch.bfloat16).requires_grad_()
    features = _random_rows(gen, 64, 32).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 100, (64,), generator=gen)

    out = HUGLoss(variant, alpha=0.15, beta=0.015, mhe_power=power)(features, proxies, targets)
    assert torch.isfinite(out.loss) and torch.isfinite(out.inter) and torch.isfinite(out.intra)
    for grad in _grads(out.loss, features, proxies):
        assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize(("variant", "power"), VARIANT_CASES, ids=VARIANT_IDS)
def test_inter_term_stays_float32_under_autocast(variant: str, power: float) -> None:
    """bf16-mixed training: the Gram matmul must not be downcast (MGD's slogdet would fail)."""
    gen = torch.Generator().manual_seed(17)
    proxies = _random_rows(gen, 50, 32).float().requires_grad_()
    features = _random_rows(gen, 16, 32).float()
    targets = torch.randint(0, 50, (16,), generator=gen)
    criterion = HUGLoss(variant, alpha=1.0, beta=0.0, mhe_power=power)

    expected = criterion(features, proxies, targets).inter
    (expected_grad,) = torch.autograd.grad(expected, proxies)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        got = criterion(features, proxies, targets).inter
    (got_grad,) = torch.autograd.grad(got, proxies)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Geometry: the inter term alone drives proxies to the known optima
# ---------------------------------------------------------------------------------------------


def _optimize_proxies(variant: str, num: int, dim: int, steps: int, seed: int = 0) -> torch.Tensor:
    """SGD (momentum, cosine lr) on the inter term; renormalize after every step like ProxyHead."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(dim)
    proxies = ((2.0 * torch.rand(num, dim, generator=gen) - 1.0) * bound).requires_grad_()
    features = torch.randn(3, dim, generator=gen)
    targets = torch.zeros(3, dtype=torch.long)
    criterion = HUGLoss(variant, alpha=1.0, beta=0.0)
    optimizer = torch.optim.SGD([proxies], lr=0.05, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        criterion(features, proxies, targets).loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            proxies.copy_(F.normalize(proxies, dim=1))
    return proxies.detach()


def _angular_gaps_deg(points: torch.Tensor) -> torch.Tensor:
    angles = torch.atan2(points[:, 1], points[:, 0]).sort().values
    gaps = torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi]))
    return torch.rad2deg(gaps).sort().values


def _off_diagonal_cosines(points: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(points, dim=1)
    cos = unit @ unit.T
    return cos[~torch.eye(len(points), dtype=torch.bool)]


@pytest.mark.parametrize("variant", ["mhe", "mhs", "mgd"])
def test_regular_decagon_in_2d(variant: str) -> None:
    gen = torch.Generator().manual_seed(0)
    initial = (2.0 * torch.rand(10, 2, generator=gen) - 1.0) / math.sqrt(2)
    assert (_angular_gaps_deg(initial) - 36.0).abs().max() > 10.0  # start far from the optimum

    gaps = _angular_gaps_deg(_optimize_proxies(variant, num=10, dim=2, steps=1000))
    assert (gaps - 36.0).abs().max() <= 1.0, gaps.tolist()


@pytest.mark.parametrize("variant", ["mhe", "mhs", "mgd"])
def test_regular_tetrahedron_in_3d(variant: str) -> None:
    gen = torch.Generator().manual_seed(0)
    initial = (2.0 * torch.rand(4, 3, generator=gen) - 1.0) / math.sqrt(3)
    assert (_off_diagonal_cosines(initial) + 1 / 3).abs().max() > 0.1

    cos = _off_diagonal_cosines(_optimize_proxies(variant, num=4, dim=3, steps=2000))
    assert (cos + 1.0 / 3.0).abs().max() <= 1e-3, cos.tolist()
