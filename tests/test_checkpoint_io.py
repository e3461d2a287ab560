"""Atomic checkpoint writes: a full disk leaves the previous checkpoint whole and says so."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli_runs import hugnc_env

import hugnc.checkpoint
from hugnc.checkpoint import AtomicCheckpointIO, CheckpointWriteError, atomic_torch_save
from hugnc.train import train

# 3 epochs of 3 steps, each epoch writing its best and its last checkpoint.
THREE_EPOCHS = (
    "trainer=cpu",
    "trainer.max_epochs=3",
    "debug=limit",
    "data.train_subset=512",
    "data.batch_size=64",
    "logger=none",
    "test=false",
    "~callbacks.progress_bar",
    "~callbacks.neural_collapse",
)


def _fill_disk_after(monkeypatch: pytest.MonkeyPatch, good_saves: int) -> list[int]:
    """Every torch.save after the first ``good_saves`` writes some bytes, then hits ENOSPC."""
    real_save = torch.save
    calls = [0]

    def save(obj, file) -> None:
        calls[0] += 1
        if calls[0] <= good_saves:
            real_save(obj, file)
            return
        file.write(b"partial checkpoint bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hugnc.checkpoint.torch, "save", save)
    return calls


def test_full_disk_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    atomic_torch_save({"epoch": 0}, path)
    before = path.read_bytes()
    _fill_disk_after(monkeypatch, good_saves=0)
    with pytest.raises(CheckpointWriteError) as raised:
        atomic_torch_save({"epoch": 1}, path)
    message = str(raised.value)
    assert str(path) in message and "No space left on device" in message
    assert "last.ckpt" in message.split("intact")[1] and "resume=" in message
    assert raised.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left


def test_other_os_errors_are_not_relabelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(obj, file) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(hugnc.checkpoint.torch, "save", broken)
    with pytest.raises(OSError) as raised:
        atomic_torch_save({}, tmp_path / "x.ckpt")
    assert not isinstance(raised.value, CheckpointWriteError)
    assert list(tmp_path.iterdir()) == []


def test_replaces_the_file_in_one_rename(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "a" / "b.ckpt"
    io.save_checkpoint({"w": torch.arange(3)}, path)
    io.save_checkpoint({"w": torch.arange(5)}, path)
    assert torch.equal(io.load_checkpoint(path)["w"], torch.arange(5))
    assert [p.name for p in path.parent.iterdir()] == ["b.ckpt"]


@pytest.mark.real_data
def test_training_stops_clearly_when_the_disk_fills(
    compose_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_cfg(*THREE_EPOCHS)
    # Epoch 0 writes its best and its last checkpoint; epoch 1's first write fails.
    _fill_disk_after(monkeypatch, good_saves=2)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["epoch"] == 0 and last["global_step"] == 3
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "failed" and "No space left on device" in status["error"]
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


# The command line with a disk that fills after epoch 0's two checkpoints: the same process as
# `python -m hugnc ARGS`, with hugnc.checkpoint's torch.save failing like a full disk.
FULL_DISK_CLI = """
import errno, sys
import torch
import hugnc.checkpoint
from hugnc.__main__ import main

real_save, calls = torch.save, [0]

def save(obj, file):
    calls[0] += 1
    if calls[0] <= 2:
        return real_save(obj, file)
    raise OSError(errno.ENOSPC, "No space left on device")

hugnc.checkpoint.torch.save = save
sys.argv = ["hugnc", *sys.argv[1:]]
main()
"""


@pytest.mark.real_data
def test_command_line_reports_a_full_disk_in_one_line(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            FULL_DISK_CLI,
            *THREE_EPOCHS,
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        env=hugnc_env(fashion_mnist_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]  # the user's to fix (hugnc/errors.py)
    assert "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("hugnc: ")]
    assert "No space left on device" in line and str(run_dir / "checkpoints") in line
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
