"""The run directory: its layout, and the code that reads and writes it.

A run directory (``logs/<task>/runs/<date>_<time>_<id>/``, or ``<sweep>/<n>/`` in a multirun)
holds ``.hydra/`` (Hydra's composed ``config.yaml``, ``hydra.yaml`` and ``overrides.yaml``),
``checkpoints/`` (``last.ckpt`` after every epoch, the best ``epoch_NNN.ckpt``), ``metrics.json``
(``status`` and the final metrics) and, with W&B, ``wandb/``. Every path inside it is spelled
here; training, resume, the RUN_DIR tools, the config check and the sweep report ask this module.

``python -m hugnc resume=RUN_DIR`` continues a run in place after a crash, kill or preemption: the
run's own overrides are replayed (so the composed config is the same), Hydra's run directory is
the old one, training restarts from ``checkpoints/last.ckpt`` (epoch, optimizer and LR-schedule
state included) and a W&B run continues under its old id.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

HYDRA_DIR = ".hydra"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT_STEM = "last"  # ModelCheckpoint's `filename` (it adds the suffix)
LAST_CHECKPOINT = f"{LAST_CHECKPOINT_STEM}.ckpt"
METRICS_FILE = "metrics.json"
WANDB_DIR = "wandb"
#: A hyperparameter search's Optuna study (``hydra/sweeper=optuna``), in the sweep directory.
STUDY_FILE = "optuna_study.journal"
#: The sweep's config and overrides, written by Hydra's sweepers at the start of a multirun.
MULTIRUN_FILE = "multirun.yaml"

_HYDRA_INTERPOLATION = re.compile(r"\$\{hydra:([\w.]+)\}")


def config_file(run_dir: str | Path) -> Path:
    """Hydra's composed job config of the run."""
    return Path(run_dir) / HYDRA_DIR / "config.yaml"


def hydra_file(run_dir: str | Path) -> Path:
    """Hydra's own config of the run (runtime values, group choices)."""
    return Path(run_dir) / HYDRA_DIR / "hydra.yaml"


def overrides_file(run_dir: str | Path) -> Path:
    """The run's command-line overrides."""
    return Path(run_dir) / HYDRA_DIR / "overrides.yaml"


def checkpoint_dir(run_dir: str | Path) -> Path:
    """Where the run's checkpoints go (also the configs' ``${hugnc.checkpoint_dir:...}``)."""
    return Path(run_dir) / CHECKPOINT_DIR


def last_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint written after every epoch: what a resume continues from."""
    return checkpoint_dir(run_dir) / LAST_CHECKPOINT


def run_dir_of_checkpoint(checkpoint: str | Path) -> Path:
    """The run directory a checkpoint of :func:`checkpoint_dir` belongs to."""
    return Path(checkpoint).parent.parent


def metrics_file(run_dir: str | Path) -> Path:
    """``status`` and the final metrics of the run."""
    return Path(run_dir) / METRICS_FILE


def study_file(sweep_dir: str | Path) -> Path:
    """The Optuna study of a hyperparameter search (an append-only journal of its trials): a
    search run again with the same sweep directory continues it."""
    return Path(sweep_dir) / STUDY_FILE


def multirun_file(sweep_dir: str | Path) -> Path:
    """The config (``hydra.overrides.task``: the command line) of the sweep's latest start."""
    return Path(sweep_dir) / MULTIRUN_FILE


def wandb_dir(run_dir: str | Path) -> Path:
    """W&B's files of the run (``run-<time>-<id>`` / ``offline-run-<time>-<id>``)."""
    return Path(run_dir) / WANDB_DIR


def job_dirs(sweep_dir: str | Path) -> list[Path]:
    """The job directories of a local multirun (those with overrides), in job-number order."""
    found = (p.parents[1] for p in Path(sweep_dir).glob(f"*/{HYDRA_DIR}/overrides.yaml"))
    return sorted(
        found, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )


