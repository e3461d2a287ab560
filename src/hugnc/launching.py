"""Starting processes for a Hydra job: DDP ranks on one machine, and SLURM tasks.

Lightning starts DDP ranks by re-running the command line and srun starts one task per rank; in
both cases every process composes the same Hydra job, and only the first may write the job's
``.hydra/`` directory and log file. The SLURM side is a Hydra launcher plugin (Hydra loads
launchers only from the ``hydra_plugins`` package): :mod:`hydra_plugins.hugnc.launchers`; the
Bayesian search is a sweeper plugin beside it (:mod:`hydra_plugins.hugnc.optuna_sweeper`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from omegaconf import OmegaConf

from hugnc.config import GPU_ACCELERATORS, gpus_per_job
from hugnc.schema import Problem

if TYPE_CHECKING:
    from omegaconf import DictConfig

Result = TypeVar("Result")

_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


#: The command that started the Hydra app (JSON list), for processes that did not start from it:
#: a Ray worker runs the job's function, its own ``sys.argv`` and ``__main__`` are Ray's.
ENTRY_COMMAND_ENV = "HUGNC_ENTRY_COMMAND"


def entry_command() -> list[str]:
    """``python -m <module>`` (or the script) and the config flags that started this Hydra app,
    without its overrides: what a DDP rank runs before the job's own overrides."""
    if ENTRY_COMMAND_ENV in os.environ:
        command = json.loads(os.environ[ENTRY_COMMAND_ENV])
        return [str(part) for part in command]
    import __main__

    if __main__.__spec__ is None:
        command = [sys.executable, sys.argv[0]]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    argv = sys.argv[1:]
    for index, arg in enumerate(argv):
        if arg in _CONFIG_FLAGS and index + 1 < len(argv):
            command += [arg, argv[index + 1]]
        elif arg.split("=", 1)[0] in _CONFIG_FLAGS:
            command.append(arg)
    return command


def export_entry_command() -> None:
    """Export :func:`entry_command` for the jobs a launcher runs in other processes (Ray)."""
    os.environ[ENTRY_COMMAND_ENV] = json.dumps(entry_command())


def hydra_job_rank_command(local_rank: int) -> tuple[list[str], str]:
    """Command and cwd that start DDP rank ``local_rank`` of the *current Hydra job*.

    Lightning's own version re-runs ``sys.argv`` with ``hydra.run.dir`` set to the run-mode
    directory: inside a multirun the child relaunches the whole sweep (``-m`` and the comma lists
    are still in argv) and writes to the wrong directory (lightning-hydra-template #90, #194,
    #393). Here the child gets this job's own overrides (one value each), run mode, and this job's
    output directory, and does not write a second ``.hydra/``.
    """
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    command = entry_command() + list(hydra_cfg.overrides.task)
    command += [
        f"hydra.run.dir={hydra_cfg.runtime.output_dir}",
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, hydra_cfg.runtime.cwd


def install_hydra_ddp_launcher() -> None:
    """Make Lightning's subprocess DDP launcher start ranks with :func:`hydra_job_rank_command`."""
    from lightning.fabric.strategies.launchers import subprocess_script as fabric_launcher
    from lightning.pytorch.strategies.launchers import subprocess_script as trainer_launcher

    # The Trainer's launcher imported the function by name, so both modules are updated.
    fabric_launcher._hydra_subprocess_cmd = hydra_job_rank_command
    trainer_launcher._hydra_subprocess_cmd = hydra_job_rank_command


# Variables Lightning's launcher sets in the launching process; left behind, they make the next
# job of a multirun believe its ranks were started externally and reuse a dead process group.
_LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextmanager
def isolated_ddp_job() -> Iterator[None]:
    """Run one job so that the next job in this process starts DDP from scratch.

    On exit the process group is destroyed and the launch variables are restored, so every job of
    a Hydra multirun launches its own ranks (on a fresh port) into its own directory.
    """
    import torch.distributed as dist

    saved = {key: os.environ.get(key) for key in _LAUNCH_ENV}
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_job(task: Callable[[DictConfig], Result], cfg: DictConfig) -> Result:
    """``task(cfg)`` as one job of an entry point: DDP ranks through hugnc's launcher, the job
    isolated from the next one in this process, and a failed sweep job's error logged as one line
    (the other jobs run; :func:`hugnc.preflight.run_checked` prints the error of a single run)."""
    from hugnc.errors import log_sweep_job_error

    install_hydra_ddp_launcher()
    try:
        with isolated_ddp_job():
            return task(cfg)
    except Exception as error:  # metrics.json records it too
        log_sweep_job_error(error)
        raise


def register_hydra_plugins() -> None:
    """Make hugnc's Hydra plugins known to Hydra: ``hydra/launcher=slurm``, ``=local`` and
    ``=ray``, and ``hydra/sweeper=optuna`` (:mod:`hydra_plugins.hugnc.optuna_sweeper`).

    Hydra finds plugins by walking the ``hydra_plugins`` folders on disk, which misses them in an
    editable install (setuptools maps its packages through an import hook); registering the
    classes works for every kind of install. Cheap: imports no torch, Optuna or ray. The Ray
    launcher is there when hydra-ray-launcher is installed (``hugnc[ray]``); the config check says
    how to install it when a command asks for it without.
    """
    from hydra.core.plugins import Plugins

    from hydra_plugins.hugnc.launchers import LocalLauncher, SlurmLauncher
    from hydra_plugins.hugnc.optuna_sweeper import OptunaSweeper

    for plugin in (LocalLauncher, SlurmLauncher, OptunaSweeper):
        Plugins.instance().register(plugin)
    if ray_launcher_installed():
        from hydra.core.config_store import ConfigStore

        from hydra_plugins.hugnc.ray_launcher import RayLauncher

        Plugins.instance().register(RayLauncher)
        # The plugin stores its own hydra/launcher=ray (the plugin's launcher class, an untyped
        # init/remote); Hydra would merge it into conf/hydra/launcher/ray.yaml as a "schema", with
        # a deprecation warning on every command. hugnc's yaml is the whole config.
        ConfigStore.instance().repo.get("hydra", {}).get("launcher", {}).pop("ray.yaml", None)


def ray_launcher_installed() -> bool:
    """Whether ``hydra/launcher=ray`` can run: ray and hydra-ray-launcher are importable."""
    from importlib.util import find_spec

    return (
        find_spec("ray") is not None and find_spec("hydra_plugins.hydra_ray_launcher") is not None
    )


def slurm_devices_problem(cfg: DictConfig) -> Problem | None:
    """``hydra/launcher=slurm`` asks SLURM for ``trainer.devices`` GPUs and tasks per node, so it
    must be a number: ``auto`` (``trainer=ddp``'s default) is unknown on the submitting node."""
    target = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    if not target.endswith("SlurmLauncher"):
        return None
    devices = OmegaConf.select(cfg, "trainer.devices", default=None)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return None
    return Problem(
        "trainer.devices",
        "hydra/launcher=slurm needs the number of GPUs per node (SLURM allocates them and starts "
        "one DDP rank per GPU); give it, e.g. trainer.devices=4",
        devices,
    )


def ray_resources_problem(cfg: DictConfig) -> Problem | None:
    """``hydra/launcher=ray`` asks Ray for each job's GPUs before the job runs: the accelerator
    must say gpu or cpu (``auto`` picks one on the job's machine, after Ray placed it) and a GPU
    job's ``trainer.devices`` must count GPUs; Ray runs a job on one machine; and the launcher must
    be installed (an optional extra)."""
    target = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    if not target.endswith("ray_launcher.RayLauncher"):
        return None
    if not ray_launcher_installed():
        return Problem(
            "hydra/launcher",
            'ray needs Ray and hydra-ray-launcher: pip install -e ".[ray]" and '
            "pip install --no-deps hydra-ray-launcher (README, 'Sweeps, multi-GPU and clusters')",
            "ray",
        )
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", default=None)
    if str(accelerator) not in (*GPU_ACCELERATORS, "cpu"):
        return Problem(
            "trainer.accelerator",
            "hydra/launcher=ray asks Ray for each job's GPUs before it runs: say trainer=gpu "
            "(or trainer=ddp) for GPU jobs, trainer=cpu for CPU jobs",
            accelerator,
        )
    devices = OmegaConf.select(cfg, "trainer.devices", default=None)
    try:
        gpus_per_job(str(accelerator), devices)
    except ValueError:
        return Problem(
            "trainer.devices",
            "hydra/launcher=ray needs the number of GPUs of each job (Ray allocates them and "
            "Lightning starts one DDP rank per GPU); give it, e.g. trainer.devices=2",
            devices,
        )
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1)
    if nodes != 1:
        return Problem(
            "trainer.num_nodes",
            "hydra/launcher=ray runs each job on one machine; use hydra/launcher=slurm for "
            "multi-node jobs",
            nodes,
        )
    return None


