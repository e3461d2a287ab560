"""NeuralCollapse metric vs a naive all-in-memory numpy implementation of HUG.md's definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers.two_ranks import run_two_ranks

from hugnc.metrics import PINV_RTOL, NeuralCollapse, optimal_min_angle_deg

REQUIRED_KEYS = {
    "nc1",
    "nc1_trace_ratio",
    "nc2_equinorm_means",
    "nc2_equinorm_classifier",
    "nc2_equiangularity",
    "nc2_max_angle",
    "nc2_etf_means",
    "nc2_etf_classifier",
    "nc3",
    "nc4",
    "gnc_means_energy",
    "gnc_means_log_energy",
    "gnc_proxies_energy",
    "gnc_proxies_log_energy",
    "gnc_means_min_angle_deg",
    "gnc_proxies_min_angle_deg",
    "gnc_optimal_min_angle_deg",
    "gnc_means_gram_logdet",
    "gnc_proxies_gram_logdet",
    "gnc_means_log_kernel_variance",
    "gnc_proxies_log_kernel_variance",
    "gnc_intra_angle_deg",
}


# --------------------------------------------------------------------------------------------------
# Naive reference: every sample in memory, float64 numpy, definitions written out directly.
# --------------------------------------------------------------------------------------------------
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _pairs(k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(k, 1)


def _uniformity_np(prefix: str, vectors: np.ndarray) -> dict[str, float]:
    u = _unit(vectors)
    k = len(u)
    i, j = _pairs(k)
    dist_ij = np.linalg.norm(u[i] - u[j], axis=1)
    cos_ij = np.clip(np.sum(u[i] * u[j], axis=1), -1.0, 1.0)
    sq = np.sum((u[:, None, :] - u[None, :, :]) ** 2, axis=-1)
    return {
        f"gnc_{prefix}_energy": float(np.mean(dist_ij**-2.0)),
        f"gnc_{prefix}_log_energy": float(np.mean(-np.log(dist_ij))),
        f"gnc_{prefix}_min_angle_deg": float(np.degrees(np.arccos(cos_ij.max()))),
        f"gnc_{prefix}_gram_logdet": float(np.linalg.slogdet(np.exp(-sq) + 1e-6 * np.eye(k))[1]),
        f"gnc_{prefix}_log_kernel_variance": float(np.var(np.log(dist_ij**2))),
    }


def _etf_np(x: np.ndarray) -> float:
    k = len(x)
    g = x @ x.T
    etf = (np.eye(k) - np.ones((k, k)) / k) / np.sqrt(k - 1)
    return float(np.linalg.norm(g / np.linalg.norm(g) - etf))


def _cv(v: np.ndarray) -> float:
    return float(np.std(v) / np.mean(v))


def naive_metrics(features, targets, logits, classifier, num_classes, class_means=None) -> dict:
    h = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets)
    w = np.asarray(classifier, dtype=np.float64)
    d = h.shape[1]
    present = np.unique(y)
    ks = len(present)
    mu = np.stack([h[y == c].mean(axis=0) for c in present])
    mu_g = h.mean(axis=0)
    m = mu - mu_g
    row = {c: r for r, c in enumerate(present)}
    own_mu = mu[[row[c] for c in y]]
    dev = h - own_mu
    sigma_w = dev.T @ dev / len(h)
    sigma_b = sum(np.outer(v, v) for v in m) / ks
    cos_m = (_unit(m) @ _unit(m).T)[_pairs(ks)]
    w_seen = w[present]
    out = {
        "nc1": float(np.trace(sigma_w @ np.linalg.pinv(sigma_b, rtol=PINV_RTOL, hermitian=True)))
        / ks,
        "nc1_trace_ratio": float(np.trace(sigma_w) / np.trace(sigma_b)),
        "nc2_equinorm_means": _cv(np.linalg.norm(m, axis=1)),
        "nc2_equinorm_classifier": _cv(np.linalg.norm(w, axis=1)),
        "nc2_equiangularity": float(np.std(cos_m)),
        "nc2_max_angle": float(np.mean(np.abs(cos_m + 1.0 / (ks - 1)))),
        "nc2_etf_means": _etf_np(m),
        "nc2_etf_classifier": _etf_np(w),
        "nc3": float(np.sum((w_seen / np.linalg.norm(w_seen) - m / np.linalg.norm(m)) ** 2)),
    }
    out.update(_uniformity_np("means", m))
    out.update(_uniformity_np("proxies", w))
    out["gnc_optimal_min_angle_deg"] = optimal_min_angle_deg(num_classes, d)
    x = _unit(h)
    out["gnc_intra_mean_cos"] = float(np.mean(np.sum(x * _unit(own_mu), axis=1)))
    if class_means is None:
        out["nc4"] = math.nan
        out["gnc_intra_angle_deg"] = math.nan
    else:
        cm = np.asarray(class_means, dtype=np.float64)
        sq = np.stack([np.sum((h - cm[c]) ** 2, axis=1) for c in range(num_classes)], axis=1)
        ncc = sq.argmin(axis=1)
        out["nc4"] = float(np.mean(ncc != np.asarray(logits).argmax(axis=1)))
        cos = np.clip(np.sum(x * _unit(cm)[y], axis=1), -1.0, 1.0)
        out["gnc_intra_angle_deg"] = float(np.degrees(np.mean(np.arccos(cos))))
    out["num_classes_seen"] = float(ks)
    return out


def assert_metrics_close(got: dict, want: dict, rtol: float, atol: float = 1e-12) -> None:
    assert set(want) <= set(got), set(want) - set(got)
    bad = []
    for key, value in want.items():
        if math.isnan(value):
            if not math.isnan(got[key]):
                bad.append((key, got[key], value))
        elif not math.isclose(got[key], value, rel_tol=rtol, abs_tol=atol):
            bad.append((key, got[key], value))
    assert not bad, bad


def random_problem(n=600, k=6, d=5, seed=0, offset=0.0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    targets = torch.randint(0, k, (n,), generator=gen)
    features = centres[targets] + torch.randn(n, d, generator=gen, dtype=torch.float64) + offset
    classifier = torch.randn(k, d, generator=gen, dtype=torch.float64)
    logits = features @ classifier.T + 3.0 * torch.randn(n, k, generator=gen, dtype=torch.float64)
    given_means = centres + offset + 0.5 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    return features.to(dtype), targets, logits.to(dtype), classifier, given_means


def run_metric(features, targets, logits, classifier, k, class_means=None, batches=1, perm=None):
    metric = NeuralCollapse(k, features.shape[1], class_means=class_means)
    idx = torch.arange(len(features)) if perm is None else perm
    for chunk in torch.tensor_split(idx, batches):
        metric.update(features[chunk], targets[chunk], logits[chunk])
    return metric.compute(classifier)


def as_np(*tensors):
    return [t.double().numpy() for t in tensors]


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("with_means", [True, False])
@pytest.mark.parametrize(("k", "d"), [(6, 5), (4, 9)])
def test_matches_naive_numpy(with_means, k, d):
    h, y, z, w, cm = random_problem(k=k, d=d, seed=k + d)
    cm = cm if with_means else None
    got = run_metric(h, y, z, w, k, class_means=cm, batches=5)
    assert set(got) >= REQUIRED_KEYS
    want = naive_metrics(*as_np(h), y.numpy(), *as_np(z, w), k, None if cm is None else cm.numpy())
    assert_metrics_close(got, want, rtol=1e-6)
    assert math.isnan(got["nc4"]) is (not with_means)
    if with_means:
        assert 0.0 < got["nc4"] < 1.0  # the case is not trivial


def test_compute_depends_on_the_classifier_each_call():
    h, y, z, w, _ = random_problem(seed=3)
    metric = NeuralCollapse(6, 5)
    metric.update(h, y, z)
    first = metric.compute(w)
    second = metric.compute(2.0 * w.flip(0) + 1.0)
    assert first["nc3"] != second["nc3"]  # no stale cache
    want = naive_metrics(*as_np(h), y.numpy(), *as_np(z, 2.0 * w.flip(0) + 1.0), 6)
    assert_metrics_close(second, want, rtol=1e-6)
    with pytest.raises(ValueError, match="compute_with_cache"):
        NeuralCollapse(6, 5, compute_with_cache=True)


def simplex_etf(k: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm simplex ETF rows [k, d] and a unit vector orthogonal to their span."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    etf = math.sqrt(k / (k - 1)) * (torch.eye(k, dtype=torch.float64) - 1.0 / k)
    return etf @ q[:, :k].T, q[:, k]


def test_exact_collapse_on_simplex_etf():
    k, d, per_class, scale = 5, 8, 20, 3.0
    vertices, orthogonal = simplex_etf(k, d)
    targets = torch.arange(k).repeat_interleave(per_class)[torch.randperm(k * per_class)]
    # A common offset orthogonal to the ETF span: centring must remove it; logits are unaffected.
    features = scale * vertices[targets] + 7.0 * orthogonal
    logits = features @ vertices.T
    means = scale * vertices + 7.0 * orthogonal
    got = run_metric(features, targets, logits, vertices, k, class_means=means, batches=3)

    for key in ("nc1", "nc1_trace_ratio"):
        assert got[key] == pytest.approx(0.0, abs=1e-8), key
    for key in (
        "nc2_etf_means",
        "nc2_etf_classifier",
        "nc2_equiangularity",
        "nc2_max_angle",
        "nc2_equinorm_means",
        "nc2_equinorm_classifier",
        "nc3",
        "gnc_means_log_kernel_variance",
        "gnc_proxies_log_kernel_variance",
        "gnc_intra_angle_deg",
    ):
        assert got[key] == pytest.approx(0.0, abs=1e-6), key
    assert got["nc4"] == 0.0
    assert got["gnc_intra_mean_cos"] == pytest.approx(1.0, abs=1e-12)
    optimum = math.degrees(math.acos(-1.0 / (k - 1)))
    assert got["gnc_optimal_min_angle_deg"] == pytest.approx(optimum, abs=1e-12)
    assert got["gnc_means_min_angle_deg"] == pytest.approx(optimum, abs=1e-6)
    assert got["gnc_proxies_min_angle_deg"] == pytest.approx(optimum, abs=1e-6)
    # ETF pairs are all at squared distance 2 + 2/(k-1).
    assert got["gnc_means_energy"] == pytest.approx(1.0 / (2.0 + 2.0 / (k - 1)), rel=1e-9)


def test_collapse_metrics_react_to_perturbation():
    """Guard against a metric that is identically zero: perturb the collapsed ETF case."""
    k, d = 5, 8
    vertices, _ = simplex_etf(k, d)
    targets = torch.arange(k).repeat_interleave(10)
    gen = torch.Generator().manual_seed(1)
    features = 3.0 * vertices[targets] + 0.3 * torch.randn(len(targets), d, generator=gen).double()
    w = vertices + 0.3 * torch.randn(k, d, generator=gen).double()
    got = run_metric(features, targets, features @ w.T, w, k)
    for key in ("nc1", "nc2_etf_means", "nc2_etf_classifier", "nc3", "nc2_equiangularity"):
        assert got[key] > 1e-3, key
    assert got["gnc_proxies_min_angle_deg"] < got["gnc_optimal_min_angle_deg"] - 1e-3


def test_invariant_to_batch_order_and_size():
    h, y, z, w, cm = random_problem(n=500, seed=5)
    reference = run_metric(h, y, z, w, 6, class_means=cm, batches=1)
    perm = torch.randperm(len(h), generator=torch.Generator().manual_seed(0))
    for batches, order in [(7, None), (1, perm), (33, perm), (500, perm)]:
        got = run_metric(h, y, z, w, 6, class_means=cm, batches=batches, perm=order)
        assert_metrics_close(got, reference, rtol=1e-10)


def test_reset_forgets_previous_data():
    h, y, z, w, _ = random_problem(seed=6)
    metric = NeuralCollapse(6, 5)
    metric.update(h + 50.0, y, z)
    metric.reset()
    metric.update(h, y, z)
    assert_metrics_close(metric.compute(w), run_metric(h, y, z, w, 6), rtol=1e-12)


def test_float32_large_n_keeps_float64_precision():
    n, k, d = 200_000, 10, 16
    h, y, z, w, cm = random_problem(n=n, k=k, d=d, seed=7, offset=100.0, dtype=torch.float32)
    got = run_metric(h, y, z, w, k, class_means=cm, batches=10)
    want = naive_metrics(*as_np(h), y.numpy(), *as_np(z, w), k, cm.numpy())
    assert_metrics_close(got, want, rtol=1e-5)


def test_unseen_classes_are_excluded_and_too_few_classes_raise():
    h, y, z, w, _ = random_problem(k=6, seed=8)
    keep = y != 2
    got = run_metric(h[keep], y[keep], z[keep], w, 6)
    want = naive_metrics(*as_np(h[keep]), y[keep].numpy(), *as_np(z[keep], w), 6)
    assert got["num_classes_seen"] == 5.0
    assert_metrics_close(got, want, rtol=1e-6)

    metric = NeuralCollapse(6, 5)
    metric.update(h[y == 1], y[y == 1], z[y == 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        metric.compute(w)


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_merged_shards_equal_one_process():
    h, y, z, w, cm = random_problem(n=700, seed=9)
    whole = run_metric(h, y, z, w, 6, class_means=cm, batches=3)
    # Uneven shards; class 0 appears only in shard B.
    in_a = (torch.arange(len(h)) < 200) & (y != 0)
    shards = [NeuralCollapse(6, 5, class_means=cm) for _ in range(2)]
    for metric, mask in zip(shards, (in_a, ~in_a), strict=True):
        metric.update(h[mask], y[mask], z[mask])
    # What dist_reduce_fx="sum" does under DDP: element-wise sums of the states.
    summed = {
        name: shards[0].metric_state[name] + shards[1].metric_state[name]
        for name in shards[0].metric_state
    }
    fresh = NeuralCollapse(6, 5, class_means=cm)
    fresh.merge_state(summed)
    assert_metrics_close(fresh.compute(w), whole, rtol=1e-10)
    shards[0].merge_state(shards[1])
    assert_metrics_close(shards[0].compute(w), whole, rtol=1e-10)


def _rank_body(rank: int, world_size: int, out_dir: str) -> None:
    h, y, z, w, cm = random_problem(n=700, seed=10)
    # Uneven shards: rank 0 gets 250 samples, rank 1 the rest.
    mask = torch.arange(len(h)) < 250
    mask = mask if rank == 0 else ~mask
    metric = NeuralCollapse(6, 5, class_means=cm)
    metric.update(h[mask], y[mask], z[mask])
    synced = metric.compute(w)
    local_count = int(metric.class_counts.sum())  # unsynced again after compute
    torch.save({"synced": synced, "local_count": local_count}, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_two_process_gloo_matches_one_process(tmp_path):
    """Real torch.distributed sync: rank 0 runs in this process, rank 1 in a spawned one."""
    run_two_ranks(_rank_body, tmp_path, timeout=60)
    h, y, z, w, cm = random_problem(n=700, seed=10)
    whole = run_metric(h, y, z, w, 6, class_means=cm)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["local_count"] for r in results] == [250, 450]
    for result in results:
        assert_metrics_close(result["synced"], whole, rtol=1e-10)
    assert not dist.is_initialized()


def test_nc4_and_intra_angle_nan_without_class_means():
    h, y, z, w, _ = random_problem(seed=11)
    got = run_metric(h, y, z, w, 6)
    assert math.isnan(got["nc4"])
    assert math.isnan(got["gnc_intra_angle_deg"])
    assert not math.isnan(got["gnc_intra_mean_cos"])


def test_intra_angle_with_the_data_means_is_the_mean_angle_to_the_class_mean_direction():
    h, y, z, w, _ = random_problem(seed=12)
    means = torch.stack([h[y == c].mean(0) for c in range(6)])
    got = run_metric(h, y, z, w, 6, class_means=means)
    x = h / h.norm(dim=1, keepdim=True)
    cos = (x * (means / means.norm(dim=1, keepdim=True))[y]).sum(1)
    assert got["gnc_intra_angle_deg"] == pytest.approx(
        math.degrees(torch.arccos(cos).mean().item()), rel=1e-9
    )
    assert got["gnc_intra_mean_cos"] == pytest.approx(cos.mean().item(), rel=1e-9)


def test_shape_errors_are_clear():
    h, y, z, w, cm = random_problem(seed=13)
    metric = NeuralCollapse(6, 5)
    with pytest.raises(ValueError, match="features"):
        metric.update(h[:, :4], y, z)
    with pytest.raises(ValueError, match="logits"):
        metric.update(h, y, z[:, :5])
    with pytest.raises(ValueError, match="targets"):
        metric.update(h, y[:-1], z)
    with pytest.raises(ValueError, match="targets"):
        metric.update(h, torch.full_like(y, 6), z)
    with pytest.raises(ValueError, match="class_means"):
        NeuralCollapse(6, 5, class_means=cm[:, :4])
    metric.update(h, y, z)
    with pytest.raises(ValueError, match="classifier"):
        metric.compute(w[:5])
    with pytest.raises(ValueError, match="classifier"):
        metric.compute(w.T)
    with pytest.raises(NotImplementedError, match="compute"):
        metric(h, y, z)


@pytest.mark.parametrize(
    ("k", "d", "expected"),
    [
        (10, 16, math.degrees(math.acos(-1 / 9))),
        (4, 3, math.degrees(math.acos(-1 / 3))),
        (2, 1, 180.0),
        (3, 2, 120.0),
        (10, 2, 36.0),
        (10, 3, math.nan),
        (1, 5, math.nan),
    ],
)
def test_optimal_min_angle_deg(k, d, expected):
    got = optimal_min_angle_deg(k, d)
    if math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(expected, rel=1e-12)
