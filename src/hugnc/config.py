"""Where the Hydra configs live, and the resolvers they use (imported before any composition)."""

from __future__ import annotations

import secrets
from pathlib import Path

from omegaconf import OmegaConf

_RUN_ID: list[str] = []


def config_dir() -> Path:
    """The ``conf/`` directory: inside the installed package, else the repository checkout's."""
    packaged = Path(__file__).resolve().parent / "conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    raise FileNotFoundError(f"hugnc configs not found in {packaged} or {checkout}: reinstall hugnc")


def run_id() -> str:
    """A per-process random suffix for output directories.

    Hydra's ``${now:...}`` alone collides when two runs or sweeps start in the same second. The id
    is fixed within a process (a sweep's jobs share one sweep directory) and never inherited:
    Lightning's DDP ranks receive the run directory explicitly as ``hydra.run.dir``.
    """
    if not _RUN_ID:
        _RUN_ID.append(secrets.token_hex(3))
    return _RUN_ID[0]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("hugnc.run_id"):
        OmegaConf.register_new_resolver("hugnc.run_id", run_id)


register_resolvers()
