"""Resume after a kill: `python -m hugnc resume=RUN_DIR` continues the same run exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli_runs import final_weights, run_hugnc, start_hugnc, wait_for_file

from hugnc.run_dir import ResumeError, requeue_overrides, resume_arguments, rewrite_argv

COMMON = [
    "loss=mhe_hug",
    "loss.beta=1.0",
    "trainer=cpu",
    "trainer.max_epochs=3",
    "data.train_subset=4096",
    "data.batch_size=128",
    "model.widths=[8,16,16]",
    "model.kernel_size=3",
    "+trainer.limit_val_batches=2",
    "test=false",
    "trainer.deterministic=true",
    "~callbacks.progress_bar",
    "~callbacks.neural_collapse",
    "scheduler=onecycle",
]


@pytest.mark.slow
@pytest.mark.real_data
def test_killed_run_resumes_to_the_uninterrupted_result(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    reference = tmp_path / "reference"
    done = run_hugnc(
        *COMMON, f"hydra.run.dir={reference}", cwd=tmp_path, data_dir=fashion_mnist_dir
    )
    assert done.returncode == 0, done.stderr[-3000:]

    killed = tmp_path / "killed"
    # Its own session, so that the kill takes the whole job (W&B's service process too), as a
    # scheduler's kill does.
    proc = start_hugnc(
        *COMMON,
        f"hydra.run.dir={killed}",
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_file(proc, killed / "checkpoints" / "last.ckpt")  # epoch 1 finished
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"
    epoch_at_kill = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=False)["epoch"]
    assert epoch_at_kill < 2

    resumed = run_hugnc(f"resume={killed}", cwd=tmp_path, data_dir=fashion_mnist_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"run directory: {killed}" in resumed.stdout
    assert '"status": "completed"' in (killed / "metrics.json").read_text()
    final, expected = final_weights(killed), final_weights(reference)
    for name, tensor in expected.items():
        torch.testing.assert_close(final[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # Offline W&B: the resumed part is a second offline run in the same run directory.
    assert len(list((killed / "wandb").glob("offline-run-*"))) == 2


def test_resume_arguments_replay_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "- loss=mgd_hug\n- trainer.max_epochs=3\n- ckpt_path=old\n"
    )
    (run_dir / ".hydra" / "config.yaml").write_text("logger:\n  wandb:\n    project: hugnc\n")
    (run_dir / "wandb" / "offline-run-20251231_000000-off000").mkdir(parents=True)
    assert "+logger.wandb.id=off000" not in resume_arguments(run_dir)
    (run_dir / "wandb" / "run-20260101_000000-abc123").mkdir(parents=True)
    arguments = resume_arguments(run_dir, ["trainer.max_epochs=5"])
    assert arguments == [
        "loss=mgd_hug",
        "trainer.max_epochs=5",
        f"hydra.run.dir={run_dir}",
        f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
        "+logger.wandb.id=abc123",
        "+logger.wandb.resume=allow",
    ]
    assert rewrite_argv(["loss=ce"]) == ["loss=ce"]


def test_a_requeued_sweep_job_continues_from_its_last_checkpoint(tmp_path: Path) -> None:
    job = tmp_path / "sweep" / "3"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("logger:\n  wandb:\n    project: hugnc\n")
    overrides = ["loss=mgd_hug", "loss.alpha=0.1"]
    assert requeue_overrides(job, overrides) == overrides  # killed in epoch 1: from scratch
    (job / "checkpoints").mkdir()
    (job / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (job / "wandb" / "run-20260101_000000-abc123").mkdir(parents=True)
    continued = [
        *overrides,
        f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}",
        "+logger.wandb.id=abc123",
        "+logger.wandb.resume=allow",
    ]
    assert requeue_overrides(job, overrides) == continued
    assert requeue_overrides(job, continued) == continued  # requeued twice: not added twice


def test_a_finished_run_is_continued_only_with_a_larger_budget(tmp_path: Path) -> None:
    """Resuming a completed run as it was would train nothing, test again and replace the
    run's final metrics (train/val gone): refused, the files untouched; a larger budget
    continues it."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (run_dir / ".hydra" / "overrides.yaml").write_text("- trainer.max_epochs=3\n")
    (run_dir / ".hydra" / "config.yaml").write_text("trainer:\n  max_epochs: 3\n")
    metrics = '{"status": "completed", "val/acc": 0.8, "test/acc": 0.79}'
    (run_dir / "metrics.json").write_text(metrics)
    with pytest.raises(ResumeError, match="this run finished") as info:
        rewrite_argv([f"resume={run_dir}"])
    assert "trainer.max_epochs=N (N above its 3)" in str(info.value)
    assert (run_dir / "metrics.json").read_text() == metrics
    for budget in ("trainer.max_epochs=5", "+trainer.max_steps=900"):
        assert budget in resume_arguments(run_dir, [budget])
    (run_dir / "metrics.json").write_text('{"status": "preempted"}')
    assert resume_arguments(run_dir)[-1] == f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"


@pytest.mark.parametrize(
    ("scheduler", "refused"),
    [
        ("_target_: torch.optim.lr_scheduler.OneCycleLR\n    max_lr: 0.1", True),
        (
            "_target_: torch.optim.lr_scheduler.CosineAnnealingLR\n"
            "    T_max: ${trainer.max_epochs}",
            True,
        ),
        ("_target_: torch.optim.lr_scheduler.MultiStepLR\n    milestones: [60]", False),
    ],
    ids=["onecycle", "cosine", "multistep"],
)
def test_a_schedule_laid_out_for_the_budget_is_not_stretched(
    tmp_path: Path, scheduler: str, refused: bool
) -> None:
    """OneCycleLR's total_steps (and cosine's T_max) are restored from the checkpoint: a larger
    budget would crash at the old last step (OneCycle) or climb the cosine again."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (tmp_path / ".hydra" / "overrides.yaml").write_text("[]\n")
    (tmp_path / ".hydra" / "config.yaml").write_text(
        f"trainer:\n  max_epochs: 3\nscheduler:\n  factory:\n    {scheduler}\n"
    )
    assert resume_arguments(tmp_path)  # the same budget continues
    if refused:
        with pytest.raises(ResumeError, match="cannot be stretched"):
            resume_arguments(tmp_path, ["trainer.max_epochs=6"])
    else:
        assert "trainer.max_epochs=6" in resume_arguments(tmp_path, ["trainer.max_epochs=6"])


def test_resume_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="not a hugnc run directory"):
        resume_arguments(tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("[]\n")
    with pytest.raises(ResumeError, match=r"no checkpoints/last\.ckpt"):
        resume_arguments(tmp_path)
    with pytest.raises(ResumeError, match="no --multirun"):
        rewrite_argv(["-m", f"resume={tmp_path}"])
    result = subprocess.run(
        [sys.executable, "-m", "hugnc", f"resume={tmp_path / 'nope'}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "not a hugnc run directory" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "logs").exists()
