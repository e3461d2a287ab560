"""W&B picks offline mode by itself without an API key, and every run is closed, even on errors."""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import wandb
from omegaconf import DictConfig, OmegaConf

from hugnc.loggers import wandb_api_key_configured, wandb_logger
from hugnc.module import HUGClassifier
from hugnc.train import train


@pytest.fixture
def no_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc_file = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc_file))
    return netrc_file


def test_key_detection(no_credentials: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert not wandb_api_key_configured()
    no_credentials.write_text("machine example.org login user password secret\n")
    assert not wandb_api_key_configured()
    no_credentials.write_text("machine api.wandb.ai login user password secret\n")
    assert wandb_api_key_configured()
    no_credentials.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_api_key_configured()


def test_automatic_mode(
    no_credentials: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert wandb_logger("p", str(tmp_path))._wandb_init["mode"] == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logger("p", str(tmp_path))._wandb_init["mode"] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_logger("p", str(tmp_path))._wandb_init["mode"] == "disabled"
    assert wandb_logger("p", str(tmp_path), mode="offline")._wandb_init["mode"] == "offline"
    with pytest.raises(ValueError, match="online, offline, disabled or null"):
        wandb_logger("p", str(tmp_path), mode="sometimes")


@contextmanager
def hydra_job_logging(cfg: DictConfig) -> Iterator[Path]:
    """The logging a Hydra job of ``cfg`` runs under (``hydra.job_logging``: the console and the
    run's log file, whose path it yields); the previous root handlers come back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    Path(cfg.hydra.runtime.output_dir).mkdir(parents=True, exist_ok=True)
    config = OmegaConf.to_container(cfg.hydra.job_logging, resolve=True)
    assert isinstance(config, dict)
    logging.config.dictConfig(config)
    try:
        yield Path(config["handlers"]["file"]["filename"])
    finally:
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_offline_run_lands_in_run_dir_and_says_how_to_sync_once(
    compose_cfg, no_credentials: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = compose_cfg("trainer=debug", "data.batch_size=8", "~callbacks.progress_bar")
    with hydra_job_logging(cfg) as log_file:
        train(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    sync = f"upload it later with: wandb sync {runs[0]}"
    # Once on the console, once in the run's log file.
    assert capsys.readouterr().out.count(sync) == 1
    assert log_file.read_text().count(sync) == 1
    assert wandb.run is None


def test_run_is_finished_when_training_raises(compose_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    def diverge(self, batch, batch_idx):
        raise FloatingPointError("loss is nan")

    monkeypatch.setattr(HUGClassifier, "training_step", diverge)
    cfg = compose_cfg("trainer=debug", "data.batch_size=8", "~callbacks.progress_bar")
    with pytest.raises(FloatingPointError):
        train(cfg)
    assert wandb.run is None  # closed, so the next job of a multirun starts its own run
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
