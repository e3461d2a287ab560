"""Shared fixtures: composed real configs, offline W&B, real Fashion-MNIST in a session tmp dir."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from hugnc.config import RUN_STAMP_ENV, config_dir
from hugnc.data import ensure_fashion_mnist

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the network or a user's W&B account."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-default"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    # Each test (and each CLI it starts) names its own output directories.
    monkeypatch.delenv(RUN_STAMP_ENV, raising=False)


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the real Fashion-MNIST raw files (gunzipped from Debian's package)."""
    root = tmp_path_factory.mktemp("data")
    ensure_fashion_mnist(root, download=False)
    return root


ComposeFn = Callable[..., DictConfig]


@pytest.fixture
def compose_cfg(tmp_path: Path, fashion_mnist_dir: Path) -> ComposeFn:
    """Compose a real primary config (``train`` unless ``config_name=``) with overrides, outputs
    in ``tmp_path``, as Hydra would."""

    def _compose(*overrides: str, config_name: str = "train") -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose(
                config_name=config_name,
                return_hydra_config=True,
                overrides=[
                    f"paths.data_dir={fashion_mnist_dir}",
                    f"paths.log_dir={tmp_path}",
                    *overrides,
                ],
            )
        output_dir = tmp_path / "run"
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
            cfg.hydra.runtime.cwd = os.getcwd()
            cfg.hydra.job.num = 0
        HydraConfig().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory, fashion_mnist_dir: Path) -> Path:
    """A real run directory made by ``python -m hugnc`` (quickstart, 2 epochs of 5 batches, real
    Fashion-MNIST, NC measured on 2 batches): for tools and notebooks that read runs."""
    import subprocess
    import sys

    logs = tmp_path_factory.mktemp("tiny-run-logs")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hugnc",
            "experiment=quickstart",
            "logger=csv",
            "~callbacks.progress_bar",
            "trainer.max_epochs=2",
            "debug=limit",
            "trainer.limit_train_batches=5",
            "callbacks.neural_collapse.max_batches=2",
        ],
        cwd=logs,
        env=os.environ | {"HUGNC_DATA_DIR": str(fashion_mnist_dir), "HUGNC_LOG_DIR": str(logs)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (logs / "quickstart" / "runs").iterdir()
    return run_dir


def _fake_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def fake_sweep(tmp_path: Path) -> Path:
    sweep = tmp_path / "multiruns" / "2026-01-01_00-00-00_abcdef"
    grid = [(a, b) for b in ("0.015", "1.0") for a in ("0.1", "0.15")]
    for num, (alpha, beta) in enumerate(grid):
        for seed in (0, 1):
            overrides = [f"loss.alpha={alpha}", f"loss.beta={beta}", f"seed={seed}", "trainer=cpu"]
            accuracy = 0.5 + float(beta) / 4 + float(alpha) + seed / 100
            metrics = {"status": "completed", "test/acc": accuracy, "val/acc": accuracy - 0.01}
            if (alpha, beta, seed) == ("0.15", "1.0", 1):
                metrics = {"status": "failed", "error": "FloatingPointError: loss is nan"}
            if (alpha, beta, seed) == ("0.1", "1.0", 1):
                metrics = None  # killed: no metrics.json at all
            _fake_job(sweep, 2 * num + seed, overrides, metrics)
    return sweep