#: Launchers whose jobs run on this machine (SLURM's and Ray's run on nodes of their own).
_LOCAL_LAUNCHERS = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.hugnc.launchers.LocalLauncher",
)


def device_problem(cfg: DictConfig) -> str | None:
    """A device that a job run on this machine asks for and the machine lacks: GPUs of
    ``trainer.accelerator`` / ``trainer.devices`` under a launcher that runs its jobs here, or
    ``hugnc-ufm``'s ``ufm.device``. Checked before anything is written (the trainer would stop
    with a traceback after the run directory was made)."""
    import torch

    gpus = torch.cuda.device_count()
    ufm_device = OmegaConf.select(cfg, "ufm.device", default=None)
    if isinstance(ufm_device, str):
        try:
            device = torch.device(ufm_device)
        except RuntimeError as error:
            return f"ufm.device = {ufm_device!r}: not a torch device ({error}); e.g. cpu, cuda"
        needed = (device.index or 0) + 1
        if device.type == "cuda" and gpus < needed:
            return (
                f"ufm.device = {ufm_device!r}: this machine has {gpus} CUDA GPU(s); use "
                "ufm.device=cpu, or run it where the GPU is"
            )
        return None
    launcher = OmegaConf.select(cfg, "hydra.launcher._target_", default=None)
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if launcher not in _LOCAL_LAUNCHERS or accelerator not in GPU_ACCELERATORS:
        return None
    if accelerator == "gpu" and torch.backends.mps.is_available():
        gpus = max(gpus, 1)
    if gpus == 0:
        return (
            f"trainer.accelerator = {accelerator!r}: this machine has no GPU (torch finds no CUDA "
            "device); train on the CPU with trainer=cpu (trainer=ddp_cpu for DDP), or run it "
            "where a GPU is"
        )
    devices = OmegaConf.select(cfg, "trainer.devices", default="auto")
    try:
        needed = gpus_per_job(accelerator, devices)
    except ValueError:  # auto, -1: as many as there are
        return None
    if needed > gpus:
        return (
            f"trainer.devices = {devices}: this machine has {gpus} GPU(s); use "
            f"trainer.devices={gpus} or fewer, or a launcher that runs the job where the GPUs "
            "are (hydra/launcher=slurm)"
        )
    return None
