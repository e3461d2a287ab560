"""``hydra/sweeper=optuna``: a Bayesian hyperparameter search (Optuna, TPE by default).

A thin Hydra sweeper over current Optuna's ask-and-tell interface. hydra-optuna-sweeper 1.3
pins optuna 2.10, whose SQLite storage breaks under SQLAlchemy 2; this one needs neither: the
study is an Optuna journal file in the sweep directory (:func:`hugnc.run_dir.study_file`), so a
search killed at any point continues when the same command is run again with
``hydra.sweep.dir=<that directory>``, and ``hydra.sweeper.n_trials`` larger than before extends
it. A command with another search space, other fixed overrides or the other direction is
refused before anything is written (:class:`hugnc.run_dir.ResumeError`).

Each trial is a normal job of the configured ``hydra/launcher`` (``<sweep>/<trial number>/``,
with ``.hydra/`` and ``metrics.json``); trials run in batches of ``n_jobs``, so a parallel launcher
runs a batch concurrently. The task function returns the value to optimize (``python -m hugnc``:
the final value of ``optimized_metric``); a job that raises, or returns ``None`` or a non-finite
value, is told to Optuna as a failed trial and the search goes on.

The search space is ``hydra.sweeper.params`` plus the command line's sweep overrides, in Hydra's
override grammar (https://hydra.cc/docs/advanced/override_grammar/extended/), as in
hydra-optuna-sweeper:

=================================  =============================================
``interval(0.01, 1.0)``            float, uniform
``tag(log, interval(0.01, 1.0))``  float, log-uniform
``tag(int, interval(1, 64))``      integer (``tag(int, log, ...)``: log-uniform)
``range(1, 10, 2)``                integer with a step, ``stop`` excluded (1, 3, ..., 9)
``a,b,c`` / ``choice(a, b, c)``    categorical
``value``                          fixed: passed to every trial unchanged
=================================  =============================================

A key on the command line wins over the same key in ``params``. Hydra imports every module of
``hydra_plugins`` at start, so Optuna is imported only when a search runs.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import BaseDistribution

log = logging.getLogger(__name__)

#: Study-level user attribute: numbers of the trials a killed search left running (told FAIL on
#: resume and run again; they do not count towards ``n_trials``).
INTERRUPTED_ATTR = "interrupted_trials"
#: Trial user attribute: why a trial failed (the job's error, or its metric's value).
ERROR_ATTR = "error"
#: Study-level user attribute: what the study searches (:meth:`SearchSpace.identity`), so that a
#: command with another space or other fixed overrides is refused instead of mixing two searches
#: (and their best trial) in one study.
SEARCH_ATTR = "search"
_TAGS = {"log", "int"}


class SearchSpace:
    """What a search varies (Optuna distributions by override key) and what it passes unchanged.

    A plain class, not a dataclass: Hydra's plugin scan executes this module without entering
    it in ``sys.modules``, where ``@dataclass`` looks up string annotations.

    Attributes:
        distributions: override key (``loss.alpha``, ``+foo``) -> its Optuna distribution.
        fixed: overrides given to every trial as they are (``key=value``).
    """

    def __init__(self) -> None:
        self.distributions: dict[str, BaseDistribution] = {}
        self.fixed: list[str] = []

    def trial_overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, then ``key=value`` for each sampled value."""
        return [*self.fixed, *(f"{key}={_override_value(v)}" for key, v in params.items())]

    def identity(self) -> dict[str, Any]:
        """What makes two runs of a sweep directory the same search (JSON, for the study): the
        searched keys with their ranges, and the fixed overrides by key."""
        from optuna.distributions import distribution_to_json

        from hugnc.run_dir import override_key

        return {
            "space": {key: distribution_to_json(d) for key, d in self.distributions.items()},
            "fixed": {override_key(line): line for line in self.fixed},
        }

    def bounds(self) -> list[tuple[str, list[str]]]:
        """Two labelled corners of the space (every value at its lower end, then at its upper
        end; a choice's first and last option): configs the config check can compose before the
        search runs, which catch a range outside what a constructor accepts."""
        from optuna.distributions import CategoricalDistribution

        corners: list[tuple[str, list[str]]] = []
        for label, end in (("lower", 0), ("upper", -1)):
            values: dict[str, Any] = {}
            for key, dist in self.distributions.items():
                if isinstance(dist, CategoricalDistribution):
                    values[key] = dist.choices[end]
                else:
                    values[key] = (dist.low, dist.high)[end]  # type: ignore[attr-defined]
            shown = " ".join(f"{k}={_override_value(v)}" for k, v in values.items())
            corners.append(
                (f"the search space's {label} bounds ({shown})", self.trial_overrides(values))
            )
        return corners


