"""Which errors are the user's to fix, and the one line each becomes.

The entry points (:func:`hugnc.preflight.run_checked`) print ``hugnc: <what is wrong>; <what to
do>`` for these and exit with :data:`EXIT_USER` (:data:`EXIT_FAILED` for a run that failed
without the user's doing, such as a diverged loss); any other error is a bug and keeps its
traceback. ``HUGNC_DEBUG=1`` (or ``HYDRA_FULL_ERROR=1``) shows the traceback of every error.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

#: A mistake in the command line, the data or the environment (argparse's code for usage errors).
EXIT_USER = 2
#: A run that failed on its own (non-finite loss): retry with other settings.
EXIT_FAILED = 1
#: Ctrl-C (128 + SIGINT, as shells report it).
EXIT_INTERRUPTED = 130
#: Set to 1 to see the traceback of any error (``HYDRA_FULL_ERROR=1`` too).
DEBUG_ENV = "HUGNC_DEBUG"

#: OSError numbers that name the user's disk or permissions, and what to do about them.
_DISK_ERRORS = {
    errno.ENOSPC: "free some space or choose another location (paths.log_dir=DIR)",
    errno.EDQUOT: "free some space or choose another location (paths.log_dir=DIR)",
    errno.EACCES: "choose a location you can write (paths.log_dir=DIR) or fix its permissions",
    errno.EROFS: "choose a writable location (paths.log_dir=DIR)",
}


@dataclass(frozen=True)
class UserFacing:
    """What the user sees for an error: one ``line`` and the process ``exit_code``."""

    line: str
    exit_code: int


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split("\n")) if str(error) else type(error).__name__
    return text.removeprefix("hugnc: ")


def user_facing(error: BaseException) -> UserFacing | None:
    """The one line for an error that is the user's to fix (or not a bug), else ``None``."""
    from hydra.errors import InstantiationException

    from hugnc.callbacks.finite_loss import NonFiniteLossError
    from hugnc.checkpoint import CheckpointWriteError
    from hugnc.data import DataError
    from hugnc.run_dir import NotARunDirError, ResumeError

    if isinstance(error, KeyboardInterrupt):
        return UserFacing("interrupted (Ctrl-C); files already written are kept", EXIT_INTERRUPTED)
    if isinstance(error, NonFiniteLossError):
        return UserFacing(_first_line(error), EXIT_FAILED)
    if isinstance(error, DataError | CheckpointWriteError | NotARunDirError | ResumeError):
        return UserFacing(_first_line(error), EXIT_USER)
    if isinstance(error, InstantiationException) and isinstance(
        error.__cause__, ValueError | TypeError
    ):
        # A constructor refusing a config value: the config check's ranges miss a case.
        full_key = str(error).rpartition("full_key: ")[2].strip() or "config"
        return UserFacing(f"{full_key}: {_first_line(error.__cause__)}", EXIT_USER)
    if isinstance(error, OSError) and error.errno in _DISK_ERRORS:
        where = f" ({error.filename})" if error.filename else ""
        return UserFacing(f"{error.strerror}{where}; {_DISK_ERRORS[error.errno]}", EXIT_USER)
    if type(error).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError (CUDA)
        return UserFacing(
            "out of accelerator memory; use a smaller data.batch_size (or "
            "data.eval_batch_size), or trainer.precision=bf16-mixed",
            EXIT_USER,
        )
    return None


def log_sweep_job_error(error: BaseException) -> None:
    """In a multirun, log a failed job's error as one line in the job's (and the sweep's) log:
    Hydra runs the other jobs and re-raises only the first failure at the end."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    shown = user_facing(error)
    line = shown.line if shown else f"{type(error).__name__}: {_first_line(error)}"
    log.error(f"hugnc: sweep job {HydraConfig.get().job.num} failed: {line}")


def report(error: BaseException, prog: str) -> int:
    """Print ``<prog>: <line>`` for an error the user can fix and return its exit code; re-raise
    a bug (and, with ``HUGNC_DEBUG=1``, anything) so that its traceback shows."""
    shown = user_facing(error)
    if shown is None or os.environ.get(DEBUG_ENV) == "1":
        raise error
    print(f"{prog}: {shown.line}", file=sys.stderr)
    return shown.exit_code


Main = TypeVar("Main", bound=Callable[..., Any])


def one_line_errors(prog: str) -> Callable[[Main], Main]:
    """Wrap a console script's ``main``: an error the user can fix is ``<prog>: <line>`` on
    stderr and its exit code is returned; a bug keeps its traceback (any error with
    ``HUGNC_DEBUG=1``)."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return main(*args, **kwargs)
            except (Exception, KeyboardInterrupt) as error:
                return report(error, prog)

        return wrapper  # type: ignore[return-value]

    return wrap
