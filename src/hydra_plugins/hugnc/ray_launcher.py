"""hydra-ray-launcher's local launcher with each job's own resources and threads.

``hydra/launcher=ray`` (``conf/hydra/launcher/ray.yaml``). The plugin's launcher asks Ray for the
same ``ray.remote`` options for every job, resolved against the sweep's master config; this one
resolves them against each job's config (a sweep over ``trainer=gpu,ddp`` asks for 1 and for
``trainer.devices`` GPUs), gives each job as many torch threads as the cores Ray gave it, lets the
job's DDP ranks start from the driver's command line, and collects every job even when one of
them dies with its Ray worker. Ray itself, its start and its tasks are the plugin's
(``start_ray``, ``launch_job_on_ray``). A separate module from :mod:`.launchers`: it is imported
only where hydra-ray-launcher is installed (``hugnc[ray]``).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.types import TaskFunction
from hydra_plugins.hydra_ray_launcher import ray_launcher
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

#: Environment of every job, exported by the driver (hugnc.config.RUN_STAMP_ENV: the sweep's
#: directory name; hugnc.launching.ENTRY_COMMAND_ENV: how a job's DDP ranks start). Passed through
#: Ray's runtime_env so that jobs on other machines of a cluster see them too.
_DRIVER_ENV = ("HUGNC_RUN_STAMP", "HUGNC_ENTRY_COMMAND")


def run_with_ray_resources(task_function: TaskFunction, cfg: DictConfig) -> Any:
    """Run one job with as many torch threads as the cores Ray assigned to it.

    Ray workers are reused between tasks and inherit the driver's ``OMP_NUM_THREADS``, so the
    thread count is set here, per task, from the task's own assignment. ``OMP_NUM_THREADS`` is
    exported as well for the processes the job starts (DDP ranks, data loader workers).
    """
    import ray
    import torch

    cores = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
    threads = max(1, int(cores))
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    log.info(f"Ray job: {cores:g} cores, torch threads: {threads}, GPUs {ray.get_gpu_ids()}")
    return task_function(cfg)


def _crashed_job(sweep_config: DictConfig, error: Exception) -> JobReturn:
    """The record of a job whose Ray worker died (killed, out of memory) before it could return
    one; the sweeper reports it like any failed job once the others have finished."""
    job = JobReturn(
        overrides=list(sweep_config.hydra.overrides.task),
        cfg=sweep_config,
        hydra_cfg=sweep_config,
        working_dir=str(Path(sweep_config.hydra.sweep.dir) / str(sweep_config.hydra.sweep.subdir)),
        task_name=str(sweep_config.hydra.job.name),
        status=JobStatus.FAILED,
    )
    job.return_value = error
    return job


class RayLauncher(ray_launcher.RayLauncher):
    """``hydra/launcher=ray``: one Ray task per job, holding the job's own GPUs and cores."""

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        """Submit every job at once (Ray runs those that fit), then wait for all of them."""
        import ray
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals
        from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray, start_ray

        from hugnc.launching import export_entry_command

        assert self.config is not None
        assert self.hydra_context is not None
        assert self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Ray launcher: {len(job_overrides)} jobs, sweep directory {sweep_dir}")
        export_entry_command()
        env = {key: os.environ[key] for key in _DRIVER_ENV if key in os.environ}
        with open_dict(self.ray_cfg):
            # The plugin's default: Ray's own (30% of memory) is refused on small machines and CI.
            self.ray_cfg.init.setdefault("object_store_memory", 78_643_200)
        start_ray(self.ray_cfg.init)

        task = functools.partial(run_with_ray_resources, self.task_function)
        submitted = []
        for number, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            sweep_config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"ray_{number}"
                sweep_config.hydra.job.num = number
                remote = OmegaConf.to_container(
                    sweep_config.hydra.launcher.ray.remote, resolve=True
                )
            assert isinstance(remote, dict)
            runtime_env = remote.setdefault("runtime_env", {})
            runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
            handle = launch_job_on_ray(
                self.hydra_context,
                OmegaConf.create(remote),
                sweep_config,
                task,
                Singleton.get_state(),
            )
            submitted.append((sweep_config, handle))

        results = []
        for sweep_config, handle in submitted:
            try:
                results.append(ray.get(handle))
            except ray.exceptions.RayError as error:
                results.append(_crashed_job(sweep_config, error))
        return results