def _as_override(key: str, dist_json: str) -> str:
    """A stored distribution as the override that describes it (``key=interval(a, b)``)."""
    from optuna.distributions import FloatDistribution, IntDistribution, json_to_distribution

    dist = json_to_distribution(dist_json)
    if not isinstance(dist, IntDistribution | FloatDistribution):
        return f"{key}={','.join(map(str, dist.choices))}"  # type: ignore[attr-defined]
    if isinstance(dist, IntDistribution) and dist.step != 1:
        return f"{key}=range({dist.low}, {dist.high + dist.step}, {dist.step})"
    tags = [
        tag for tag, on in (("int", isinstance(dist, IntDistribution)), ("log", dist.log)) if on
    ]
    interval = f"interval({dist.low}, {dist.high})"
    return f"{key}=tag({', '.join(tags)}, {interval})" if tags else f"{key}={interval}"


def search_differences(study_search: Mapping[str, Any], search: Mapping[str, Any]) -> list[str]:
    """How ``search`` (this command's :meth:`SearchSpace.identity`) differs from the study's,
    one ``what here (the study: what there)`` per key."""
    differences = []
    for part, show in (("fixed", lambda key, line: line), ("space", _as_override)):
        there, here = study_search.get(part, {}), search.get(part, {})
        for key in [*there, *(k for k in here if k not in there)]:
            if there.get(key) != here.get(key):
                now = show(key, here[key]) if key in here else f"no {key}"
                before = show(key, there[key]) if key in there else f"no {key}"
                differences.append(f"{now} (the study: {before})")
    return differences


def _override_value(value: Any) -> str:
    # repr keeps every digit of a float (str would too, but not for numpy floats).
    return repr(float(value)) if isinstance(value, float) else str(value)


def distribution(override: Override) -> BaseDistribution | None:
    """The Optuna distribution that a sweep override describes, ``None`` for a fixed value.

    Raises:
        HydraException: a sweep Optuna cannot sample (a float ``range``, an unknown tag, ``log``
            on a choice, an empty interval).
    """
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    if not override.is_sweep_override():
        return None
    key, sweep = override.get_key_element(), override.value()
    tags = set(getattr(sweep, "tags", set()))
    if tags - _TAGS:
        raise HydraException(f"{key}: unknown tag(s) {sorted(tags - _TAGS)}; known: log, int")
    if isinstance(sweep, ChoiceSweep):
        if tags:
            raise HydraException(f"{key}: a choice takes no tags (log/int apply to intervals)")
        return CategoricalDistribution(list(override.sweep_string_iterator()))
    if isinstance(sweep, RangeSweep):
        start, stop, step = sweep.start, sweep.stop, sweep.step
        if not all(isinstance(x, int) for x in (start, stop, step)):
            raise HydraException(
                f"{key}: range() of floats; use interval(low, high) for a float search"
            )
        assert isinstance(start, int) and isinstance(stop, int) and isinstance(step, int)
        values = range(start, stop, step)
        if step <= 0 or not values:
            raise HydraException(f"{key}: empty range({start}, {stop}, {step})")
        return IntDistribution(values[0], values[-1], step=step)
    if isinstance(sweep, IntervalSweep):
        assert sweep.start is not None and sweep.end is not None
        low, high, log_scale = sweep.start, sweep.end, "log" in tags
        if not low < high or (log_scale and low <= 0):
            raise HydraException(
                f"{key}: interval({low}, {high}) needs low < high (and low > 0 on a log scale)"
            )
        if "int" in tags:
            return IntDistribution(int(low), int(high), log=log_scale)
        return FloatDistribution(float(low), float(high), log=log_scale)
    raise HydraException(f"{key}: cannot search over {override.input_line!r}")


