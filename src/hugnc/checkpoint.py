"""Checkpoints written atomically in their own directory, with a clear error when that fails.

Lightning's default writer stages the file in the system temp dir and moves it: across file
systems the move is a copy over the old file, so a kill or a full disk during the copy destroys
the previous ``last.ckpt``. Here the bytes go to a temporary file next to the target, are flushed
to disk, and replace it with one ``os.replace`` (atomic on POSIX): the old checkpoint stays whole
until the new one is complete.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hugnc.run_dir import load_checkpoint, run_dir_of_checkpoint

#: Set to 1 to unpickle training checkpoints fully (``ckpt_path=``, ``resume=``).
TRUST_ENV = "HUGNC_TRUST_CHECKPOINT"

#: errno values that mean "the output location cannot take this file" (not a bug in hugnc).
STORAGE_ERRNOS = frozenset(
    code
    for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES)
    if code is not None
)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the files already on disk are untouched."""


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a same-directory temporary file and ``os.replace``.

    Raises:
        CheckpointWriteError: the directory cannot take the file (disk full, quota, read-only,
            permissions). The message names the file, the reason and the checkpoints left intact.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if error.errno is None or error.errno not in STORAGE_ERRNOS:
            raise
        intact = sorted(p.name for p in path.parent.glob("*.ckpt")) if path.parent.is_dir() else []
        raise CheckpointWriteError(
            error.errno,
            f"could not write checkpoint {path}: {os.strerror(error.errno)}. Checkpoints already "
            f"in {path.parent} are intact ({', '.join(intact) or 'none yet'}). Free space or "
            "choose another output location (paths.log_dir=...), then continue with "
            f"`python -m hugnc resume={run_dir_of_checkpoint(path)}`",
        ) from error


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin writing with :func:`atomic_torch_save` (local paths)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}"
            )
        if "://" in str(path):  # remote file systems: Lightning's fsspec writer
            super().save_checkpoint(checkpoint, str(path), storage_options)
            return
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(
        self,
        path: str | Path,
        map_location: Any = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        """Weights-only, whatever torch's default (``ckpt_path=``, ``resume=``): a checkpoint
        from elsewhere cannot run code here. ``HUGNC_TRUST_CHECKPOINT=1`` unpickles fully (your
        own old files that need it)."""
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only)
        trust = weights_only is False or os.environ.get(TRUST_ENV) == "1"
        return load_checkpoint(path, trust=trust, opt_in=f"{TRUST_ENV}=1")
