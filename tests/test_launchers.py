"""SLURM through hydra-submitit-launcher: the sbatch script we would submit, and a local sweep."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import submitit
import torch
from helpers.cli_runs import run_hugnc, start_hugnc, wait_for_file
from helpers.outputs import most_jobs_at_once
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from hugnc import run_dir
from hugnc.config import config_dir


def _launcher_params(*overrides: str) -> dict:
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    launcher.pop("_target_")
    # The interpolations point at the job config; resolve them against it as Hydra does.
    for key, value in launcher.items():
        if isinstance(value, str) and value.startswith("${trainer."):
            launcher[key] = OmegaConf.select(cfg, value[2:-1])
    return launcher


def test_slurm_launcher_asks_one_task_per_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No cluster here: submitit only checks that an `srun` exists before rendering the script.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    params = _launcher_params(
        "hydra/launcher=slurm",
        "hydra.launcher.partition=gpu",
        "trainer=ddp",
        "trainer.devices=4",
        "trainer.num_nodes=2",
    )
    assert (params["gpus_per_node"], params["tasks_per_node"], params["nodes"]) == (4, 4, 2)
    # Build the executor exactly like the launcher does and render its sbatch script.
    executor = submitit.AutoExecutor(
        folder=tmp_path, cluster="slurm", slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    params.pop("submitit_folder")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    script = executor._executor._make_submission_file_text("python -m hugnc", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --nodes=2",
        "#SBATCH --time=1440",
        "#SBATCH --mem=64GB",
    ):
        assert line in script


@pytest.mark.slow
def test_sweep_through_submitit_local_executor(tmp_path: Path, fashion_mnist_dir: Path) -> None:
    result = run_hugnc(
        "-m",
        "hydra/launcher=local",
        "trainer=debug",
        "loss=ce,mhs_hug",
        "data.batch_size=8",
        "logger=csv",
        "~callbacks.progress_bar",
        "~callbacks.neural_collapse",
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    for job in ("0", "1"):
        assert '"status": "completed"' in (sweep / job / "metrics.json").read_text()
    assert list((sweep / ".submitit").iterdir())  # submitit ran the jobs in their own processes


@pytest.mark.slow
def test_a_job_requeued_on_the_timeout_signal_continues_from_its_last_checkpoint(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    """SLURM's timeout/preemption signal (USR2) makes submitit requeue the job. The requeued job
    continues from its directory's last.ckpt (hydra-submitit-launcher alone would start it from
    scratch and overwrite its checkpoints). submitit's local executor requeues as SLURM does."""
    sweep = tmp_path / "sweep"
    epochs, steps_per_epoch = 15, 8
    proc = start_hugnc(
        "-m",
        "hydra/launcher=local",
        f"hydra.sweep.dir={sweep}",
        f"trainer.max_epochs={epochs}",
        "data.train_subset=512",
        "data.batch_size=64",
        "+trainer.limit_val_batches=1",
        "logger=none",
        "~callbacks.progress_bar",
        "~callbacks.neural_collapse",
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    job = sweep / "0"
    last = run_dir.last_checkpoint(job)
    try:
        wait_for_file(proc, last)
        # The job id of a local submitit job is its controller's pid; the job's task is its child.
        (job_id,) = [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
        (task,) = Path(f"/proc/{job_id}/task/{job_id}/children").read_text().split()
        os.kill(int(task), signal.SIGUSR2)
        output, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, output[-3000:]
    log = (job / "__main__.log").read_text()
    assert "Requeued job" in log  # submitit's requeue, not a fresh start of the sweep
    assert f"Restoring states from the checkpoint path at {last}" in log
    assert f"ckpt_path={last}" in run_dir.overrides_file(job).read_text()
    assert '"status": "completed"' in run_dir.metrics_file(job).read_text()
    final = torch.load(last, map_location="cpu", weights_only=False)
    assert (final["epoch"], final["global_step"]) == (epochs - 1, epochs * steps_per_epoch)


def test_slurm_with_ddp_auto_devices_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``trainer=ddp`` has devices=auto, which SLURM cannot allocate: refused before anything
    is submitted or written, with the fix (the composed sbatch of a numeric count is above)."""
    from hugnc.preflight import ConfigCheckError, check_command_line

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigCheckError) as info:
        check_command_line(["-m", "hydra/launcher=slurm", "trainer=ddp", "seed=0,1"])
    message = str(info.value)
    assert "trainer.devices = 'auto'" in message and "trainer.devices=4" in message
    assert list(tmp_path.iterdir()) == []
    check_command_line(["-m", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=2"])


def _run_submitit_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, global_rank: int) -> Path:
    """Run task ``global_rank`` of a 2-task SLURM job in-process, as srun would on a node."""
    import logging

    from hydra._internal.callbacks import Callbacks
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.utils import create_config_search_path
    from hydra.core.singleton import Singleton
    from hydra.types import HydraContext

    from hydra_plugins.hugnc.launchers import SlurmLauncher

    sweep_dir = tmp_path / "sweep"
    overrides = [
        "hydra/launcher=slurm",
        f"hydra.sweep.dir={sweep_dir}",
        "trainer=ddp",
        "trainer.devices=2",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        master = compose("train", overrides=overrides, return_hydra_config=True)
        assert master.hydra.launcher._target_ == "hydra_plugins.hugnc.launchers.SlurmLauncher"
        launcher = SlurmLauncher(submitit_folder=str(sweep_dir / ".submitit"))
        context = HydraContext(
            config_loader=ConfigLoaderImpl(create_config_search_path(str(config_dir()))),
            callbacks=Callbacks(),
        )
        ran: list[int] = []
        launcher.setup(
            hydra_context=context, task_function=lambda cfg: ran.append(cfg.seed), config=master
        )
        slurm_env = {
            "SUBMITIT_EXECUTOR": "slurm",
            "SLURM_JOB_ID": "42",
            "SLURM_NTASKS": "2",
            "SLURM_PROCID": str(global_rank),
            "SLURM_LOCALID": str(global_rank),
            "SLURM_NODEID": "0",
            "SLURM_JOB_NUM_NODES": "1",
        }
        for key, value in slurm_env.items():
            monkeypatch.setenv(key, value)
        root_handlers = logging.root.handlers[:]
        try:
            launcher(["seed=3"], "hydra.sweep.dir", 0, "job0", Singleton.get_state())
        finally:
            logging.root.handlers[:] = root_handlers
    GlobalHydra.instance().clear()
    assert ran == [3]
    return sweep_dir / "0"


def test_only_the_first_slurm_task_writes_hydra_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """srun runs the job once per rank: rank 1 must leave no `.hydra/` and no job log behind."""
    job_dir = _run_submitit_task(tmp_path, monkeypatch, global_rank=1)
    assert not (job_dir / ".hydra").exists()
    assert list(job_dir.glob("*.log")) == []
    job_dir = _run_submitit_task(tmp_path, monkeypatch, global_rank=0)
    assert (job_dir / ".hydra" / "config.yaml").is_file()
    assert len(list(job_dir.glob("*.log"))) == 1


# --- hydra/launcher=ray ---------------------------------------------------------------------------
def _ray_remote(*overrides: str) -> dict:
    """The ``ray.remote`` options of a job: its config composed, the launcher's interpolations
    resolved against it (as the Ray launcher does for each job)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose(
            "train", overrides=["hydra/launcher=ray", *overrides], return_hydra_config=True
        )
    GlobalHydra.instance().clear()
    remote = OmegaConf.to_container(cfg.hydra.launcher.ray.remote, resolve=True)
    assert isinstance(remote, dict)
    return remote


def test_ray_jobs_ask_for_the_gpus_of_their_trainer() -> None:
    assert _ray_remote("trainer=gpu") == {"num_gpus": 1, "num_cpus": 1}
    assert _ray_remote("trainer=ddp", "trainer.devices=4")["num_gpus"] == 4
    assert _ray_remote("trainer=ddp", "trainer.devices=[0,2]")["num_gpus"] == 2
    assert _ray_remote("trainer=cpu")["num_gpus"] == 0
    assert _ray_remote("trainer=ddp_cpu")["num_gpus"] == 0
    assert _ray_remote("trainer=cpu", "hydra.launcher.ray.remote.num_cpus=4")["num_cpus"] == 4


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer=ddp"], "trainer.devices = 'auto': hydra/launcher=ray needs the number of GPUs"),
        (["trainer=default"], "trainer.accelerator = 'auto': hydra/launcher=ray asks Ray"),
        (["trainer=gpu", "trainer.num_nodes=2"], "trainer.num_nodes = 2: hydra/launcher=ray runs"),
    ],
)
def test_ray_launcher_refuses_what_ray_cannot_allocate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], expected: str
) -> None:
    from hugnc.preflight import ConfigCheckError, check_command_line

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigCheckError) as info:
        check_command_line(["-m", "hydra/launcher=ray", *overrides, "seed=0,1"])
    assert expected in str(info.value)
    assert list(tmp_path.iterdir()) == []
    check_command_line(["-m", "hydra/launcher=ray", "trainer=ddp", "trainer.devices=2"])


