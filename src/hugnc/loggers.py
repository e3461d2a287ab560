"""Loggers built from config. W&B goes offline by itself when no API key is configured."""

from __future__ import annotations

import netrc
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, WandbLogger


def wandb_api_key_configured() -> bool:
    """True if W&B can authenticate: ``WANDB_API_KEY`` or a netrc entry for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = (
        urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
        or "api.wandb.ai"
    )
    netrc_path = os.environ.get("NETRC", str(Path.home() / ".netrc"))
    try:
        return netrc.netrc(netrc_path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, PermissionError):
        return False


def wandb_logger(
    project: str,
    save_dir: str,
    name: str | None = None,
    group: str | None = None,
    tags: Iterable[str] = (),
    mode: str | None = None,
    **kwargs: Any,
) -> WandbLogger:
    """A WandbLogger whose files land in ``save_dir`` (the run directory).

    Args:
        mode: ``"online"``, ``"offline"``, ``"disabled"``, or ``None`` for automatic: the
            ``WANDB_MODE`` environment variable if set, else online when an API key is configured
            and offline otherwise (without a key wandb would otherwise fail after a network wait).
    """
    if mode is None:
        mode = os.environ.get("WANDB_MODE") or (
            "online" if wandb_api_key_configured() else "offline"
        )
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(
            f"logger.wandb.mode must be online, offline, disabled or null (auto), got {mode!r}"
        )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    # W&B rejects tags longer than 64 characters (long overrides such as lists).
    tags = [str(tag)[:64] for tag in tags]
    return WandbLogger(
        project=project,
        save_dir=save_dir,
        name=name,
        group=group,
        tags=tags,
        mode=mode,
        **kwargs,
    )


def finish_loggers(loggers: Iterable[Logger], failed: bool) -> list[str]:
    """Close every W&B run (also when training raised, so a multirun's next job starts cleanly).

    Returns:
        One human-readable line per offline W&B run: where it is and how to upload it.
    """
    messages = []
    for logger in loggers:
        if not isinstance(logger, WandbLogger) or logger._experiment is None:
            continue
        run = logger.experiment
        offline = bool(getattr(run.settings, "_offline", False)) or run.settings.mode == "offline"
        run_dir = Path(run.dir).parent  # run.dir is <save_dir>/wandb/<run>/files
        run.finish(exit_code=1 if failed else 0)
        if offline:
            messages.append(
                f"W&B run saved offline in {run_dir}; upload it later with: wandb sync {run_dir}"
            )
    return messages