def search_space(
    params: Mapping[str, Any] | None, arguments: Iterable[str], parser: OverridesParser
) -> SearchSpace:
    """The search space of ``hydra.sweeper.params`` and the command line's ``arguments``.

    A key given on the command line replaces the same key of ``params``.
    """
    from_params = [f"{key}={value}" for key, value in (params or {}).items()]
    overrides: dict[str, Override] = {}
    for override in parser.parse_overrides([*from_params, *arguments]):
        overrides[override.get_key_element()] = override
    space = SearchSpace()
    for key, override in overrides.items():
        dist = distribution(override)
        if dist is None:
            # As typed: a deletion stays `~key` (Hydra would write `~key=null`).
            space.fixed.append(
                override.input_line or f"{key}={override.get_value_element_as_str()}"
            )
        else:
            space.distributions[key] = dist
    return space


def journal_storage(path: Path) -> optuna.storages.BaseStorage:
    """An Optuna journal storage in the file ``path`` (one line per event; no database, and
    safe against a kill between two writes)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Fail the trials that a killed search left running and queue their parameters again.

    Only one process runs a study at a time, so a trial still RUNNING when the search starts
    belongs to a process that is gone. It is marked FAIL and listed in the study's
    :data:`INTERRUPTED_ATTR` (it does not count towards ``n_trials``), and its point runs again.
    Returns the numbers of the trials recovered.
    """
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"rerun_of": trial.number})
    if stale:
        known = list(study.user_attrs.get(INTERRUPTED_ATTR, []))
        study.set_user_attr(INTERRUPTED_ATTR, known + [t.number for t in stale])
    return [t.number for t in stale]


def finished_trials(study: optuna.Study) -> int:
    """Trials that ran to an outcome (completed, or failed in their job): what ``n_trials``
    counts. Trials interrupted by a kill are left out (their points run again)."""
    from optuna.trial import TrialState

    interrupted = set(study.user_attrs.get(INTERRUPTED_ATTR, []))
    ended = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)
    trials = study.get_trials(deepcopy=False, states=ended)
    return sum(t.number not in interrupted for t in trials)


def job_outcome(result: JobReturn) -> tuple[float | None, str]:
    """A trial job's objective value, or ``None`` and why it failed (one line)."""
    try:
        value = result.return_value
    except Exception as error:  # the job's own exception, re-raised by JobReturn
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return None, f"{type(error).__name__}: {first}".rstrip(": ")
    if value is None:
        return None, "the job returned no value (optimized_metric not among its final metrics)"
    value = float(value)
    if not math.isfinite(value):
        return None, f"the optimized metric is {value}"
    return value, ""