def test_ddp_ranks_of_a_ray_job_start_from_the_drivers_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ray worker's argv and ``__main__`` are Ray's: the driver's command travels in the
    environment, and a job's rank command is built from it."""
    from hydra.core.hydra_config import HydraConfig

    from hugnc.launching import ENTRY_COMMAND_ENV, export_entry_command, hydra_job_rank_command

    # The driver: `python /x/hugnc/__main__.py -cn train -m seed=0,1` (a script, no module spec).
    monkeypatch.setattr("__main__.__spec__", None)
    monkeypatch.setattr("sys.argv", ["/x/hugnc/__main__.py", "-cn", "train", "-m", "seed=0,1"])
    # setenv first: monkeypatch then restores the variable's absence after export_entry_command.
    monkeypatch.setenv(ENTRY_COMMAND_ENV, "")
    monkeypatch.delenv(ENTRY_COMMAND_ENV)
    export_entry_command()
    monkeypatch.setattr("sys.argv", ["default_worker.py", "--node-ip-address=10.0.0.1"])
    hydra_cfg = OmegaConf.create(
        {
            "overrides": {"task": ["seed=1"]},
            "runtime": {"output_dir": "/sweep/1", "cwd": "/work"},
            "job": {"name": "__main__"},
        }
    )
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: hydra_cfg))
    command, cwd = hydra_job_rank_command(1)
    assert command[1:] == [
        "/x/hugnc/__main__.py",
        "-cn",
        "train",
        "seed=1",
        "hydra.run.dir=/sweep/1",
        "hydra.job.name=__main___rank1",
        "hydra.output_subdir=null",
    ]
    assert cwd == "/work"


