"""Load a finished run directory back: its config, datamodule and model weights.

The directory's layout and readers are :mod:`hugnc.run_dir`'s. The objects are rebuilt with the
training code itself (:func:`hugnc.train.build_module`, ``instantiate(cfg.data)``), so a tool sees
exactly the model that was trained.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from hydra.utils import instantiate
from lightning import LightningDataModule
from omegaconf import DictConfig

from hugnc.module import HUGClassifier
from hugnc.run_dir import NotARunDirError, find_checkpoint, load_checkpoint, load_run_config
from hugnc.train import build_module

if TYPE_CHECKING:
    from hugnc.data import ContinualDataModule, ImageDataModule


def run_dir_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser with what every ``RUN_DIR`` tool takes: the run directory and
    ``--checkpoint`` (see :func:`find_checkpoint`)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("run_dir", type=Path, help="a run directory (logs/<task>/runs/<...>)")
    parser.add_argument(
        "--checkpoint", default="best", help="best (default, as the test used), last, or a path"
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle the checkpoint fully (runs code the file names): only for files you made "
        "that the default weights-only loading refuses",
    )
    return parser


@dataclass
class Run:
    """A run rebuilt from its directory."""

    run_dir: Path
    cfg: DictConfig
    datamodule: LightningDataModule
    module: HUGClassifier
    checkpoint: Path


def load_run(
    run_dir: str | Path,
    checkpoint: str = "best",
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    trust_checkpoint: bool = False,
) -> Run:
    """Rebuild a run: config, datamodule (set up), module with the checkpoint's weights (eval).

    The checkpoint is loaded weights-only (:func:`hugnc.run_dir.load_checkpoint`): a run directory
    from elsewhere cannot run code here; ``trust_checkpoint`` unpickles fully.
    """
    run_dir = Path(run_dir).resolve()
    cfg = load_run_config(run_dir, data_dir)
    path = find_checkpoint(run_dir, checkpoint, trust_checkpoint)
    datamodule: ImageDataModule | ContinualDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    datamodule.setup("test")
    module = build_module(cfg, datamodule.input_shape)
    state = load_checkpoint(path, trust_checkpoint)
    module.load_state_dict(state["state_dict"])
    module.to(device).eval()
    return Run(run_dir=run_dir, cfg=cfg, datamodule=datamodule, module=module, checkpoint=path)


def load_run_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Run:
    """:func:`load_run` with a RUN_DIR tool's arguments (:func:`run_dir_parser` plus
    ``--data-dir`` and ``--device``); a run it cannot load is the parser's one-line error."""
    try:
        return load_run(
            args.run_dir,
            args.checkpoint,
            args.data_dir,
            torch.device(args.device),
            trust_checkpoint=args.trust_checkpoint,
        )
    except NotARunDirError as error:
        parser.error(str(error))


__all__ = ["Run", "load_run", "load_run_from_args", "run_dir_parser"]
