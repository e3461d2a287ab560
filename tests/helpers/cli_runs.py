"""`python -m hugnc ...` in subprocesses, as users run it: the command, its environment, waiting
for a checkpoint of a running job, and a finished run's weights. Shared by the CLI-level tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

#: A 1-epoch MHE-HUG run small enough for 2 DDP processes on 2 CPU cores (512 images, batch 128,
#: no BatchNorm so that DDP and one process see the same statistics, 1000 validation images that
#: split evenly over 2 ranks), deterministic, no logger: DDP/one-process/data-path equivalence
#: tests compare the weights and validation metrics it ends with.
TINY_EQUIVALENCE_RUN = (
    "loss=mhe_hug",
    "loss.beta=1.0",
    "trainer.max_epochs=1",
    "data.train_subset=512",
    "data.batch_size=128",
    "model.batch_norm=false",
    "model.widths=[8,8,8]",
    "model.kernel_size=3",
    "logger=none",
    "scheduler=none",
    "test=false",
    "data.val_size=1000",
    "trainer.deterministic=true",
    "~callbacks.progress_bar",
    "~callbacks.neural_collapse",
)


def hugnc_command(*args: str, module: str = "hugnc") -> list[str]:
    """``python -m <module> ARGS`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def hugnc_env(data_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """This process's environment, Hydra's short error messages, data from ``data_dir``."""
    env = os.environ | {"HYDRA_FULL_ERROR": "0"}
    if data_dir is not None:
        env["HUGNC_DATA_DIR"] = str(data_dir)
    return env | extra


def run_hugnc(
    *args: str,
    cwd: Path,
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    module: str = "hugnc",
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> ARGS`` to the end; text stdout/stderr captured."""
    return subprocess.run(
        hugnc_command(*args, module=module),
        cwd=cwd,
        env=hugnc_env(data_dir, **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_hugnc(
    *args: str, cwd: Path, data_dir: Path | None = None, **popen: Any
) -> subprocess.Popen:
    """Start ``python -m hugnc ARGS`` without waiting (``popen``: stdout, start_new_session...)."""
    return subprocess.Popen(hugnc_command(*args), cwd=cwd, env=hugnc_env(data_dir), **popen)


def wait_for_file(proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    """Poll until ``path`` exists (e.g. epoch 1's last.ckpt); fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            output = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"{path} did not appear (exit {proc.poll()}): {output[-3000:]}")
        time.sleep(0.05)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``<run_dir>/checkpoints/last.ckpt``."""
    checkpoint = torch.load(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    return checkpoint["state_dict"]
