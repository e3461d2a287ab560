"""`hydra/sweeper=optuna` (hydra_plugins/hugnc/optuna_sweeper.py): the search-space grammar, the
ask/tell loop (failed trials, resuming, job numbers) and, end to end, `hparams_search=` on real
Fashion-MNIST continued in its sweep directory and read by `hugnc-report`."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from helpers.cli_runs import run_hugnc
from helpers.outputs import most_jobs_at_once
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import HydraException
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from hugnc import run_dir
from hugnc.tools.report import collect_local, main, read_search
from hydra_plugins.hugnc.optuna_sweeper import (
    INTERRUPTED_ATTR,
    OptunaSweeper,
    finished_trials,
    job_outcome,
    journal_storage,
    recover_interrupted,
    search_space,
)

PARSER = OverridesParser.create()


def test_search_space_grammar() -> None:
    space = search_space(
        {
            "loss.alpha": "tag(log, interval(0.015, 1.5))",
            "loss.beta": "interval(0, 2)",
            "model.feature_dim": "tag(int, log, interval(2, 64))",
            "seed": "range(0, 10, 3)",
            "optimizer": "sgd,adamw",
            "trainer.max_epochs": "3",
        },
        ["loss=mgd_hug", "~callbacks.neural_collapse", "seed=choice(1, 2)"],
        PARSER,
    )
    assert space.distributions == {
        "loss.alpha": FloatDistribution(0.015, 1.5, log=True),
        "loss.beta": FloatDistribution(0.0, 2.0),
        "model.feature_dim": IntDistribution(2, 64, log=True),
        "seed": CategoricalDistribution(["1", "2"]),  # the command line wins over params
        "optimizer": CategoricalDistribution(["sgd", "adamw"]),
    }
    # Fixed values as typed; a deletion stays a deletion.
    assert space.fixed == ["trainer.max_epochs=3", "loss=mgd_hug", "~callbacks.neural_collapse"]
    assert space.trial_overrides({"loss.alpha": 0.1234567891234, "seed": "2"})[-2:] == [
        "loss.alpha=0.1234567891234",
        "seed=2",
    ]


def test_search_space_integer_range_and_bounds() -> None:
    space = search_space(
        {"seed": "range(1, 10, 2)", "loss.beta": "tag(log, interval(0.01, 10))"}, [], PARSER
    )
    assert space.distributions["seed"] == IntDistribution(1, 9, step=2)  # stop excluded
    (lower_label, lower), (upper_label, upper) = space.bounds()
    assert lower == ["seed=1", "loss.beta=0.01"] and upper == ["seed=9", "loss.beta=10.0"]
    assert "lower bounds (seed=1 loss.beta=0.01)" in lower_label and "upper" in upper_label


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("range(0.1, 1.0, 0.1)", "use interval"),
        ("tag(log, interval(0, 1))", "low > 0 on a log scale"),
        ("interval(1, 1)", "low < high"),
        ("tag(log, choice(a, b))", "a choice takes no tags"),
        ("tag(cube, interval(1, 2))", "unknown tag"),
        ("range(5, 1)", "empty range"),
    ],
)
def test_search_space_refuses_what_optuna_cannot_sample(value: str, message: str) -> None:
    with pytest.raises(HydraException, match=message):
        search_space({"loss.alpha": value}, [], PARSER)


def _job(status: JobStatus, value: object) -> JobReturn:
    job = JobReturn(overrides=["loss.alpha=1"], status=status)
    job.return_value = value
    return job


def test_job_outcome_fails_exceptions_missing_and_non_finite_values() -> None:
    assert job_outcome(_job(JobStatus.COMPLETED, 0.75)) == (0.75, "")
    assert job_outcome(_job(JobStatus.FAILED, ValueError("alpha must be >= 0\nmore"))) == (
        None,
        "ValueError: alpha must be >= 0",
    )
    value, why = job_outcome(_job(JobStatus.COMPLETED, float("nan")))
    assert value is None and why == "the optimized metric is nan"
    assert job_outcome(_job(JobStatus.COMPLETED, None))[1].startswith("the job returned no value")


def test_interrupted_trials_run_again_and_do_not_count(tmp_path: Path) -> None:
    storage = journal_storage(tmp_path / "study.journal")
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    done = study.ask({"x": FloatDistribution(0.0, 1.0)})
    study.tell(done, 0.5)
    killed = study.ask({"x": FloatDistribution(0.0, 1.0)})  # its process was killed
    assert finished_trials(study) == 1
    assert recover_interrupted(study) == [killed.number]
    assert study.get_trials()[killed.number].state == TrialState.FAIL
    assert study.user_attrs[INTERRUPTED_ATTR] == [killed.number]
    assert finished_trials(study) == 1
    rerun = study.ask({"x": FloatDistribution(0.0, 1.0)})  # the queued point comes first
    assert rerun.params == killed.params and rerun.number == killed.number + 1
    assert recover_interrupted(study) == [rerun.number]  # a second kill: listed too
    assert study.user_attrs[INTERRUPTED_ATTR] == [killed.number, rerun.number]


class _FakeLauncher:
    """Returns x's value, except job 1 (raises) and job 4 (NaN); records the job numbers."""

    def __init__(self) -> None:
        self.job_numbers: list[int] = []

    def launch(self, batch: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        results = []
        for number, overrides in enumerate(batch, start=initial_job_idx):
            self.job_numbers.append(number)
            x = float(dict(o.split("=", 1) for o in overrides)["x"])
            if number == 1:
                results.append(_job(JobStatus.FAILED, RuntimeError("diverged")))
            else:
                results.append(_job(JobStatus.COMPLETED, math.nan if number == 4 else x))
        return results


def _sweeper(tmp_path: Path, n_trials: int, n_jobs: int) -> tuple[OptunaSweeper, _FakeLauncher]:
    sweeper = OptunaSweeper(
        n_trials=n_trials,
        n_jobs=n_jobs,
        sampler=OmegaConf.create({"_target_": "optuna.samplers.RandomSampler", "seed": 0}),
        params=OmegaConf.create({"x": "interval(0, 1)"}),
        metric_name="val/acc",
    )
    launcher = _FakeLauncher()
    sweeper.launcher = launcher
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    sweeper.hydra_context = SimpleNamespace(config_loader=None)  # type: ignore[assignment]
    sweeper.validate_batch_is_legal = lambda batch: None  # type: ignore[method-assign]
    return sweeper, launcher


def test_sweep_tells_failures_continues_and_extends(tmp_path: Path) -> None:
    sweeper, launcher = _sweeper(tmp_path, n_trials=7, n_jobs=3)
    batches = sweeper.sweep(["fixed=1"])
    assert [len(b) for b in batches] == [3, 3, 1] and launcher.job_numbers == list(range(7))
    study = optuna.load_study(
        study_name="sweep", storage=journal_storage(run_dir.study_file(tmp_path / "sweep"))
    )
    trials = study.get_trials()
    assert study.metric_names == ["val/acc"]
    failed = {t.number: t.user_attrs["error"] for t in trials if t.state == TrialState.FAIL}
    # Neither the exception nor the NaN stopped the search.
    assert failed == {1: "RuntimeError: diverged", 4: "the optimized metric is nan"}
    assert len(trials) == 7 and finished_trials(study) == 7

    again, launcher = _sweeper(tmp_path, n_trials=7, n_jobs=3)
    assert again.sweep(["fixed=1"]) == [] and launcher.job_numbers == []  # nothing left
    extended, launcher = _sweeper(tmp_path, n_trials=10, n_jobs=3)
    extended.sweep(["fixed=1"])
    assert launcher.job_numbers == [7, 8, 9]  # new directories, none overwritten
    new = [t.params["x"] for t in study.get_trials()[7:]]
    # The seed is offset by the trials already there: not the first run's points again.
    assert not set(new) & {t.params["x"] for t in trials}


@pytest.mark.parametrize(
    ("change", "difference"),
    [
        ({"arguments": ["fixed=2"]}, "fixed=2 (the study: fixed=1)"),
        ({"arguments": ["fixed=1", "seed=3"]}, "seed=3 (the study: no seed)"),
        ({"arguments": []}, "no fixed (the study: fixed=1)"),
        ({"params": {"x": "tag(log, interval(0.1, 2))"}}, "x=tag(log, interval(0.1, 2.0)) "),
        ({"params": {"x": "a,b"}}, "x=a,b (the study: x=interval(0.0, 1.0))"),
        ({"params": {"x": "range(1, 9, 2)"}}, "x=range(1, 9, 2) (the study: x=interval"),
        (
            {"params": {"x": "interval(0, 1)", "y": "interval(0, 1)"}},
            "y=interval(0.0, 1.0) (the study: no y)",
        ),
        ({"direction": "minimize"}, "hydra.sweeper.direction=minimize (the study: maximize)"),
    ],
)
def test_another_search_in_a_study_s_directory_is_refused_before_anything_is_written(
    tmp_path: Path, change: dict[str, object], difference: str
) -> None:
    first, _ = _sweeper(tmp_path, n_trials=2, n_jobs=1)
    first.sweep(["fixed=1"])
    sweep = tmp_path / "sweep"
    before = {path.name: path.read_bytes() for path in sweep.iterdir()}

    other, launcher = _sweeper(tmp_path, n_trials=4, n_jobs=1)
    other.params = change.get("params", other.params)  # type: ignore[assignment]
    other.direction = change.get("direction", other.direction)  # type: ignore[assignment]
    with pytest.raises(run_dir.ResumeError) as refused:
        other.sweep(change.get("arguments", ["fixed=1"]))  # type: ignore[arg-type]
    message = str(refused.value)
    assert difference in message and "\n" not in message
    assert (
        "choose a new hydra.sweep.dir" in message and str(run_dir.multirun_file(sweep)) in message
    )
    assert launcher.job_numbers == []
    assert {path.name: path.read_bytes() for path in sweep.iterdir()} == before
    # The same search (its order of overrides aside) still continues.
    same, launcher = _sweeper(tmp_path, n_trials=3, n_jobs=1)
    same.sweep(["fixed=1"])
    assert launcher.job_numbers == [2]


def test_sweep_without_a_search_space_says_so(tmp_path: Path) -> None:
    sweeper, _ = _sweeper(tmp_path, n_trials=1, n_jobs=1)
    sweeper.params = {}
    with pytest.raises(HydraException, match="nothing to search"):
        sweeper.sweep(["fixed=1"])


#: hparams_search=hug_alpha_beta cut to ~1-2 s of training per trial: 3 batches of 64 images.
TINY_SEARCH = (
    "-m",
    "hparams_search=hug_alpha_beta",
    "loss=mgd_hug",
    "debug=limit",
    "trainer.max_epochs=1",
    "data.train_subset=256",
    "data.batch_size=64",
    "logger=none",
    "~callbacks.neural_collapse",
    "~callbacks.progress_bar",
)


@pytest.mark.slow
def test_search_is_stored_in_its_sweep_dir_continues_and_is_reported(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    sweep = tmp_path / "search"

    def search(n_trials: int, *more: str) -> subprocess.CompletedProcess[str]:
        return run_hugnc(
            *TINY_SEARCH,
            f"hydra.sweeper.n_trials={n_trials}",
            "hydra.sweeper.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
            *more,
            cwd=tmp_path,
            data_dir=fashion_mnist_dir,
        )

    result = search(6)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_dir.study_file(sweep).is_file()
    first = {job.name: job.params for job in collect_local(sweep)}
    assert sorted(first, key=int) == [str(n) for n in range(6)]
    # Another loss (and so another beta range) is another search: refused, nothing written.
    files = {path: path.read_bytes() for path in sweep.iterdir() if path.is_file()}
    refused = search(12, "loss=mhe_hug")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("hugnc: ") and "loss=mhe_hug (the study: loss=mgd_hug)" in line
    assert {path: path.read_bytes() for path in sweep.iterdir() if path.is_file()} == files
    result = search(12)  # the same sweep dir: trials 7-12 (jobs 6-11), jobs 0-5 untouched
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = collect_local(sweep)
    assert [job.name for job in jobs] == [str(n) for n in range(12)]
    assert all(job.status == "completed" for job in jobs)
    assert {job.name: job.params for job in jobs[:6]} == first
    for job in jobs:  # on the log scale, inside the MGD-HUG ranges of the yaml files
        assert 0.015 <= float(job.params["loss.alpha"]) <= 1.5
        assert 0.01 <= float(job.params["loss.beta"]) <= 10.0
        assert job.value("loss.variant") == "mgd"

    found = read_search(sweep)
    assert found is not None and found.states == {"COMPLETE": 12}
    assert found.metric == "val/acc" and found.direction == "maximize"
    best = max(jobs, key=lambda job: job.metrics["val/acc"])
    assert found.best_value == pytest.approx(best.metrics["val/acc"])
    assert found.best_job is not None
    assert jobs[int(found.best_job)].metrics["val/acc"] == pytest.approx(found.best_value)
    assert main([str(sweep)]) == 0
    assert f"best trial: job {found.best_job}, val/acc = " in (sweep / "report.md").read_text()
    assert (sweep / "search_val_acc.png").stat().st_size > 5000
    assert not math.isnan(found.best_value or math.nan)


@pytest.mark.slow
def test_search_trials_run_side_by_side_through_ray(
    tmp_path: Path, fashion_mnist_dir: Path
) -> None:
    """``hydra/launcher=ray`` runs a batch of ``n_jobs`` trials at once (one core each here); the
    study and the report are the same as with the basic launcher."""
    sweep = tmp_path / "search"
    result = run_hugnc(
        *TINY_SEARCH,
        "hydra/launcher=ray",
        "hydra.launcher.ray.init.num_cpus=2",
        "hydra.launcher.ray.remote.num_cpus=1",
        "trainer=cpu",
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        data_dir=fashion_mnist_dir,
        env={"OMP_NUM_THREADS": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = collect_local(sweep)
    assert [job.name for job in jobs] == ["0", "1", "2", "3"]
    assert all(job.status == "completed" for job in jobs)
    assert most_jobs_at_once([sweep / job.name for job in jobs]) == 2
    found = read_search(sweep)
    assert found is not None and found.states == {"COMPLETE": 4}
    assert found.best_job is not None
    assert jobs[int(found.best_job)].metrics["val/acc"] == pytest.approx(found.best_value)
