"""hydra-submitit-launcher's launchers, with one writer per job.

srun starts one task per DDP rank and each task runs the whole Hydra job; without these launchers
every rank rewrites the job's ``.hydra/`` and appends to its one log file. ``hydra/launcher=slurm``
and ``hydra/launcher=local`` use them (Hydra imports every module under ``hydra_plugins`` at start,
so this one imports nothing heavy).
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_submitit_launcher import submitit_launcher

# Hydra overrides for every task but the first of a job. Ranks > 0 log to their console, which
# submitit keeps per task (<job>_<task>_log.*).
SECONDARY_TASK_OVERRIDES = (
    "hydra.output_subdir=null",
    "hydra.job_logging.root.handlers=[console]",
    "~hydra.job_logging.handlers.file",
)


def task_overrides(global_rank: int) -> list[str]:
    """Hydra overrides for the process of ``global_rank`` in a multi-task submitit job."""
    return [] if global_rank == 0 else list(SECONDARY_TASK_OVERRIDES)


class _OneWriterPerJob:
    """Mixin for hydra-submitit-launcher launchers: only task 0 of a job writes Hydra's outputs."""

    def __call__(
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict,
    ) -> Any:
        import submitit

        overrides = list(sweep_overrides) + task_overrides(submitit.JobEnvironment().global_rank)
        # A mixin: super() is the submitit launcher that follows it in the subclasses' MRO.
        return super().__call__(  # type: ignore[misc]
            overrides, job_dir_key, job_num, job_id, singleton_state
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """What submitit requeues after a timeout or preemption signal (SLURM's USR2, on task 0):
        the job again, continuing from its directory's ``last.ckpt``
        (:func:`hugnc.run_dir.requeue_overrides`); hydra-submitit-launcher's own requeue starts
        the job from scratch and overwrites its checkpoints."""
        from hydra.core.hydra_config import HydraConfig

        from hugnc.run_dir import requeue_overrides

        sweep_overrides, *rest = args
        job_dir = HydraConfig.get().runtime.output_dir  # set: called from inside the running job
        overrides = requeue_overrides(job_dir, sweep_overrides)
        return super().checkpoint(overrides, *rest, **kwargs)  # type: ignore[misc]


class SlurmLauncher(_OneWriterPerJob, submitit_launcher.SlurmLauncher):
    """``hydra/launcher=slurm``: submitit's SLURM launcher, one writer per job."""


class LocalLauncher(_OneWriterPerJob, submitit_launcher.LocalLauncher):
    """``hydra/launcher=local``: submitit's local executor, one writer per job."""
