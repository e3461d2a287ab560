"""The config check of every entry point, where Hydra has composed the config and made nothing.

:class:`ConfigCheck` is a Hydra callback (``conf/hydra/default.yaml``): ``on_run_start`` and
``on_multirun_start`` come after Hydra composed the config and before it makes the run (sweep)
directory. It checks the config with :func:`hugnc.schema.validate_config` (every job of a basic
sweep, composed by Hydra's own config loader, before the first starts), the combinations that no
single value shows (each checked where its values are used: launchers in :mod:`hugnc.launching`,
``compile`` in :mod:`hugnc.train`), the output location and ``ckpt_path``; a problem is one
line naming the key, what is allowed and where the value came from, and the run stops with exit
code 2.

A config Hydra cannot compose (an unknown key or option, a bad override) fails before any
callback: :func:`run_checked` (around each entry point's ``@hydra.main`` function) turns Hydra's
error into the same kind of line. Commands that run nothing (``--help``, ``--cfg``, ``--info``)
never reach the callback. ``HUGNC_SKIP_CONFIG_CHECK=1`` turns the check off (for a ``_target_``
the check misjudges); ``hydra.callbacks.config_check.dry_run=true`` checks and runs nothing.
"""

from __future__ import annotations

import itertools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from hugnc.config import config_dir
from hugnc.errors import DEBUG_ENV, report
from hugnc.run_dir import (
    checkpoint_problem,
    earlier_run_problem,
    earlier_sweep_problem,
    output_location_problem,
    override_key,
)
from hugnc.schema import Problem, Signature, target_signature, unknown_key_problem, validate_config

#: Exit code of a rejected command line (argparse's, for usage errors).
EXIT_CODE = 2
#: Set to 1 to skip the check.
SKIP_ENV = "HUGNC_SKIP_CONFIG_CHECK"
#: Problems printed at most; the rest are counted.
MAX_PROBLEMS = 8
_OUTPUT_DIR_PLACEHOLDER = "<run directory>"
_HINT = "hugnc: nothing was run or written; see README.md, 'Errors'."

#: Composes a config from overrides (the run's primary config, or a sweep's master config).
Compose = Callable[[list[str]], DictConfig]


class ConfigCheckError(BaseException):
    """The command line's config is invalid; ``str()`` is the whole message for the user.

    A ``BaseException``, like ``SystemExit``: Hydra turns an ``Exception`` raised in a callback
    into a warning and goes on."""


@dataclass
class _Job:
    """One job of a sweep: its overrides, and a ``label`` naming it in messages."""

    overrides: list[str]
    label: str = ""


def _first_lines(message: str) -> str:
    """Hydra's multi-line message as one line, without the config search path listing."""
    lines = []
    for line in message.splitlines():
        if line.startswith("Config search path"):
            break
        if line.strip():
            lines.append(line.strip())
    return "; ".join(lines)


def _parser() -> OverridesParser:
    loader = (
        GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    )
    return OverridesParser.create(config_loader=loader)


def task_overrides(cfg: DictConfig) -> list[str]:
    """The command line's overrides of a composed config, as typed (``${...}`` unresolved)."""
    overrides = OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)
    return [str(o) for o in overrides] if isinstance(overrides, list) else []


def added_keys(cfg: DictConfig, overrides: Sequence[str]) -> list[str]:
    """Value keys the overrides add with ``+`` (group appends such as ``+foo=bar`` of a config
    group are not keys)."""
    choices = OmegaConf.select(cfg, "hydra.runtime.choices") or {}
    return [
        o.key_or_group
        for o in _parser().parse_overrides(list(overrides))
        if o.is_add() and o.package is None and o.key_or_group not in choices
    ]


