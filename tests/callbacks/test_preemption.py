"""SIGTERM / SIGUSR1: a checkpoint at the next batch end, a clean stop, and a resumable run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers.cli_runs import run_hugnc, start_hugnc, wait_for_file
from lightning import Callback, Trainer
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from hugnc.callbacks import PreemptionCheckpoint
from hugnc.losses import HUGLoss
from hugnc.models import ProxyHead
from hugnc.module import HUGClassifier

STEPS_PER_EPOCH = 8


class SendSignal(Callback):
    """Send ``signum`` to this process after batch ``batch_idx`` of epoch ``epoch``."""

    def __init__(self, signum: int, epoch: int, batch_idx: int) -> None:
        self.signum, self.epoch, self.batch_idx = signum, epoch, batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch_idx:
            os.kill(os.getpid(), self.signum)


def _module() -> HUGClassifier:
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    backbone.feature_dim = 3
    return HUGClassifier(
        backbone=backbone,
        head=ProxyHead(3, 4),
        criterion=HUGLoss("mhs", alpha=0.1, beta=1.0),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        num_classes=4,
    )


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(8 * STEPS_PER_EPOCH, 12, generator=generator), torch.arange(64) % 4
    )
    return DataLoader(data, batch_size=8)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_at_the_next_batch_and_stops(
    tmp_path: Path, signum: signal.Signals
) -> None:
    previous_handler = signal.getsignal(signum)
    preemption = PreemptionCheckpoint(str(tmp_path / "checkpoints"), signals=("SIGTERM", "SIGUSR1"))
    trainer = Trainer(
        max_epochs=3,
        callbacks=[SendSignal(signum, epoch=1, batch_idx=2), preemption],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    with pytest.raises(SIGTERMException):
        trainer.fit(_module(), train_dataloaders=_loader())
    assert preemption.saved is not None and preemption.saved.signum == signum
    assert preemption.saved.code == 128 + signum
    checkpoint = torch.load(preemption.saved.checkpoint, weights_only=False)
    # Saved right after batch 2 of epoch 1, not at the end of the epoch.
    assert checkpoint["global_step"] == STEPS_PER_EPOCH + 3
    assert checkpoint["epoch"] == 1
    # The process's own handlers are back once the fit is over.
    assert signal.getsignal(signum) == previous_handler


def test_the_saver_is_the_preemption_callback_whatever_comes_before(tmp_path: Path) -> None:
    """Other callbacks have a ``saved`` attribute too (the NC monitor's pictures): the run's
    preempted status must come from the preemption callback, not from the first one found."""
    from hugnc.callbacks import NeuralCollapseMonitor, PreemptedError
    from hugnc.train import preemption_saver

    pictures = NeuralCollapseMonitor(output_dir=str(tmp_path))
    pictures.saved["feature_geometry_train"] = tmp_path / "feature_geometry_train.png"
    preemption = PreemptionCheckpoint(dirpath=str(tmp_path), filename="last")
    assert preemption_saver([pictures, preemption]) is None
    preemption.saved = PreemptedError(15, str(tmp_path / "last.ckpt"))
    assert preemption_saver([pictures, preemption]) is preemption


def test_no_signal_no_checkpoint(tmp_path: Path) -> None:
    preemption = PreemptionCheckpoint(str(tmp_path / "checkpoints"))
    trainer = Trainer(
        max_epochs=1,
        callbacks=[preemption],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(_module(), train_dataloaders=_loader())
    assert preemption.saved is None and not (tmp_path / "checkpoints").exists()


def test_unknown_signal_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SIGTREM"):
        PreemptionCheckpoint(str(tmp_path), signals=("SIGTREM",))


#: A 2-epoch run of a tiny LeNet++ (32 images per step) that the signal tests interrupt.
SMALL_RUN = [
    "loss=mhe_hug",
    "loss.beta=1.0",
    "trainer.max_epochs=2",
    "data.batch_size=32",
    "model=lenet_pp",
    "model.widths=[8,16,16]",
    "model.kernel_size=3",
    "+trainer.limit_val_batches=2",
    "test=false",
    "logger=csv",
    "~callbacks.progress_bar",
    "~callbacks.neural_collapse",
]


def _run_into_epoch_2(
    overrides: list[str], run_dir: Path, data_dir: Path
) -> tuple[subprocess.Popen, Path]:
    """Start ``python -m hugnc`` into ``run_dir`` and return once epoch 1's last.ckpt exists."""
    proc = start_hugnc(
        *overrides,
        f"hydra.run.dir={run_dir}",
        cwd=run_dir.parent,
        data_dir=data_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    wait_for_file(proc, last, timeout=600)
    return proc, last


@pytest.mark.slow
@pytest.mark.real_data
def test_sigterm_mid_epoch_then_resume_completes(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    common = [*SMALL_RUN, "trainer=cpu", "data.train_subset=12800"]
    run_dir = tmp_path / "run"
    proc, last = _run_into_epoch_2(common, run_dir, fashion_mnist_dir)  # epoch 1: 400 steps
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    # Stopped at a batch boundary, long before epoch 2 (~400 steps) could have finished.
    assert time.monotonic() - sent < 30, output
    assert proc.returncode == 128 + signal.SIGTERM, output
    assert f"resume={run_dir}" in output
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "preempted" and status["checkpoint"] == str(last)
    step = torch.load(last, weights_only=False)["global_step"]
    assert 400 < step < 800, step  # mid-epoch 2

    resumed = run_hugnc(f"resume={run_dir}", cwd=tmp_path, data_dir=fashion_mnist_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert torch.load(last, weights_only=False)["global_step"] == 800


DDP_RUN = [*SMALL_RUN, "trainer=ddp_cpu", "data.train_subset=6400", "~callbacks.training_dynamics"]


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.parametrize("both", [False, True], ids=["rank0_only", "both_ranks_apart"])
def test_ddp_sigterm_stops_every_rank_at_one_step_and_resumes(
    tmp_path: Path, fashion_mnist_dir: Path, both: bool
) -> None:
    """2 gloo ranks: SIGTERM to rank 0 only, or to rank 1 then rank 0 0.3 s later (as srun
    signals its tasks): both exit 143 within 60 s, last.ckpt loads, resume finishes."""
    import psutil

    run_dir = tmp_path / "run"
    proc, last = _run_into_epoch_2(DDP_RUN, run_dir, fashion_mnist_dir)  # epoch 1: 200 steps
    time.sleep(0.5)
    (rank1,) = [
        child
        for child in psutil.Process(proc.pid).children(recursive=True)
        if "hugnc" in " ".join(child.cmdline())
    ]
    sent = time.monotonic()
    if both:
        rank1.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    rank1.wait(timeout=60)  # gone too (its exit status goes to rank 0, its parent)
    assert time.monotonic() - sent < 60, output
    assert proc.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert output.count("SIGTERM received at epoch 1") == 1, output[-3000:]
    step = torch.load(last, weights_only=False)["global_step"]
    assert 200 < step < 400, step  # saved mid-epoch 2, once, at the step all ranks agreed on
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "preempted"

    resumed = run_hugnc(f"resume={run_dir}", cwd=tmp_path, data_dir=fashion_mnist_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert torch.load(last, weights_only=False)["global_step"] == 400
