"""The errors a user fixes with their data files: each message is one line saying what to do.

:class:`DataError` is the base an entry point catches to print ``hugnc: <message>`` instead of a
traceback; :class:`DatasetUnavailableError` (files missing, cannot be fetched) and
:class:`DataCorruptError` (a file is there but damaged) are its two kinds.
"""

from __future__ import annotations

import os
import re

# torch's DataLoader re-raises a worker's exception in the main process as
# ``type(error)("Caught <Type> in DataLoader worker process <n>.\nOriginal Traceback ...\n"
# "<module>.<Type>: <message>\n")`` (torch/_utils.py, ExceptionWrapper.reraise).
_WORKER_WRAPPED = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_LAST_LINE = re.compile(r"^[\w.]+: (?P<message>.*)$")


def _unwrap_worker_message(message: str) -> str:
    """``message`` as raised, without the traceback a DataLoader worker wraps it in."""
    if not _WORKER_WRAPPED.match(message):
        return message
    last = message.rstrip().rsplit("\n", 1)[-1]
    match = _LAST_LINE.match(last)
    return match["message"] if match else message


class DataError(RuntimeError):
    """A problem with a dataset's files that the user fixes; ``str()`` is the message for them.

    Also when raised in a DataLoader worker (images decoded lazily): the main process gets the
    same one-line message, not the worker's traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_unwrap_worker_message(message))


class DatasetUnavailableError(DataError):
    """A dataset's files are missing and could not be obtained; the message says how to get them."""


class DataCorruptError(DataError):
    """A dataset file exists but cannot be read as what it should be (truncated, wrong size, wrong
    magic number, not a pickle, not an image...).

    Build it with :meth:`for_file`, whose message names the file, says what is wrong with it and
    how to fetch it again. The constructor takes the finished message only, so that torch can
    re-create the error from a DataLoader worker.
    """

    @classmethod
    def for_file(cls, path: str | os.PathLike, problem: str, refetch: str) -> DataCorruptError:
        """``<path> is damaged (<problem>); delete it and fetch it again (<refetch>)``.

        Args:
            path: the damaged file.
            problem: what is wrong, e.g. ``"truncated: 1000 bytes, the header says 47040016"``.
            refetch: how the file comes back once deleted, e.g. ``"data.download=true"``.
        """
        # One line whatever the parts hold (an OSError's text may span lines).
        problem, refetch = (" ".join(part.split()) for part in (problem, refetch))
        return cls(f"{path} is damaged ({problem}); delete it and fetch it again ({refetch})")