def write_status(run_dir: str | Path, content: dict[str, Any]) -> None:
    """``metrics.json`` (rank 0 only): ``status`` and the final metrics, read by sweep reports and
    the README's results pipeline (``experiments/``)."""
    from lightning.pytorch.utilities import rank_zero_only

    # Lightning's stubs type rank_zero_only as a function; it carries the process rank.
    if rank_zero_only.rank != 0:  # type: ignore[attr-defined]
        return
    path = metrics_file(run_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, sort_keys=True))
    except OSError as error:
        # A full disk must not hide the error being reported (or fail a finished run).
        log.warning("could not write %s: %s", path, error)


def read_status(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's ``metrics.json`` content, or ``None`` when it has none (killed before the end)."""
    path = metrics_file(run_dir)
    return json.loads(path.read_text()) if path.is_file() else None


class NotARunDirError(ValueError):
    """The directory is not a hugnc run directory (or lacks what the tool needs)."""


def load_run_config(run_dir: str | Path, data_dir: str | Path | None = None) -> DictConfig:
    """The run's job config with every ``${hydra:...}`` replaced by the run's Hydra values.

    ``${hydra:runtime.output_dir}`` becomes ``run_dir`` itself (runs can be moved); other keys come
    from ``.hydra/hydra.yaml`` (e.g. ``runtime.cwd`` for the default data directory).
    ``data_dir`` overrides ``paths.data_dir``.

    Raises:
        NotARunDirError: no ``.hydra/config.yaml`` in ``run_dir``.
    """
    run_dir = Path(run_dir).resolve()
    config_path = config_file(run_dir)
    if not config_path.is_file():
        jobs = job_dirs(run_dir) if run_dir.is_dir() else []
        hint = (
            f"; it is a sweep: give one of its jobs, e.g. {jobs[0]}"
            if jobs
            else " (run directories are logs/<task_name>/runs/<date>_<time>_<id>/, made by "
            "python -m hugnc)"
        )
        raise NotARunDirError(
            f"{run_dir} is not a hugnc run directory: no .hydra/config.yaml in it{hint}"
        )
    hydra_path = hydra_file(run_dir)
    hydra_cfg = OmegaConf.load(hydra_path).hydra if hydra_path.is_file() else OmegaConf.create()

    def hydra_value(match: re.Match) -> str:
        key = match.group(1)
        if key == "runtime.output_dir":
            return str(run_dir)
        value = OmegaConf.select(hydra_cfg, key, default=None)
        if value is None:
            raise NotARunDirError(f"{config_path} uses ${{hydra:{key}}}, not in {hydra_path}")
        return str(value)

    text = _HYDRA_INTERPOLATION.sub(hydra_value, config_path.read_text())
    cfg = cast(DictConfig, OmegaConf.create(text))  # a run's config.yaml is a mapping
    if data_dir is not None:
        cfg.paths.data_dir = str(data_dir)
    return cfg


class UntrustedCheckpointError(NotARunDirError):
    """Loading the checkpoint would need full unpickling, which runs code the file names."""


#: What the refusal tells the user to do.
TRUST_OPT_IN = "--trust-checkpoint (load_run(..., trust_checkpoint=True))"


def load_checkpoint(
    path: str | Path, trust: bool = False, opt_in: str = TRUST_OPT_IN
) -> dict[str, Any]:
    """A checkpoint's contents on the CPU.

    Loaded with torch's weights-only unpickler (tensors, containers, numbers, strings: hugnc's and
    Lightning's checkpoints hold nothing else), so a checkpoint from someone else's run directory
    cannot run code on this machine. ``trust=True`` unpickles fully, for files you made yourself
    that need it (e.g. written by other code); ``opt_in`` is how the refusal says to ask for it.

    Raises:
        UntrustedCheckpointError: the file needs full unpickling and ``trust`` is false.
    """
    import pickle

    import torch

    if (problem := not_a_checkpoint(path)) is not None:
        raise NotARunDirError(problem)
    try:
        return cast(dict[str, Any], torch.load(path, map_location="cpu", weights_only=not trust))
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise UntrustedCheckpointError(
            f"{path} holds more than tensors and plain containers ({reason[:200]}); loading it "
            f"would run code named in the file. Only if you made it yourself: {opt_in}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:  # a damaged archive
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise NotARunDirError(f"{path} cannot be read as a checkpoint ({reason[:200]})") from error


def not_a_checkpoint(path: str | Path) -> str | None:
    """Why the file ``path`` is no PyTorch checkpoint (``torch.save`` writes a zip archive; a
    truncated one has lost the archive's index at its end), or ``None``."""
    import zipfile

    if zipfile.is_zipfile(path):
        return None
    return (
        f"{path} is not a PyTorch checkpoint, or a damaged one (torch.save and Lightning write a "
        "zip archive; this file is none)"
    )


def find_checkpoint(run_dir: str | Path, which: str = "best", trust: bool = False) -> Path:
    """``which`` = ``"best"`` (the ModelCheckpoint's best, as ``trainer.test`` used; falls back to
    last), ``"last"`` (``checkpoints/last.ckpt``), or a path to a ``.ckpt`` file. ``"best"`` reads
    ``last.ckpt`` (see :func:`load_checkpoint` for ``trust``).

    Raises:
        NotARunDirError: the checkpoint does not exist (:class:`UntrustedCheckpointError`: it
            needs full unpickling).
    """
    run_dir = Path(run_dir)
    if which not in ("best", "last"):
        path = Path(which)
        if not path.is_file():
            raise NotARunDirError(f"checkpoint {path} does not exist")
        return path
    last = last_checkpoint(run_dir)
    if not last.is_file():
        found = sorted(checkpoint_dir(run_dir).glob("*.ckpt"))
        if not found:
            raise NotARunDirError(
                f"no checkpoint in {checkpoint_dir(run_dir)} (a run with trainer=debug or "
                "fast_dev_run keeps none)"
            )
        last = found[-1]
    if which == "last":
        return last
    state = load_checkpoint(last, trust)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            # Checkpoints move with the run directory: look next to last.ckpt.
            best = last.parent / Path(value["best_model_path"]).name
            if best.is_file():
                return best
    return last


# Overrides that a resume sets itself; dropped from the replayed ones.
_RESUME_KEYS = ("hydra.run.dir", "ckpt_path", "logger.wandb.id", "logger.wandb.resume", "resume")
#: Overrides that give a finished run more to train.
_BUDGET_KEYS = frozenset({"trainer.max_epochs", "trainer.max_steps"})


class ResumeError(ValueError):
    """The directory cannot be resumed; the message says why and what is expected."""


def override_key(override: str) -> str:
    """The key an override sets, adds or deletes (``+a.b=1``, ``~a.b`` -> ``a.b``; a group
    option into another package, ``group@pkg=option``, -> ``group``)."""
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the run's online W&B run (``wandb/run-<time>-<id>``), if it has one.

    Offline runs are not continued under their id (W&B refuses an id whose offline run exists
    locally); the resumed part becomes a second offline run in the same directory.
    """
    runs = sorted(wandb_dir(run_dir).glob("run-*-*"))
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def _schedule_laid_out_for_the_budget(config: DictConfig | ListConfig) -> str | None:
    """The class name of the run's lr scheduler if its length is fixed by the training budget
    (the module fills in its ``total_steps``, or a value interpolates ``trainer.max_epochs``/
    ``max_steps``), else ``None``. ``config``: the run's saved, unresolved config."""
    # The module (torch, Lightning) only now: a plain resume= needs none of this.
    from hugnc.module import takes_total_steps

    factory = OmegaConf.select(config, "scheduler.factory")
    if not isinstance(factory, DictConfig) or "_target_" not in factory:
        return None
    target = str(factory._target_)
    values = cast(dict[str, Any], OmegaConf.to_container(factory, resolve=False)).values()
    interpolated = any(f"{{{key}}}" in str(value) for value in values for key in _BUDGET_KEYS)
    try:
        filled_in = takes_total_steps(get_object(target))
    except (ImportError, AttributeError, TypeError, ValueError):
        filled_in = False
    return target.rsplit(".", 1)[-1] if interpolated or filled_in else None


def resume_arguments(run_dir: str | Path, extra_overrides: Sequence[str] = ()) -> list[str]:
    """Hydra command-line arguments that continue the run in ``run_dir``.

    Args:
        run_dir: a run directory written by ``python -m hugnc`` (not a sweep directory).
        extra_overrides: further overrides (e.g. ``trainer.max_epochs=300`` to train longer).

    Raises:
        ResumeError: not a run directory, no ``checkpoints/last.ckpt`` to continue from, or a
            finished run and no larger budget (``trainer.max_epochs``/``max_steps``) given.
    """
    run_dir = Path(run_dir).resolve()
    overrides = overrides_file(run_dir)
    checkpoint = last_checkpoint(run_dir)
    if not overrides.is_file():
        raise ResumeError(
            f"resume={run_dir}: not a hugnc run directory (no .hydra/overrides.yaml); give the "
            "directory printed as 'run directory:' (logs/<task_name>/runs/<date>_<time>_<id>)"
        )
    if not checkpoint.is_file():
        raise ResumeError(
            f"resume={run_dir}: no checkpoints/last.ckpt to continue from (it is written at the "
            "end of every epoch; a run killed during its first epoch has to be started again)"
        )
    saved = [str(o) for o in OmegaConf.load(overrides) if override_key(str(o)) not in _RESUME_KEYS]
    given = {override_key(o) for o in extra_overrides}
    config = OmegaConf.load(config_file(run_dir))
    if (read_status(run_dir) or {}).get("status") == "completed" and not given & _BUDGET_KEYS:
        # Lightning would train nothing, test again and replace the run's final metrics.
        epochs = OmegaConf.select(config, "trainer.max_epochs", default=None)
        raise ResumeError(
            f"resume={run_dir}: this run finished (metrics.json: status completed), so there is "
            "nothing to continue and its results are kept. To train it longer, raise its budget: "
            f"resume={run_dir} trainer.max_epochs=N (N above its {epochs})"
        )
    if given & _BUDGET_KEYS and (schedule := _schedule_laid_out_for_the_budget(config)):
        raise ResumeError(
            f"resume={run_dir} with a new {' / '.join(sorted(given & _BUDGET_KEYS))}: the run's "
            f"learning-rate schedule ({schedule}) was laid out for its own budget and is saved in "
            "its checkpoint, so it cannot be stretched to another. Train a new run with the "
            "budget you want, or use a schedule that does not depend on it (scheduler=multistep "
            "or scheduler=none)"
        )
    arguments = [o for o in saved if override_key(o) not in given] + list(extra_overrides)
    return [*arguments, f"hydra.run.dir={run_dir}", *_continue_from(run_dir)]


def _continue_from(run_dir: Path) -> list[str]:
    """Overrides that continue the run of ``run_dir`` from its ``last.ckpt`` (and an online W&B
    run under its id)."""
    arguments = [f"ckpt_path={last_checkpoint(run_dir)}"]
    run_id = wandb_run_id(run_dir)
    config = OmegaConf.load(config_file(run_dir))
    if run_id and OmegaConf.select(config, "logger.wandb") is not None:
        arguments += [f"+logger.wandb.id={run_id}", "+logger.wandb.resume=allow"]
    return arguments


def requeue_overrides(job_dir: str | Path, overrides: Sequence[str]) -> list[str]:
    """The overrides of a sweep job requeued by its scheduler (submitit's answer to SLURM's
    timeout or preemption signal): the job's own, continuing from the ``last.ckpt`` of
    ``job_dir`` when one was written (else the job starts again from scratch)."""
    job_dir = Path(job_dir).resolve()
    if not last_checkpoint(job_dir).is_file():
        return list(overrides)
    return [
        *(o for o in overrides if override_key(o) not in _RESUME_KEYS),
        *_continue_from(job_dir),
    ]


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


def output_location_problem(directory: str | Path) -> str | None:
    """Why the run/sweep directory could not be created and written, or ``None``.

    Looks at the nearest existing ancestor: Hydra would otherwise fail with a traceback while
    making the directory, or the run hours later when it writes its first checkpoint.
    """
    directory = Path(directory).absolute()
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"output directory {directory}: {existing} is a file, not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"output directory {directory}: {existing} is not writable"
    # os.access says yes to root on read-only or virtual file systems (/proc): try it, leaving
    # nothing behind.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hugnc-write-check-", dir=existing))
    except OSError as error:
        return f"output directory {directory}: cannot create it in {existing} ({error.strerror})"
    return None


def _earlier_run(directory: Path) -> str | None:
    """What of an earlier run ``directory`` holds (its status, or its checkpoints), or ``None``."""
    status = (
        (read_status(directory) or {}).get("status") if metrics_file(directory).is_file() else None
    )
    if status:
        return f"{METRICS_FILE}: status {status}"
    checkpoints = list(checkpoint_dir(directory).rglob("*.ckpt"))
    return f"{len(checkpoints)} checkpoint(s)" if checkpoints else None


def earlier_run_problem(run_dir: str | Path) -> str | None:
    """Why a new run must not start in ``run_dir``: it holds an earlier run, whose checkpoints
    and metrics the new one would overwrite (a continuation gives ``ckpt_path`` instead)."""
    run_dir = Path(run_dir).absolute()
    held = _earlier_run(run_dir) if run_dir.is_dir() else None
    if held is None:
        return None
    return (
        f"output directory {run_dir} holds an earlier run ({held}); a new run there would "
        f"overwrite it. Continue it with python -m hugnc resume={run_dir}, or start the new run "
        "elsewhere (leave hydra.run.dir unset, or give a new one)"
    )


def earlier_sweep_problem(sweep_dir: str | Path) -> str | None:
    """Why a new basic sweep must not start in ``sweep_dir``: its jobs (numbered from 0) would
    overwrite the runs of an earlier sweep there."""
    held = [job.name for job in job_dirs(sweep_dir) if _earlier_run(job) is not None]
    if not held:
        return None
    shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
    return (
        f"sweep directory {Path(sweep_dir).absolute()} holds the runs of an earlier sweep (jobs "
        f"{shown}); a new sweep there would overwrite them. Give a new hydra.sweep.dir (or "
        "leave it unset)"
    )


def checkpoint_problem(ckpt_path: str | None, run_dir: str | Path) -> str | None:
    """Why ``ckpt_path`` of a run in ``run_dir`` names no checkpoint, or ``None``.

    Lightning alone would train from scratch after a warning for ``last`` with nothing to
    resume, and fail only after setting up the data for a missing file.
    """
    # Lightning's own keywords ("registry:<name>" too) and remote URLs (s3://, gs://...) are
    # Lightning's to resolve.
    if ckpt_path is None or ckpt_path in ("best", "hpc") or "://" in ckpt_path:
        return None
    if ckpt_path.lower() == "registry" or ckpt_path.lower().startswith("registry:"):
        return None
    if ckpt_path == "last":
        last = last_checkpoint(run_dir)
        if last.is_file():
            return None
        return (
            f"ckpt_path=last: no {last} (ckpt_path=last looks in this run's own directory, "
            "a new one unless hydra.run.dir says otherwise). To continue a run: "
            "python -m hugnc resume=RUN_DIR"
        )
    if not Path(ckpt_path).is_file():
        return f"ckpt_path={ckpt_path}: no such file"
    problem = not_a_checkpoint(ckpt_path)
    return f"ckpt_path={problem}" if problem else None
