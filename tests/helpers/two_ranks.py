"""Two real gloo ranks for a test: rank 1 in a spawned process, rank 0 in the test's own."""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

#: What each rank runs once the group is up: ``body(rank, world_size, out_dir)``, saving its
#: results under ``out_dir`` (a module-level function of the test: spawn imports it by name).
RankBody = Callable[[int, int, str], None]


def _in_process_group(
    body: RankBody, rank: int, world_size: int, init_file: str, out_dir: str
) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        body(rank, world_size, out_dir)
    finally:
        dist.destroy_process_group()


def run_two_ranks(body: RankBody, tmp_path: Path, timeout: float = 90) -> None:
    """Run ``body`` on 2 gloo ranks joined through a file in ``tmp_path``, which also receives
    their results; fail if rank 1 fails. Only one child: a spawned process's imports dominate."""
    worker = functools.partial(_in_process_group, body)
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
