"""Check the command line's config before Hydra makes a run directory.

``@hydra.main`` creates the run (or sweep) directory before it calls the task function, so a
mistake found inside the run leaves a directory, a ``metrics.json`` marked failed and possibly a
W&B run behind, after seconds to minutes of imports and data loading. :func:`preflight` composes
the same configs Hydra will (with Hydra's own config loader, the same search path and command-line
flags), validates them with :func:`hugnc.schema.validate_config` and, if anything is wrong, prints
one short message per problem (which key, what is allowed) and exits with code 2, before
``hydra.main`` runs.

A multirun is expanded as Hydra's basic sweeper will (``hydra.sweeper.params`` of the config,
then the command line's comma lists and ranges), and every job is checked before the first
starts. Commands that run nothing (``--help``, ``--cfg``, ``--info``, shell completion) are left
to Hydra. ``HUGNC_SKIP_CONFIG_CHECK=1`` turns the check off (for a ``_target_`` the check
misjudges).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from hugnc.config import config_dir
from hugnc.run_dir import last_checkpoint
from hugnc.schema import (
    Problem,
    Signature,
    target_signature,
    unknown_key_problem,
    validate_config,
)

#: Exit code of a rejected command line (argparse's, for usage errors).
EXIT_CODE = 2
#: Set to 1 to skip the check.
SKIP_ENV = "HUGNC_SKIP_CONFIG_CHECK"
#: Problems printed at most; the rest are counted.
MAX_PROBLEMS = 8
_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
_OUTPUT_DIR_PLACEHOLDER = "<run directory>"
_HINT = "hugnc: nothing was run or written; see README.md, 'Configuration errors'."


class ConfigCheckError(Exception):
    """The command line's config is invalid; ``str()`` is the whole message for the user."""


@dataclass
class _Job:
    """One job of a sweep: its overrides, and a ``label`` naming it in messages."""

    overrides: list[str]
    label: str = ""


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]


def _first_lines(message: str) -> str:
    """Hydra's multi-line message as one line, without the config search path listing."""
    lines = []
    for line in message.splitlines():
        if line.startswith("Config search path"):
            break
        if line.strip():
            lines.append(line.strip())
    return "; ".join(lines)