class OptunaSweeper(Sweeper):
    """Hydra sweeper: an Optuna study, ask/tell, trials launched in batches of ``n_jobs``.

    Args:
        n_trials: trials the study should have finished when the search ends (including those of
            earlier runs of the same sweep directory; failed trials count, killed ones do not).
        n_jobs: trials launched together (one launcher batch).
        direction: ``maximize`` or ``minimize`` the task function's return value.
        sampler: config of the Optuna sampler (``_target_`` and its arguments). Its ``seed``, if
            any, is offset by the number of trials already in the study, so that a continued
            search does not draw its first random points again.
        params: the search space (module docstring), ``key -> override value``.
        study_name: name of a new study; ``None``: the sweep directory's name. A journal that
            holds one study is continued whatever its name.
        metric_name: what the objective is called in the study and the logs (``python -m hugnc``
            passes ``optimized_metric``).
    """

    def __init__(
        self,
        n_trials: int,
        n_jobs: int = 1,
        direction: Literal["maximize", "minimize"] = "maximize",
        sampler: DictConfig | None = None,
        params: DictConfig | None = None,
        study_name: str | None = None,
        metric_name: str | None = None,
    ) -> None:
        if n_trials < 1 or n_jobs < 1:
            raise HydraException(f"n_trials ({n_trials}) and n_jobs ({n_jobs}) must be >= 1")
        if direction not in ("maximize", "minimize"):
            raise HydraException(f"direction must be maximize or minimize, not {direction!r}")
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.direction = direction
        self.sampler_config = sampler
        self.params: dict[str, Any] = (
            cast(dict[str, Any], OmegaConf.to_container(params, resolve=True)) if params else {}
        )
        self.study_name = study_name
        self.metric_name = metric_name
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def open_study(self, sweep_dir: Path, space: SearchSpace) -> optuna.Study:
        """The study of ``sweep_dir`` (created on the first run), with this config's sampler.

        Raises:
            ResumeError: the directory's study is another search (another space, other fixed
                overrides, the other direction); nothing is written then.
        """
        import optuna

        from hugnc.run_dir import ResumeError, multirun_file, study_file

        search = space.identity()
        storage = journal_storage(study_file(sweep_dir))
        existing = optuna.get_all_study_names(storage)
        name = existing[0] if len(existing) == 1 else (self.study_name or sweep_dir.name)
        if name in existing:
            study = optuna.load_study(storage=storage, study_name=name)
            differences = search_differences(study.user_attrs.get(SEARCH_ATTR, search), search)
            if study.direction.name.lower() != self.direction:
                differences.append(
                    f"hydra.sweeper.direction={self.direction} (the study: "
                    f"{study.direction.name.lower()})"
                )
            if differences:
                raise ResumeError(
                    f"{sweep_dir} holds another search's Optuna study; this command has "
                    f"{'; '.join(differences)}. Continue it with its own command (the "
                    f"overrides in {multirun_file(sweep_dir)}) or choose a new hydra.sweep.dir"
                )
        else:
            study = optuna.create_study(storage=storage, study_name=name, direction=self.direction)
        if SEARCH_ATTR not in study.user_attrs:
            study.set_user_attr(SEARCH_ATTR, search)
        if self.metric_name and not study.metric_names:
            with warnings.catch_warnings():
                # "Experimental" since 3.2 and unchanged since; the study keeps the metric's name
                # for hugnc-report.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([self.metric_name])
        study.sampler = self._sampler(len(study.get_trials(deepcopy=False)))
        return study

    def _sampler(self, trials_so_far: int) -> optuna.samplers.BaseSampler:
        from hydra.utils import instantiate
        from optuna.samplers import TPESampler

        if self.sampler_config is None:
            return TPESampler(seed=trials_so_far)
        seed = self.sampler_config.get("seed")
        extra = {"seed": seed + trials_so_far} if isinstance(seed, int) else {}
        return instantiate(self.sampler_config, **extra)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Run trials until the study has ``n_trials`` finished ones; log the best."""
        from optuna.trial import TrialState

        from hugnc.run_dir import multirun_file

        assert self.config is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space = search_space(self.params, arguments, parser)
        if not space.distributions:
            raise HydraException(
                "hydra/sweeper=optuna has nothing to search: give hydra.sweeper.params (e.g. "
                "hparams_search=hug_alpha_beta) or a sweep on the command line"
            )
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        study = self.open_study(sweep_dir, space)  # before anything is written: may refuse
        OmegaConf.save(self.config, multirun_file(sweep_dir))  # what BasicSweeper saves
        rerun = recover_interrupted(study)
        if rerun:
            log.warning(f"trials {rerun} were interrupted by a kill; their points run again")
        done = finished_trials(study)
        log.info(
            f"Optuna study {study.study_name!r} ({sweep_dir}): {done} of {self.n_trials} trials "
            f"finished; searching {', '.join(space.distributions)}"
        )
        returns: list[Sequence[JobReturn]] = []
        while done < self.n_trials:
            trials = [
                study.ask(space.distributions)
                for _ in range(min(self.n_jobs, self.n_trials - done))
            ]
            first = trials[0].number
            if [t.number for t in trials] != list(range(first, first + len(trials))):
                # Job directories are named by trial number: only one process may ask.
                raise HydraException(
                    f"trials {[t.number for t in trials]} are not consecutive: is another "
                    f"process running the search in {sweep_dir}?"
                )
            batch = [space.trial_overrides(t.params) for t in trials]
            self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=first)
            for trial, result in zip(trials, results, strict=True):
                value, error = job_outcome(result)
                if value is None:
                    trial.set_user_attr(ERROR_ATTR, error)
                    study.tell(trial, state=TrialState.FAIL)
                    log.warning(f"trial {trial.number} failed: {error}")
                else:
                    study.tell(trial, value)
            done += len(trials)
            returns.append(results)
        self._log_best(study, sweep_dir)
        return returns

    def _log_best(self, study: optuna.Study, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not completed:
            failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            first = next(
                (t.user_attrs[ERROR_ATTR] for t in failed if ERROR_ATTR in t.user_attrs), ""
            )
            raise HydraException(f"every trial of the search failed (first error: {first})")
        best = study.best_trial
        metric = self.metric_name or "value"
        params = " ".join(f"{k}={_override_value(v)}" for k, v in best.params.items())
        log.info(
            f"best trial {best.number} of {len(completed)} completed: {metric} = "
            f"{best.value:.4f} ({params}); table and plot: hugnc-report {sweep_dir}"
        )
