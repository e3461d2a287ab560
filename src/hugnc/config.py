"""Where the Hydra configs live, and the resolvers they use (imported before any composition)."""

from __future__ import annotations

import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import ListConfig, OmegaConf

#: Exported so that processes started by this one (submitit/SLURM jobs of a sweep, DDP ranks)
#: resolve the same output directory.
RUN_STAMP_ENV = "HUGNC_RUN_STAMP"


def config_dir() -> Path:
    """The ``conf/`` directory: inside the installed package, else the repository checkout's."""
    packaged = Path(__file__).resolve().parent / "conf"
    if (packaged / "train.yaml").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "conf"
    if (checkout / "train.yaml").is_file():
        return checkout
    raise FileNotFoundError(f"hugnc configs not found in {packaged} or {checkout}: reinstall hugnc")


def run_stamp() -> str:
    """``<date>_<time>_<random id>`` naming this run's or sweep's output directory.

    Hydra's ``${now:...}`` alone collides when two runs or sweeps start in the same second, and a
    submitit job re-resolving it in its own process would land in another directory. The stamp is
    made once, exported in ``HUGNC_RUN_STAMP``, and reused by every process started from here.
    """
    if RUN_STAMP_ENV not in os.environ:
        os.environ[RUN_STAMP_ENV] = f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}"
    return os.environ[RUN_STAMP_ENV]


def sweep_name() -> str | None:
    """The multirun's directory name (one W&B group per sweep); ``None`` for a single run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    return Path(HydraConfig.get().sweep.dir).name


#: ``trainer.accelerator`` values that train on GPUs (and so hold ``trainer.devices`` of them).
GPU_ACCELERATORS = ("gpu", "cuda")


def gpus_per_job(accelerator: str, devices: Any) -> int:
    """GPUs one job holds: ``trainer.devices`` for a GPU accelerator, else none.

    A launcher that allocates GPUs (``hydra/launcher=ray``: ``num_gpus`` of each job) asks for
    this many; ``devices`` must then be a count or a list of indices, since ``auto`` is only known
    on the machine that runs the job (the config check says so before anything starts).
    """
    if str(accelerator) not in GPU_ACCELERATORS:
        return 0
    if isinstance(devices, ListConfig | list):
        return len(devices)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices >= 1:
        return devices
    raise ValueError(
        f"trainer.devices={devices!r} is not a number of GPUs; give it, e.g. trainer.devices=2"
    )


def register_resolvers() -> None:
    from hugnc import run_dir

    resolvers = (
        ("hugnc.run_stamp", run_stamp),
        ("hugnc.sweep_name", sweep_name),
        # GPUs a job asks its launcher for: ${hugnc.gpus_per_job:${trainer.accelerator},...}.
        ("hugnc.gpus_per_job", gpus_per_job),
        # The run directory's layout, for configs: ${hugnc.checkpoint_dir:${paths.output_dir}}.
        ("hugnc.checkpoint_dir", lambda output_dir: str(run_dir.checkpoint_dir(output_dir))),
        ("hugnc.last_checkpoint_stem", lambda: run_dir.LAST_CHECKPOINT_STEM),
    )
    for name, resolver in resolvers:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


register_resolvers()
