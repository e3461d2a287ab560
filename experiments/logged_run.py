"""Run a command to its end with its output appended to a log file (the pipelines' jobs)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path


def run_logged(command: Sequence[str], log_path: Path, env: dict[str, str]) -> int:
    """Append ``$ command`` and the command's stdout and stderr to ``log_path``; return its exit
    status (negative: killed by that signal)."""
    with Path(log_path).open("a") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        return subprocess.run(
            list(command), stdout=log, stderr=subprocess.STDOUT, env=env, check=False
        ).returncode
