"""``python -m hugnc resume=RUN_DIR``: continue a run in place after a crash, kill or preemption.

The run's own overrides are replayed (so the composed config is the same), Hydra's run directory is
the old one, training restarts from ``checkpoints/last.ckpt`` (epoch, optimizer and LR-schedule
state included) and a W&B run continues under its old id.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

# Overrides that a resume sets itself; dropped from the replayed ones.
_RESUME_KEYS = ("hydra.run.dir", "ckpt_path", "logger.wandb.id", "logger.wandb.resume", "resume")


class ResumeError(ValueError):
    """The directory cannot be resumed; the message says why and what is expected."""


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the run's online W&B run (``wandb/run-<time>-<id>``), if it has one.

    Offline runs are not continued under their id (W&B refuses an id whose offline run exists
    locally); the resumed part becomes a second offline run in the same directory.
    """
    runs = sorted((run_dir / "wandb").glob("run-*-*"))
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def resume_arguments(run_dir: str | Path, extra_overrides: Sequence[str] = ()) -> list[str]:
    """Hydra command-line arguments that continue the run in ``run_dir``.

    Args:
        run_dir: a run directory written by ``python -m hugnc`` (not a sweep directory).
        extra_overrides: further overrides (e.g. ``trainer.max_epochs=300`` to train longer).

    Raises:
        ResumeError: not a run directory, or no ``checkpoints/last.ckpt`` to continue from.
    """
    run_dir = Path(run_dir).resolve()
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    if not overrides_file.is_file():
        raise ResumeError(
            f"resume={run_dir}: not a hugnc run directory (no .hydra/overrides.yaml); give the "
            "directory printed as 'run directory:' (logs/<task_name>/runs/<date>_<time>_<id>)"
        )
    if not checkpoint.is_file():
        raise ResumeError(
            f"resume={run_dir}: no checkpoints/last.ckpt to continue from (it is written at the "
            "end of every epoch; a run killed during its first epoch has to be started again)"
        )
    saved = [str(o) for o in OmegaConf.load(overrides_file) if _key(str(o)) not in _RESUME_KEYS]
    given = {_key(o) for o in extra_overrides}
    arguments = [o for o in saved if _key(o) not in given] + list(extra_overrides)
    arguments += [f"hydra.run.dir={run_dir}", f"ckpt_path={checkpoint}"]
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    run_id = wandb_run_id(run_dir)
    if run_id and OmegaConf.select(config, "logger.wandb") is not None:
        arguments += [f"+logger.wandb.id={run_id}", "+logger.wandb.resume=allow"]
    return arguments


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with a ``resume=RUN_DIR`` argument expanded by :func:`resume_arguments`."""
    resume = [a for a in argv if a.startswith("resume=")]
    if not resume:
        return list(argv)
    if len(resume) > 1 or any(a in ("-m", "--multirun") for a in argv):
        raise ResumeError("resume=RUN_DIR takes one run directory and no --multirun")
    others = [a for a in argv if not a.startswith("resume=")]
    flags = [a for a in others if a.startswith("-")]
    overrides = [a for a in others if not a.startswith("-")]
    return flags + resume_arguments(resume[0].split("=", 1)[1], overrides)
