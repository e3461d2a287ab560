"""DDP under Hydra: ranks join their own job (no sweep relaunch), and DDP == one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.cli_runs import TINY_EQUIVALENCE_RUN, final_weights, run_hugnc
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from hugnc.distributed import gather_batch
from hugnc.launching import hydra_job_rank_command, isolated_ddp_job


def test_rank_command_is_this_job_not_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sys,
        "argv",
        ["hugnc", "-m", "--config-name", "train", "loss.alpha=0.1,0.2", "trainer=ddp_cpu"],
    )
    hydra_cfg = OmegaConf.create(
        {
            "hydra": {
                "overrides": {"task": ["loss.alpha=0.2", "trainer=ddp_cpu"]},
                "runtime": {"output_dir": "/runs/sweep/1", "cwd": "/work"},
                "job": {"name": "__main__"},
            }
        }
    )
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra_cfg.hydra))
    command, cwd = hydra_job_rank_command(local_rank=1)
    assert command[0] == sys.executable
    args = command[command.index("--config-name") :]
    assert args == [
        "--config-name",
        "train",
        "loss.alpha=0.2",
        "trainer=ddp_cpu",
        "hydra.run.dir=/runs/sweep/1",
        "hydra.job.name=__main___rank1",
        "hydra.output_subdir=null",
    ]
    assert "-m" not in args and "loss.alpha=0.1,0.2" not in command and cwd == "/work"


def test_gather_batch_is_identity_without_process_group() -> None:
    tensor = torch.randn(4, 2, requires_grad=True)
    assert gather_batch(tensor) is tensor


def test_isolated_job_restores_launch_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("MASTER_PORT", "1234")
    with isolated_ddp_job():
        os.environ["LOCAL_RANK"] = "0"
        os.environ["MASTER_PORT"] = "5555"
    assert "LOCAL_RANK" not in os.environ and os.environ["MASTER_PORT"] == "1234"


#: hydra/launcher=ray: each job a Ray task holding both cores for its two ranks.
RAY_DDP_JOBS = (
    "hydra/launcher=ray",
    "hydra.launcher.ray.init.num_cpus=2",
    "hydra.launcher.ray.remote.num_cpus=2",
)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [(), RAY_DDP_JOBS], ids=["basic", "ray"])
def test_multirun_of_ddp_jobs_each_in_its_own_directory(
    tmp_path: Path, fashion_mnist_dir: Path, launcher: tuple[str, ...]
) -> None:
    """Each job's ranks start from the job's own overrides (under Ray, from the command that
    started the sweep, not the Ray worker's), into the job's directory."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hugnc",
            "-m",
            *launcher,
            "trainer=ddp_cpu",
            "loss.alpha=0.1,0.2",
            "data.train_subset=256",
            "data.batch_size=64",
            "trainer.max_epochs=1",
            "+trainer.limit_val_batches=1",
            "+trainer.limit_test_batches=1",
            "~callbacks.progress_bar",
            "~callbacks.neural_collapse",
            "model.widths=[8,8,8]",
            "model.kernel_size=3",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"HUGNC_DATA_DIR": str(fashion_mnist_dir), "WANDB_MODE": "offline"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, "a DDP child relaunched the sweep"
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for job in jobs:
        assert '"status": "completed"' in (job / "metrics.json").read_text()
        assert (job / "__main___rank1.log").is_file()  # rank 1 ran inside this job's directory
        assert len(list((job / "wandb").glob("offline-run-*"))) == 1
        assert list((job / ".hydra").iterdir())
    assert not (tmp_path / "logs" / "train" / "runs").exists()


@pytest.mark.slow
def test_one_ddp_epoch_equals_one_process_on_the_global_batch(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    for trainer in ("cpu", "ddp_cpu"):
        result = run_hugnc(
            f"trainer={trainer}",
            *TINY_EQUIVALENCE_RUN,
            f"hydra.run.dir={tmp_path / trainer}",
            cwd=tmp_path,
            data_dir=fashion_mnist_dir,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = final_weights(tmp_path / "cpu"), final_weights(tmp_path / "ddp_cpu")
    assert single.keys() == ddp.keys()
    for name, tensor in single.items():
        torch.testing.assert_close(ddp[name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    # Epoch metrics are means over both ranks' validation shards: the one-process numbers.
    metrics = {
        trainer: json.loads((tmp_path / trainer / "metrics.json").read_text())
        for trainer in ("cpu", "ddp_cpu")
    }
    for name in (
        "val/acc",
        "val/loss",
        "val/loss_intra",
        "val/loss_inter",
        "train/loss",
        "train/acc",
    ):
        assert metrics["ddp_cpu"][name] == pytest.approx(metrics["cpu"][name], rel=1e-4), name
