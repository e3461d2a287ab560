"""Load a finished run directory back: its config, datamodule and model weights.

A run directory (``logs/<task>/runs/<time>_<id>/``, written by ``python -m hugnc``) holds
``.hydra/config.yaml`` (the composed job config), ``.hydra/hydra.yaml`` and ``checkpoints/``. The
objects are rebuilt with the training code itself (:func:`hugnc.train.build_module`,
``instantiate(cfg.data)``), so a tool sees exactly the model that was trained.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from lightning import LightningDataModule
from omegaconf import DictConfig, OmegaConf

from hugnc.module import HUGClassifier
from hugnc.train import build_module

_HYDRA_INTERPOLATION = re.compile(r"\$\{hydra:([\w.]+)\}")


def run_dir_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with what every ``RUN_DIR`` tool takes: the run directory and
    ``--checkpoint`` (see :func:`find_checkpoint`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("run_dir", type=Path, help="a run directory (logs/<task>/runs/<...>)")
    parser.add_argument(
        "--checkpoint", default="best", help="best (default, as the test used), last, or a path"
    )
    return parser


class NotARunDirError(ValueError):
    """The directory is not a hugnc run directory (or lacks what the tool needs)."""


@dataclass
class Run:
    """A run rebuilt from its directory."""

    run_dir: Path
    cfg: DictConfig
    datamodule: LightningDataModule
    module: HUGClassifier
    checkpoint: Path


def load_run_config(run_dir: str | Path, data_dir: str | Path | None = None) -> DictConfig:
    """The run's job config with every ``${hydra:...}`` replaced by the run's Hydra values.

    ``${hydra:runtime.output_dir}`` becomes ``run_dir`` itself (runs can be moved); other keys come
    from ``.hydra/hydra.yaml`` (e.g. ``runtime.cwd`` for the default data directory).
    ``data_dir`` overrides ``paths.data_dir``.

    Raises:
        NotARunDirError: no ``.hydra/config.yaml`` in ``run_dir``.
    """
    run_dir = Path(run_dir).resolve()
    config_path = run_dir / ".hydra" / "config.yaml"
    if not config_path.is_file():
        raise NotARunDirError(
            f"{run_dir} is not a hugnc run directory: no .hydra/config.yaml in it (run "
            "directories are logs/<task_name>/runs/<date>_<time>_<id>/, made by python -m hugnc)"
        )
    hydra_path = run_dir / ".hydra" / "hydra.yaml"
    hydra_cfg = OmegaConf.load(hydra_path).hydra if hydra_path.is_file() else OmegaConf.create()

    def hydra_value(match: re.Match) -> str:
        key = match.group(1)
        if key == "runtime.output_dir":
            return str(run_dir)
        value = OmegaConf.select(hydra_cfg, key, default=None)
        if value is None:
            raise NotARunDirError(f"{config_path} uses ${{hydra:{key}}}, not in {hydra_path}")
        return str(value)

    text = _HYDRA_INTERPOLATION.sub(hydra_value, config_path.read_text())
    cfg = OmegaConf.create(text)
    if data_dir is not None:
        cfg.paths.data_dir = str(data_dir)
    return cfg


def find_checkpoint(run_dir: str | Path, which: str = "best") -> Path:
    """``which`` = ``"best"`` (the ModelCheckpoint's best, as ``trainer.test`` used; falls back to
    last), ``"last"`` (``checkpoints/last.ckpt``), or a path to a ``.ckpt`` file.

    Raises:
        NotARunDirError: the checkpoint does not exist.
    """
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        path = Path(which)
        if not path.is_file():
            raise NotARunDirError(f"checkpoint {path} does not exist")
        return path
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        found = sorted((run_dir / "checkpoints").glob("*.ckpt"))
        if not found:
            raise NotARunDirError(
                f"no checkpoint in {run_dir / 'checkpoints'} (a run with trainer=debug or "
                "fast_dev_run keeps none)"
            )
        last = found[-1]
    if which == "last":
        return last
    state = torch.load(last, map_location="cpu", weights_only=False)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            # Checkpoints move with the run directory: look next to last.ckpt.
            best = last.parent / Path(value["best_model_path"]).name
            if best.is_file():
                return best
    return last


def load_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Run:
    """Rebuild a run: config, datamodule (set up), module with the checkpoint's weights (eval).

    Checkpoints are unpickled (``weights_only=False``): load only run directories you trust.
    """
    run_dir = Path(run_dir).resolve()
    cfg = load_run_config(run_dir, data_dir)
    path = find_checkpoint(run_dir, checkpoint)
    datamodule: LightningDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    module = build_module(cfg, datamodule.input_shape)
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    module.to(device).eval()
    return Run(run_dir=run_dir, cfg=cfg, datamodule=datamodule, module=module, checkpoint=path)


__all__ = ["NotARunDirError", "Run", "find_checkpoint", "load_run", "load_run_config"]