def sweep_jobs(master: DictConfig) -> list[_Job]:
    """The jobs of a basic sweep, as Hydra's basic sweeper launches them: ``hydra.sweeper.params``
    and the command line's values, one list per key (the command line's replaces a param's, in
    the param's place), and their product in that order."""
    params = OmegaConf.select(master, "hydra.sweeper.params") or {}
    arguments = [f"{key}={value}" for key, value in params.items()]
    arguments += task_overrides(master)
    values: dict[str, list[str]] = {}
    swept = set()
    for override in _parser().parse_overrides(arguments):
        key = override.get_key_element()
        if override.is_sweep_override():
            values[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
            swept.add(key)
        else:
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
            swept.discard(key)
    combinations = list(itertools.product(*values.values()))
    jobs = []
    for number, job in enumerate(combinations):
        shown = " ".join(o for o in job if o.partition("=")[0] in swept)
        jobs.append(_Job(list(job), f"sweep job {number + 1} of {len(combinations)} ({shown})"))
    return jobs


#: hugnc's Bayesian search (``hydra/sweeper=optuna``), whose space the check can read.
OPTUNA_SWEEPER = "hydra_plugins.hugnc.optuna_sweeper.OptunaSweeper"


def search_jobs(master: DictConfig) -> list[_Job]:
    """The jobs of an Optuna search that can be known before it runs: the two corners of its
    space (every searched value at its lower, then its upper bound). The values in between are
    sampled later; a range a constructor refuses shows at one of its ends."""
    from hydra_plugins.hugnc.optuna_sweeper import search_space

    params = OmegaConf.select(master, "hydra.sweeper.params") or {}
    space = search_space(params, task_overrides(master), _parser())
    return [_Job(overrides, label) for label, overrides in space.bounds()]


def _origin(problem: Problem, cfg: DictConfig | None, overrides: Sequence[str]) -> str:
    """Where the offending value came from: the command line or a group option's yaml file."""
    given = {override_key(o) for o in overrides}
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


def _composition_problem(error: Exception, overrides: Sequence[str], compose: Compose) -> str:
    """A Hydra/OmegaConf composition error as one line naming the key and what is allowed."""

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
        return _not_in_config(full_key, overrides, compose)
    if message.startswith("Config group override must be"):
        nulls = [o for o in overrides if o.endswith("=null")]
        if nulls:
            group = override_key(nulls[0])
            return f"{nulls[0]}: a config group needs one of its options (to drop it: ~{group})"
    removed = [override_key(o) for o in overrides if o.startswith("~")]
    needed = [group for group in removed if f"${{{group}}}" in message]
    if needed:  # the defaults list names the removed group (e.g. ${loss})
        return f"{needed[0]}: missing: the run builds an object from it (drop ~{needed[0]})"
    if message.startswith("Ambiguous value"):
        argument = message.split("'", 2)[1] if message.count("'") >= 2 else "key=a,b"
        return (
            f"{argument}: a comma-separated value is a sweep; add -m (--multirun) to run one job "
            "per value, or write key=[a,b] for a list"
        )
    return _first_lines(message) or type(error).__name__


def _not_in_config(full_key: str, overrides: Sequence[str], compose: Compose) -> str:
    """``key=value`` for a key the composed config lacks (Hydra's "Could not override").

    The config without that override says what the node has. A key its ``_target_`` accepts is
    only missing from the yaml (``+key=value`` adds it); anything else is an unknown key.
    """
    given = [o for o in overrides if override_key(o) == full_key]
    rest = [o for o in overrides if o not in given]
    parent_key, _, name = full_key.rpartition(".")
    try:
        cfg = compose(rest)
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


def combination_problems(cfg: DictConfig) -> list[Problem]:
    """Values that are valid alone but not together, checked by the modules that use them."""
    from hugnc.launching import ray_resources_problem, slurm_devices_problem
    from hugnc.train import compile_sync_batchnorm_problem

    checks = (slurm_devices_problem, ray_resources_problem, compile_sync_batchnorm_problem)
    return [problem for check in checks if (problem := check(cfg)) is not None]


def _output_directory(cfg: DictConfig, multirun: bool) -> str:
    """``hydra.run.dir`` (or ``hydra.sweep.dir``), resolved as Hydra will resolve it."""
    return _with_hydra_config(cfg, lambda c: c.hydra.sweep.dir if multirun else c.hydra.run.dir)


def _check_output_location(cfg: DictConfig, multirun: bool) -> None:
    problem = output_location_problem(_output_directory(cfg, multirun))
    if problem:
        raise ConfigCheckError(
            f"hugnc: {problem}. Choose another location: paths.log_dir=DIR (or HUGNC_LOG_DIR), "
            f"or hydra.{'sweep' if multirun else 'run'}.dir=DIR"
        )


def _check_checkpoint(cfg: DictConfig) -> None:
    """``ckpt_path`` names a checkpoint; without one (a new run), the run directory holds no
    earlier run. DDP ranks and SLURM tasks after the first (``hydra.output_subdir=null``) join
    their job's directory."""
    run_dir = _output_directory(cfg, multirun=False)
    if cfg.get("ckpt_path") is not None:
        problem = checkpoint_problem(cfg.get("ckpt_path"), run_dir)
    elif OmegaConf.select(cfg, "hydra.output_subdir") is not None:
        problem = earlier_run_problem(run_dir)
    else:
        problem = None
    if problem:
        raise ConfigCheckError(f"hugnc: {problem}")


def _report(lines: list[str]) -> str:
    shown = lines[:MAX_PROBLEMS]
    if len(lines) > MAX_PROBLEMS:
        shown.append(f"... and {len(lines) - MAX_PROBLEMS} more problems")
    return "\n".join([f"hugnc: invalid config: {line}" for line in shown] + [_HINT])


def _with_hydra_config(cfg: DictConfig, read: Callable[[DictConfig], Any]) -> Any:
    """``read(cfg)`` with Hydra's runtime config set to ``cfg``, so ``${hydra:...}`` resolves
    (Hydra sets it only when the job starts)."""
    instance = HydraConfig.instance()
    saved = instance.cfg
    instance.set_config(cfg)
    try:
        return read(cfg)
    finally:
        instance.cfg = saved


def _problems(cfg: DictConfig, run_keys: type, overrides: Sequence[str]) -> list[str]:
    """Every problem of one job's config, as lines with their origin."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = _OUTPUT_DIR_PLACEHOLDER
    added = added_keys(cfg, overrides)
    found = _with_hydra_config(cfg, lambda c: validate_config(c, run_keys, added))
    lines = [f"{p}{_origin(p, cfg, overrides)}" for p in [*combination_problems(cfg), *found]]
    return lines or _with_hydra_config(cfg, _machine_problems)


def _machine_problems(cfg: DictConfig) -> list[str]:
    """What this machine lacks for a valid config (checked once the values are valid): a GPU it
    asks for, data files neither there nor fetchable, a split or a global batch the dataset or
    the ranks cannot make."""
    from hugnc.data import availability_problem, global_batch_problem
    from hugnc.launching import device_problem

    checks = [device_problem(cfg)]
    if isinstance(cfg.get("data"), DictConfig):
        checks += [global_batch_problem(cfg), availability_problem(cfg.data)]
    return [problem for problem in checks if problem]


def _check_jobs(master: DictConfig, jobs: list[_Job], run_keys: type) -> None:
    """Check every job of a sweep; a problem shared by all jobs is reported once, unlabelled."""
    loader = GlobalHydra.instance().config_loader()
    found: dict[str, list[_Job]] = {}
    for job in jobs:
        try:
            cfg = loader.load_sweep_config(master, job.overrides)
            lines = _problems(cfg, run_keys, job.overrides)
        except (HydraException, OmegaConfBaseException, ValueError) as error:
            lines = [
                _composition_problem(
                    error, job.overrides, lambda o: loader.load_sweep_config(master, o)
                )
            ]
        for line in lines:
            found.setdefault(line, []).append(job)
    lines = []
    for line, bad_jobs in found.items():
        if len(bad_jobs) == len(jobs) and len(jobs) > 1:
            lines.append(f"every sweep job: {line}")
        elif len(jobs) == 1:
            lines.append(line)
        else:
            more = f" and {len(bad_jobs) - 1} more" if len(bad_jobs) > 1 else ""
            lines.append(f"{bad_jobs[0].label}{more}: {line}")
    if lines:
        raise ConfigCheckError(_report(lines))


class ConfigCheck(Callback):
    """The Hydra callback that checks a run's (or every sweep job's) config before Hydra makes
    its directory; a bad config raises :class:`ConfigCheckError` (see :func:`run_checked`).

    Args:
        run_keys: dotted name of the entry point's ``TypedDict`` of its own top-level keys.
        dry_run: stop after a successful check (exit 0), running nothing.
    """

    def __init__(self, run_keys: str, dry_run: bool = False) -> None:
        self.run_keys = run_keys
        self.dry_run = dry_run

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        def check() -> None:
            lines = _problems(config, get_object(self.run_keys), task_overrides(config))
            if lines:
                raise ConfigCheckError(_report(lines))
            _check_output_location(config, multirun=False)
            _check_checkpoint(config)

        self._run(check, "the config")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        def check() -> None:
            sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_"))
            if sweeper.endswith("BasicSweeper"):
                problem = earlier_sweep_problem(_output_directory(config, multirun=True))
                if problem:
                    raise ConfigCheckError(f"hugnc: {problem}")
                jobs = sweep_jobs(config)
            elif sweeper == OPTUNA_SWEEPER:
                jobs = search_jobs(config)
            else:  # another sweeper chooses the values itself: only the base config is known
                jobs = [_Job(task_overrides(config), "the sweep's base config")]
            _check_jobs(config, jobs, get_object(self.run_keys))
            _check_output_location(config, multirun=True)

        self._run(check, "every job's config")

    def _run(self, check: Callable[[], None], what: str) -> None:
        if os.environ.get(SKIP_ENV, "") not in ("", "0"):
            return
        try:
            check()
        except Exception as error:
            # A failure of the check itself must not stop a run that may well be valid.
            reason = str(error).splitlines()[0] if str(error) else ""
            print(
                f"hugnc: warning: config check skipped ({type(error).__name__}: {reason})",
                file=sys.stderr,
            )
            return
        if self.dry_run:
            print(f"hugnc: {what} passed the check (dry_run: nothing was run or written)")
            sys.exit(0)


def _raised_while_composing(error: BaseException) -> bool:
    """Whether ``error`` came from Hydra composing the config (not from a task function)."""
    frames = [frame.f_code.co_name for frame, _ in traceback.walk_tb(error.__traceback__)]
    return "compose_config" in frames and "run_job" not in frames


def _call_hydra_main(hydra_main: Callable[[], Any], config_name: str, argv: list[str]) -> Any:
    """Call a ``@hydra.main`` function on ``argv``, raising :class:`ConfigCheckError` for a
    config Hydra cannot compose."""
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    # Ranks and sweep jobs started from here inherit whether the user asked for tracebacks.
    os.environ.setdefault(DEBUG_ENV, "1" if saved_env == "1" else "0")
    # Hydra prints its errors itself (a wall, exit 1) unless HYDRA_FULL_ERROR is set: set, they
    # come here and become one line.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = [saved_argv[0], *argv]
    try:
        return hydra_main()
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        if not _raised_while_composing(error):
            raise
        multirun = "-m" in argv or "--multirun" in argv

        def compose(overrides: list[str]) -> DictConfig:
            mode = RunMode.MULTIRUN if multirun else RunMode.RUN
            with initialize_config_dir(str(config_dir()), version_base="1.3"):
                loader = GlobalHydra.instance().config_loader()
                return loader.load_configuration(config_name, overrides, run_mode=mode)

        overrides = [a for a in argv if not a.startswith("-")]
        raise ConfigCheckError(
            _report([_composition_problem(error, overrides, compose)])
        ) from error
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
        GlobalHydra.instance().clear()


def run_checked(hydra_main: Callable[[], Any], config_name: str) -> Any:
    """Run an entry point's ``@hydra.main`` function on ``sys.argv``.

    A bad config is one line per problem on stderr and exit code :data:`EXIT_CODE`, before
    anything is written; an error the user can fix (data, disk, a value a constructor refuses,
    Ctrl-C: :func:`hugnc.errors.user_facing`) is one line and its exit code; a bug keeps its
    traceback, and ``HUGNC_DEBUG=1`` shows the traceback of anything.
    """
    try:
        return _call_hydra_main(hydra_main, config_name, sys.argv[1:])
    except ConfigCheckError as error:
        if os.environ.get(DEBUG_ENV) == "1":
            raise
        print(error, file=sys.stderr)
        sys.exit(EXIT_CODE)
    except (Exception, KeyboardInterrupt) as error:
        sys.exit(report(error, "hugnc"))


def check_command_line(argv: Sequence[str], config_name: str = "train") -> None:
    """Check the config ``argv`` describes (every job of a sweep) as the entry point would, and
    run nothing: raise :class:`ConfigCheckError` if it is invalid."""
    import hydra

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)
    def nothing(cfg: DictConfig) -> None:  # reached only with the check switched off
        return None

    try:
        _call_hydra_main(nothing, config_name, [*argv, "hydra.callbacks.config_check.dry_run=true"])
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
