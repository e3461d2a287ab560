"""Shared fixtures: composed real configs, offline W&B, real Fashion-MNIST in a session tmp dir."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from hugnc.config import config_dir
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


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir holding the real Fashion-MNIST raw files (gunzipped from Debian's package)."""
    root = tmp_path_factory.mktemp("data")
    ensure_fashion_mnist(root, download=False)
    return root


ComposeFn = Callable[..., DictConfig]


@pytest.fixture
def compose_cfg(tmp_path: Path, fashion_mnist_dir: Path) -> ComposeFn:
    """Compose the real ``train`` config with overrides, outputs in ``tmp_path``, as Hydra would."""

    def _compose(*overrides: str) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose(
                config_name="train",
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
