"""Two real gloo ranks for a test: rank 1 in a spawned process, rank 0 in the test's own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch.multiprocessing as mp


def run_two_ranks(
    worker: Callable[[int, int, str, str], None], tmp_path: Path, timeout: float = 90
) -> None:
    """Run ``worker(rank, world_size=2, init_file, out_dir)`` on both ranks (it joins the gloo
    group through ``init_file`` and writes its results under ``out_dir``); fail if rank 1 fails.

    Only one child: importing torch in a spawned process dominates the runtime.
    """
    args = (2, str(tmp_path / "init"), str(tmp_path))
    child = mp.get_context("spawn").Process(target=worker, args=(1, *args))
    child.start()
    try:
        worker(0, *args)
    finally:
        child.join(timeout=timeout)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0, f"rank 1 exited with {child.exitcode}"