class _Composer:
    """Hydra's config loader for the command line's config name, search path and overrides."""

    def __init__(self, args: Any, default_config_name: str, calling_file: str) -> None:
        from hydra._internal.hydra import Hydra
        from hydra._internal.utils import create_automatic_config_search_path, detect_task_name
        from hydra.core.config_search_path import SearchPathQuery

        self.config_name = args.config_name or default_config_name
        config_path = args.config_path or str(config_dir())
        search_path = create_automatic_config_search_path(calling_file, None, config_path)
        if args.config_dir is not None:
            search_path.prepend(
                provider="command-line",
                path=f"file://{os.path.abspath(args.config_dir)}",
                anchor=SearchPathQuery(provider="schema"),
            )
        self.hydra = Hydra.create_main_hydra2(
            task_name=detect_task_name(calling_file, None), config_search_path=search_path
        )

    def compose(self, overrides: Sequence[str], multirun: bool = False) -> DictConfig:
        from hydra.errors import ConfigCompositionException
        from hydra.types import RunMode

        try:
            return self.hydra.compose_config(
                self.config_name,
                list(overrides),
                run_mode=RunMode.MULTIRUN if multirun else RunMode.RUN,
                with_log_configuration=False,
                from_shell=True,
            )
        except ValueError as error:  # e.g. a group set to null: "loss=null"
            raise ConfigCompositionException(str(error)) from error

    def sweep_jobs(self, overrides: Sequence[str]) -> tuple[DictConfig, list[_Job]]:
        """The sweep's own config and its jobs, as Hydra's basic sweeper will launch them."""
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        master = self.compose(overrides, multirun=True)
        if OmegaConf.select(master, "hydra.sweeper._target_") != _BASIC_SWEEPER:
            # Another sweeper chooses the values itself: only the base config can be checked.
            return master, [_Job(list(master.hydra.overrides.task), "the sweep's base config")]
        params = OmegaConf.select(master, "hydra.sweeper.params") or {}
        arguments = [f"{key}={value}" for key, value in params.items()]
        arguments += list(master.hydra.overrides.task)
        parser = OverridesParser.create(config_loader=self.hydra.config_loader)
        (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
        swept = {
            o.get_key_element() for o in parser.parse_overrides(arguments) if o.is_sweep_override()
        }
        result = []
        for number, job in enumerate(jobs):
            values = {k: v for k, _, v in (o.partition("=") for o in job) if k in swept}
            shown = " ".join(f"{k}={v}" for k, v in values.items())
            label = f"sweep job {number + 1} of {len(jobs)} ({shown})"
            result.append(_Job(list(job), label))
        return master, result

    def job_config(self, master: DictConfig, job: _Job) -> DictConfig:
        return self.hydra.config_loader.load_sweep_config(master, job.overrides)

    def added_keys(self, cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
        """Value keys the overrides add with ``+`` (group appends such as ``+foo=bar`` of a
        config group are not keys)."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = OverridesParser.create(config_loader=self.hydra.config_loader)
        choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
        return [
            o.key_or_group
            for o in parser.parse_overrides(list(overrides))
            if o.is_add() and o.package is None and o.key_or_group not in choices
        ]


def _origin(problem: Problem, cfg: DictConfig | None, overrides: Sequence[str]) -> str:
    """Where the offending value came from: the command line or a group option's yaml file."""
    given = {_override_key(o) for o in overrides}
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") if cfg is not None else None
    choices = choices or {}
    key = problem.key
    if any(g == key or g.startswith(f"{key}.") for g in given):
        return " (command line)"
    parts = key.split(".")
    # A value override of an enclosing node (+callbacks.x={...}); a group choice is not one.
    ancestors = {".".join(parts[:i]) for i in range(1, len(parts))}
    if any(a in given and a not in choices for a in ancestors):
        return " (command line)"
    if choices.get(parts[0]):
        return f" (conf/{parts[0]}/{choices[parts[0]]}.yaml)"
    return ""


def _composition_problem(
    error: Exception, overrides: Sequence[str], composer: _Composer, multirun: bool
) -> str:
    """A Hydra/OmegaConf composition error as one line naming the key and what is allowed."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException) and error.options and error.missing_cfg_file:
        group, _, name = error.missing_cfg_file.rpartition("/")
        return f"{group}={name}: no such option; {group} is one of {', '.join(error.options)}"
    if isinstance(error, OverrideParseException):
        message = error.message.splitlines()[0]
        return (
            f"cannot parse {error.override!r}: {message} (override grammar: "
            "https://hydra.cc/docs/advanced/override_grammar/basic/)"
        )
    message = str(error)
    full_key = getattr(error.__cause__, "full_key", None)
    if message.startswith("Could not override") and isinstance(full_key, str) and full_key:
        return _not_in_config(full_key, overrides, composer, multirun)
    if message.startswith("Config group override must be"):
        nulls = [o for o in overrides if o.endswith("=null")]
        if nulls:
            group = _override_key(nulls[0])
            return f"{nulls[0]}: a config group needs one of its options (to drop it: ~{group})"
    if message.startswith("Ambiguous value"):
        argument = message.split("'", 2)[1] if message.count("'") >= 2 else "key=a,b"
        return (
            f"{argument}: a comma-separated value is a sweep; add -m (--multirun) to run one job "
            "per value, or write key=[a,b] for a list"
        )
    return _first_lines(message) or type(error).__name__


def _not_in_config(
    full_key: str, overrides: Sequence[str], composer: _Composer, multirun: bool
) -> str:
    """``key=value`` for a key the composed config lacks (Hydra's "Could not override").

    The config without that override says what the node has. A key its ``_target_`` accepts is
    only missing from the yaml (``+key=value`` adds it); anything else is an unknown key.
    """
    given = [o for o in overrides if _override_key(o) == full_key]
    rest = [o for o in overrides if o not in given]
    parent_key, _, name = full_key.rpartition(".")
    try:
        cfg = composer.compose(rest, multirun)
    except Exception:
        return f"{full_key}: unknown key"
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig):
        return f"{full_key}: unknown key"
    keys = [str(k) for k in parent if str(k) != "hydra"]
    owner = parent_key or "the top level"
    if "_target_" in parent:
        signature = target_signature(parent_key, parent)
        if isinstance(signature, Signature):
            if signature.keys is None or name in signature.keys:
                example = f"+{given[0]}" if given else f"+{full_key}=..."
                yaml = _origin(Problem(full_key, ""), cfg, []).strip(" ()") or "the config"
                return f"{full_key}: not in {yaml}; add it with {example}"
            keys = sorted(set(keys) | signature.keys)
            owner = signature.name
    problem = unknown_key_problem(full_key, keys, owner)
    return str(problem) + _origin(problem, cfg, [])


def _checked(cfg: DictConfig, added: list[str], cheap_only: bool = False) -> list[Problem]:
    """:func:`validate_config` with Hydra's runtime set, so ``${hydra:...}`` values resolve."""
    from hydra.core.hydra_config import HydraConfig

    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = _OUTPUT_DIR_PLACEHOLDER
    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(cfg)
    try:
        return validate_config(cfg, added, cheap_only=cheap_only)
    finally:
        instance.cfg = saved


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


def compile_sync_batchnorm_problem(cfg: DictConfig) -> Problem | None:
    """``compile=true`` with ``trainer.sync_batchnorm=true`` is refused: every SyncBatchNorm layer
    all-reduces its batch statistics inside the forward, which torch.compile cannot keep in one
    graph (a graph break and a collective per layer), so compiling buys nothing there."""
    if not (cfg.get("compile", False) and OmegaConf.select(cfg, "trainer.sync_batchnorm")):
        return None
    return Problem(
        "compile",
        "torch.compile does not combine with trainer.sync_batchnorm=true (SyncBatchNorm's "
        "all-reduce breaks the compiled graph at every layer); use compile=false, or "
        "trainer.sync_batchnorm=false (per-GPU batch statistics)",
        True,
    )


def combination_problems(cfg: DictConfig) -> list[Problem]:
    """Values that are valid alone but not together (checked before Hydra starts)."""
    checks = (slurm_devices_problem, compile_sync_batchnorm_problem)
    return [problem for check in checks if (problem := check(cfg)) is not None]


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


def _output_directory(cfg: DictConfig, multirun: bool) -> str:
    """``hydra.run.dir`` (or ``hydra.sweep.dir``), resolved as Hydra will resolve it."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(cfg)
    try:
        return cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir
    finally:
        instance.cfg = saved


def _check_output_location(cfg: DictConfig, multirun: bool) -> None:
    problem = output_location_problem(_output_directory(cfg, multirun))
    if problem:
        raise ConfigCheckError(
            f"hugnc: {problem}. Choose another location: paths.log_dir=DIR (or HUGNC_LOG_DIR), "
            f"or hydra.{'sweep' if multirun else 'run'}.dir=DIR"
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
    return None


def _check_checkpoint(cfg: DictConfig) -> None:
    problem = checkpoint_problem(cfg.get("ckpt_path"), _output_directory(cfg, multirun=False))
    if problem:
        raise ConfigCheckError(f"hugnc: {problem}")


def _report(lines: list[str]) -> str:
    shown = lines[:MAX_PROBLEMS]
    if len(lines) > MAX_PROBLEMS:
        shown.append(f"... and {len(lines) - MAX_PROBLEMS} more problems")
    return "\n".join([f"hugnc: invalid config: {line}" for line in shown] + [_HINT])


def check_command_line(
    argv: Sequence[str], config_name: str = "train", calling_file: str | None = None
) -> None:
    """Raise :class:`ConfigCheckError` if the run (or any job of the sweep) ``argv`` describes
    has an invalid config. Commands that run nothing pass unchecked.

    Args:
        argv: the command-line arguments after the program name (after ``resume=`` expansion).
        config_name: the entry point's primary config (``train``, ``continual``).
        calling_file: the file of the ``@hydra.main`` function (relative ``--config-path``
            values are resolved against it, as Hydra does).
    """
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    if os.environ.get(SKIP_ENV, "") not in ("", "0") or "--version" in argv:
        return
    args, unknown = get_args_parser().parse_known_args(list(argv))
    if unknown or args.help or args.hydra_help or args.cfg or args.info:
        return
    if args.shell_completion or args.resolve or args.experimental_rerun:
        return
    calling_file = calling_file or str(Path(__file__).with_name("__main__.py"))
    overrides = list(args.overrides)
    composer = _Composer(args, config_name, calling_file)
    config_errors = (HydraException, OmegaConfBaseException)
    try:
        multirun = bool(args.multirun)
        if not multirun:
            try:
                cfg = composer.compose(overrides)
            except HydraException as error:
                # hydra.mode=MULTIRUN in a config makes comma lists sweeps without -m.
                from hydra.types import RunMode

                if not str(error).startswith("Ambiguous value") or (
                    composer.hydra.get_mode(composer.config_name, overrides) != RunMode.MULTIRUN
                ):
                    raise
                multirun = True
            else:
                problems = [
                    *combination_problems(cfg),
                    *_checked(cfg, composer.added_keys(cfg, overrides)),
                ]
                if problems:
                    lines = [f"{p}{_origin(p, cfg, overrides)}" for p in problems]
                    raise ConfigCheckError(_report(lines))
                _check_output_location(cfg, multirun=False)
                _check_checkpoint(cfg)
                return
        master, jobs = composer.sweep_jobs(overrides)
        _check_jobs(composer, master, jobs, config_errors)
        _check_output_location(master, multirun=True)
    except config_errors as error:
        problem = _composition_problem(error, overrides, composer, multirun)
        raise ConfigCheckError(_report([problem])) from error
    finally:
        GlobalHydra.instance().clear()


def _check_jobs(
    composer: _Composer, master: DictConfig, jobs: list[_Job], config_errors: tuple
) -> None:
    """Check every job of a sweep; a problem shared by all jobs is reported once, unlabelled."""
    found: dict[str, list[_Job]] = {}
    configs = []
    for job in jobs:
        try:
            cfg = composer.job_config(master, job)
        except config_errors as error:
            line = _composition_problem(error, job.overrides, composer, multirun=False)
            found.setdefault(line, []).append(job)
            continue
        configs.append((job, cfg, composer.added_keys(cfg, job.overrides)))
    # The cheap checks of every job first: a bad value in the last job fails without imports.
    for cheap_only in (True, False):
        for job, cfg, added in configs:
            combined = combination_problems(cfg) if cheap_only else []
            for problem in [*combined, *_checked(cfg, added, cheap_only)]:
                line = f"{problem}{_origin(problem, cfg, job.overrides)}"
                found.setdefault(line, []).append(job)
        if found:
            break
    if not found:
        return
    lines = []
    for line, bad_jobs in found.items():
        if len(bad_jobs) == len(jobs) and len(jobs) > 1:
            lines.append(f"every sweep job: {line}")
        elif len(jobs) == 1:
            lines.append(line)
        else:
            more = f" and {len(bad_jobs) - 1} more" if len(bad_jobs) > 1 else ""
            lines.append(f"{bad_jobs[0].label}{more}: {line}")
    raise ConfigCheckError(_report(lines))


def preflight(
    argv: Sequence[str], config_name: str = "train", calling_file: str | None = None
) -> None:
    """:func:`check_command_line`, exiting with :data:`EXIT_CODE` and the message on stderr.

    A failure of the check itself (not of the config) must not stop a run that may well be
    valid: it is reported in one line and Hydra goes on as it would have without the check.
    """
    try:
        check_command_line(argv, config_name, calling_file)
    except ConfigCheckError as error:
        print(error, file=sys.stderr)
        sys.exit(EXIT_CODE)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else ""
        print(
            f"hugnc: warning: config check skipped ({type(error).__name__}: {reason})",
            file=sys.stderr,
        )