@pytest.mark.slow
def test_ray_sweep_runs_two_jobs_at_a_time_and_survives_a_failing_one(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    from hugnc.tools.report import collect_local, main

    result = run_hugnc(
        "-m",
        "hydra/launcher=ray",
        "hydra.launcher.ray.init.num_cpus=2",
        "hydra.launcher.ray.remote.num_cpus=1",
        "trainer=cpu",
        "debug=limit",
        "trainer.max_epochs=1",
        "data.batch_size=32",
        "~callbacks.progress_bar",
        "~callbacks.neural_collapse",
        "loss.alpha=0.1,0.15,-1,0.2",
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
        # alpha=-1 is refused by the config check; without it, a job that fails inside the sweep.
        env={"HUGNC_SKIP_CONFIG_CHECK": "1", "OMP_NUM_THREADS": "2"},
    )
    # Every job ran; then Hydra's basic sweeper re-raises the failure (exit 1).
    assert result.returncode == 1, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = collect_local(sweep)
    assert [j.status for j in jobs] == ["completed", "completed", "failed", "completed"]
    assert "alpha must be >= 0" in jobs[2].error
    # At most 2 jobs (2 cores, 1 each) at any moment, and 2 did run together.
    assert most_jobs_at_once([sweep / j.name for j in jobs]) == 2
    for job in jobs:  # torch threads followed the job's 1 core, not the driver's 2
        assert (
            job.status == "failed"
            or "torch threads: 1" in (sweep / job.name / "__main__.log").read_text()
        )
    completed_runs = [
        next((sweep / j.name / "wandb").glob("offline-run-*"))
        for j in jobs
        if j.status == "completed"
    ]
    for run in completed_runs:  # one W&B run per job, in the sweep's group
        assert f'"group":"{sweep.name}"'.encode() in next(run.glob("*.wandb")).read_bytes()
    assert main([str(sweep)]) == 0
    assert len((sweep / "report.csv").read_text().splitlines()) == 1 + 4


@pytest.mark.parametrize(
    ("overrides", "gpus", "expected"),
    [
        (["trainer=gpu"], 0, "trainer.accelerator = 'gpu': this machine has no GPU"),
        (["trainer=gpu"], 1, None),
        (["trainer=ddp", "trainer.devices=4"], 2, "trainer.devices = 4: this machine has 2 GPU"),
        (["trainer=ddp", "trainer.devices=[0,1]"], 2, None),
        (["trainer=ddp"], 2, None),  # auto: whatever there is
        (["trainer=cpu"], 0, None),
        # The jobs run on the cluster's nodes: the submitting machine needs no GPU.
        (["hydra/launcher=slurm", "trainer=gpu"], 0, None),
        (["hydra/launcher=local", "trainer=gpu"], 0, "this machine has no GPU"),
    ],
)
def test_a_gpu_the_jobs_run_here_need_must_be_here(
    compose_cfg,
    monkeypatch: pytest.MonkeyPatch,
    overrides: list[str],
    gpus: int,
    expected: str | None,
) -> None:
    from hugnc.launching import device_problem

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    problem = device_problem(compose_cfg(*overrides))
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem and "\n" not in problem


@pytest.mark.parametrize(
    ("device", "gpus", "expected"),
    [
        ("cuda", 0, "ufm.device = 'cuda': this machine has 0 CUDA GPU(s); use ufm.device=cpu"),
        ("cuda:1", 1, "ufm.device = 'cuda:1': this machine has 1 CUDA GPU(s)"),
        ("cuda:1", 2, None),
        ("cpu", 0, None),
        ("tpu9", 0, "ufm.device = 'tpu9': not a torch device"),
    ],
)
def test_the_ufm_device_must_be_here(
    compose_cfg, monkeypatch: pytest.MonkeyPatch, device: str, gpus: int, expected: str | None
) -> None:
    from hugnc.launching import device_problem

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    problem = device_problem(compose_cfg(f"ufm.device={device}", config_name="ufm"))
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and expected in problem
