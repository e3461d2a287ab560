"""The unconstrained-features model (hugnc.ufm, ``hugnc-ufm``): what each loss converges to."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from hugnc.config import config_dir
from hugnc.losses import CrossEntropyLoss, HUGLoss
from hugnc.models import LinearHead, ProxyHead
from hugnc.ufm import UFMSettings, UnconstrainedFeatures, simulate

#: (variant, beta, schedule, steps): the paper's weights. MHS (max-min) is non-smooth: with a
#: constant lr its proxies keep oscillating, so it anneals the lr (cosine).
VARIANTS = [
    ("mhe", 0.015, "constant", 400),
    ("mgd", 0.03, "constant", 400),
    ("mhs", 0.015, "cosine", 800),
]


def hug_ufm(
    variant: str, beta: float, schedule: str, steps: int, num_classes: int, dim: int
) -> tuple[UnconstrainedFeatures, list[dict[str, float]]]:
    torch.manual_seed(0)
    ufm = UnconstrainedFeatures(ProxyHead(dim, num_classes), num_classes, 10, dim)
    settings = UFMSettings(
        num_classes, 10, dim, steps=steps, log_every=steps // 2, schedule=schedule
    )
    return ufm, simulate(ufm, HUGLoss(variant, alpha=0.15, beta=beta), settings)


def pairwise_cosines(vectors: torch.Tensor) -> torch.Tensor:
    """Off-diagonal cosines of the rows of ``vectors`` ``[K, d]``: ``[K (K - 1)]``."""
    unit = F.normalize(vectors.detach().double(), dim=1)
    num = len(unit)
    return (unit @ unit.T)[~torch.eye(num, dtype=torch.bool)]


@pytest.mark.parametrize(("variant", "beta", "schedule", "steps"), VARIANTS)
def test_hug_variants_reach_the_simplex(variant: str, beta: float, schedule: str, steps: int):
    """K = 4 <= d + 1 = 4: proxies and class means form a regular tetrahedron, features
    collapse (GNC = NC)."""
    ufm, history = hug_ufm(variant, beta, schedule, steps, num_classes=4, dim=3)
    assert [entry["step"] for entry in history] == [0, steps // 2, steps]
    final = history[-1]
    cosines = pairwise_cosines(ufm.head.classifier)
    assert torch.allclose(cosines, torch.full_like(cosines, -1 / 3), atol=3e-3), cosines
    assert final["gnc_proxies_min_angle_deg"] == pytest.approx(
        final["gnc_optimal_min_angle_deg"], abs=0.5
    )
    assert final["gnc_optimal_min_angle_deg"] == pytest.approx(math.degrees(math.acos(-1 / 3)))
    assert history[0]["nc1"] > 5 and final["nc1"] < 0.05
    assert final["gnc_intra_mean_cos"] > 0.995 and final["nc4"] == 0
    means = pairwise_cosines(ufm.class_means() - ufm.class_means().mean(dim=0))
    assert torch.allclose(means, torch.full_like(means, -1 / 3), atol=0.05), means
    assert final["loss_inter"] < history[0]["loss_inter"]


@pytest.mark.parametrize(("variant", "beta", "schedule", "steps"), VARIANTS)
def test_hug_variants_on_the_circle_are_a_regular_10_gon(
    variant: str, beta: float, schedule: str, steps: int
) -> None:
    """K = 10 > d + 1 = 3 (the GNC regime): every angular gap between neighbouring proxies is
    36 degrees."""
    steps = int(steps * 1.25)
    ufm, history = hug_ufm(variant, beta, schedule, steps, num_classes=10, dim=2)
    proxies = ufm.head.classifier.detach().double()
    angles = torch.atan2(proxies[:, 1], proxies[:, 0]).sort().values
    gaps = torch.rad2deg(torch.diff(torch.cat([angles, angles[:1] + 2 * math.pi])))
    assert torch.allclose(gaps, torch.full_like(gaps, 36.0), atol=0.5), gaps
    assert history[-1]["gnc_optimal_min_angle_deg"] == 36.0
    assert history[-1]["gnc_proxies_min_angle_deg"] == pytest.approx(36.0, abs=0.5)
    assert history[-1]["nc1"] < 0.05


def test_cross_entropy_collapses_to_the_simplex_too() -> None:
    torch.manual_seed(0)
    ufm = UnconstrainedFeatures(LinearHead(3, 4), 4, 10, 3)
    history = simulate(ufm, CrossEntropyLoss(), UFMSettings(4, 10, 3, steps=600, log_every=300))
    first, final = history[0], history[-1]
    assert "loss_inter" not in final and final["loss"] < 0.01 < first["loss"]
    assert final["nc1"] < 1e-3 and final["nc3"] < 1e-3
    assert final["gnc_proxies_min_angle_deg"] > 105  # approaching the ETF's 109.47
    assert final["nc2_etf_classifier"] < first["nc2_etf_classifier"] / 10


def test_minibatches_and_settings() -> None:
    torch.manual_seed(0)
    ufm = UnconstrainedFeatures(ProxyHead(3, 4), 4, 10, 3)
    before = ufm.features.detach().clone()
    settings = UFMSettings(4, 10, 3, steps=10, log_every=4, batch_size=8)
    history = simulate(ufm, HUGLoss("mhe", 0.15, 0.015), settings)
    assert [entry["step"] for entry in history] == [0, 4, 8, 10]
    assert not torch.equal(before, ufm.features)
    assert torch.allclose(ufm.head.classifier.norm(dim=1), torch.ones(4))  # renormalized
    terms = HUGLoss("mgd", 0.15, 0.03).loss_terms(ufm.features, ufm.labels, ufm.head)
    assert set(terms) == {"loss", "loss_inter", "loss_intra"}
    assert ufm.labels.tolist() == [c for c in range(4) for _ in range(10)]
    for bad in ({"schedule": "step"}, {"log_every": 0}, {"batch_size": 0}, {"num_classes": 1}):
        with pytest.raises(ValueError):
            UFMSettings(**{"num_classes": 4, "samples_per_class": 2, "feature_dim": 3, **bad})
    with pytest.raises(ValueError, match="head classifier"):
        UnconstrainedFeatures(ProxyHead(3, 5), 4, 2, 3)


def test_ufm_config_composes_every_loss() -> None:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose(config_name="ufm")
            assert cfg.task_name == "ufm" and cfg.loss.variant == "mhe"
            assert (cfg.ufm.num_classes, cfg.ufm.samples_per_class, cfg.ufm.feature_dim) == (
                100,
                500,
                512,
            )
            assert (cfg.ufm.lr, cfg.ufm.momentum, cfg.ufm.nesterov, cfg.ufm.weight_decay) == (
                1.0,
                0.9,
                True,
                5e-4,
            )
            UFMSettings(**cfg.ufm)
            cfg = compose(config_name="ufm", overrides=["loss=ce"])
            assert cfg.head._target_ == "hugnc.models.LinearHead"
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.slow
def test_cli_writes_ufm_json_and_pictures(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "hugnc-ufm"
    result = subprocess.run(
        [
            str(script),
            "loss=mgd_hug",
            "ufm.num_classes=10",
            "ufm.feature_dim=2",
            "ufm.samples_per_class=5",
            "ufm.steps=500",
            "ufm.log_every=250",
        ],
        cwd=tmp_path,
        env=os.environ | {"HUGNC_LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "logs" / "ufm" / "runs").iterdir()
    saved = json.loads((run_dir / "ufm.json").read_text())
    assert saved["loss"]["variant"] == "mgd" and saved["settings"]["feature_dim"] == 2
    assert [entry["step"] for entry in saved["history"]] == [0, 250, 500]
    assert saved["final"]["gnc_proxies_min_angle_deg"] == pytest.approx(36.0, abs=0.5)
    assert saved["final"]["gnc_optimal_min_angle_deg"] == 36.0
    final = torch.load(run_dir / "ufm_final.pt")
    assert final["classifier"].shape == (10, 2) and final["class_means"].shape == (10, 2)
    for name in ("ufm_curves.png", "feature_geometry_ufm.png", "class_cosines_ufm.png"):
        assert (run_dir / name).stat().st_size > 10_000, name
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "known optimum for K=10, d=2: 36.000 deg" in result.stdout
    assert "minang(W)" in result.stdout
