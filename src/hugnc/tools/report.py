"""``hugnc-report SWEEP_DIR``: one table and heatmap from the jobs of a sweep.

Reads a local Hydra multirun directory (every job directory with ``.hydra/overrides.yaml``; its
``metrics.json`` holds ``status`` and the final metrics, written by :func:`hugnc.train.train`) or,
with ``--wandb ENTITY/PROJECT --group G``, the runs of a W&B group through the W&B API (online).
Writes ``report.csv`` and ``report.md`` and, per metric, a heatmap over two swept keys (default
``loss.alpha`` x ``loss.beta``, cells averaged over the other keys such as seeds; failed cells
marked). Jobs that failed appear as failed, not missing.

``--group-by KEY [KEY ...]`` adds ``summary.csv`` and ``summary.md``: one row per combination of
the keys' values with mean, standard deviation and count of each metric over the other keys
(seeds), and the failed jobs per group. A key is looked up in the job's overrides, then in Hydra's
group choices (``loss`` -> ``mhe_hug``), then in its ``.hydra/config.yaml``; a last dotted part is
enough when it is unambiguous (``feature_dim`` -> ``model.feature_dim``).

A hyperparameter search (``hparams_search=...``: the sweep directory holds its Optuna study) is
reported with its trials as rows, the best trial named (by the study's ``optimized_metric``) in
the output and ``report.md``, and ``search_<metric>.png``: the searched points over ``--x`` x
``--y`` (log axes) coloured by the metric, instead of the heatmaps of a grid.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import matplotlib.pyplot as plt
from omegaconf import OmegaConf

from hugnc import run_dir
from hugnc.errors import one_line_errors
from hugnc.plots import search_scatter_figure, sweep_heatmap_figure

DEFAULT_METRICS = ("test/acc", "val/acc")


@dataclass
class JobResult:
    """One job of a sweep: its swept values, status and final metrics."""

    name: str
    params: dict[str, str]
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    #: Hydra's config group choices of the job (``{"loss": "mhe_hug", ...}``), if known.
    choices: dict[str, str] = field(default_factory=dict)
    #: The job's composed config flattened to dotted keys (scalars as strings), if known.
    config: dict[str, str] = field(default_factory=dict)

    def value(self, key: str) -> str | None:
        """``key``'s value for this job: override, group choice, then config; ``None`` if unknown.

        In each source an exact key wins; else a key whose last dotted parts are ``key``, if only
        one such key exists (``feature_dim`` finds ``model.feature_dim``).
        """
        for source in (self.params, self.choices, self.config):
            if key in source:
                return source[key]
            matches = [k for k in source if k.endswith("." + key)]
            if len(matches) == 1:
                return source[matches[0]]
        return None


def _parse_override(override: str) -> tuple[str, str] | None:
    key, sep, value = override.lstrip("+~").partition("=")
    return (key, value) if sep else None


def collect_local(sweep_dir: str | Path) -> list[JobResult]:
    """The jobs of a local multirun directory, in job-number order.

    Raises:
        FileNotFoundError: ``sweep_dir`` has no job directories.
    """
    sweep_dir = Path(sweep_dir)
    jobs_found = run_dir.job_dirs(sweep_dir)
    if not jobs_found and run_dir.config_file(sweep_dir).is_file():
        raise FileNotFoundError(
            f"{sweep_dir} is one run, not a sweep: hugnc-report reads a multirun directory "
            "(python -m hugnc -m ...); for one run see its metrics.json, or hugnc-geometry"
        )
    if not jobs_found:
        raise FileNotFoundError(
            f"no sweep jobs in {sweep_dir}: expected job directories "
            f"{run_dir.overrides_file('<n>')}, as written by `python -m hugnc -m ...` under "
            "logs/<task_name>/multiruns/<time>_<id>/"
        )
    jobs = []
    for job_dir in jobs_found:
        # Hydra's overrides.yaml is a list of "key=value" strings.
        overrides = cast(
            list[Any], OmegaConf.to_container(OmegaConf.load(run_dir.overrides_file(job_dir)))
        )
        params = dict(filter(None, (_parse_override(str(o)) for o in overrides)))
        choices, config = _job_config(job_dir)
        content = run_dir.read_status(job_dir)
        if content is None:
            jobs.append(
                JobResult(
                    job_dir.name,
                    params,
                    "failed",
                    error="no metrics.json (killed?)",
                    choices=choices,
                    config=config,
                )
            )
            continue
        status = str(content.pop("status", "completed"))
        error = str(content.pop("error", ""))
        metrics = {k: float(v) for k, v in content.items() if isinstance(v, int | float)}
        jobs.append(JobResult(job_dir.name, params, status, metrics, error, choices, config))
    return jobs


def _job_config(job_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Hydra's group choices and the flattened config of a job (empty where files are missing)."""
    choices: dict[str, str] = {}
    config: dict[str, str] = {}
    hydra_file, config_file = run_dir.hydra_file(job_dir), run_dir.config_file(job_dir)
    if hydra_file.is_file():
        node = OmegaConf.select(OmegaConf.load(hydra_file), "hydra.runtime.choices")
        if node is not None:
            raw_choices = cast(dict[Any, Any], OmegaConf.to_container(node, resolve=False))
            choices = {
                str(k): str(v) for k, v in raw_choices.items() if not str(k).startswith("hydra/")
            }
    if config_file.is_file():
        raw = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
        config = _flatten(raw) if isinstance(raw, dict) else {}
    return choices, config


def _flatten(config: dict[Any, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = str(value)
    return flat


def collect_wandb(path: str, group: str, api: Any = None) -> list[JobResult]:
    """The runs of W&B group ``group`` in ``ENTITY/PROJECT`` (needs network and an API key).

    Swept keys are taken from each run's tags (the job's overrides, as hugnc logs them).
    """
    if api is None:
        import wandb

        try:
            api = wandb.Api(timeout=20)
        except Exception as error:  # no key, no network
            raise RuntimeError(f"W&B API unavailable ({error}); use a local sweep dir") from error
    jobs = []
    for run in api.runs(path, filters={"group": group}):
        params = dict(filter(None, (_parse_override(tag) for tag in run.tags)))
        config = _flatten(dict(run.config))
        params = {key: config.get(key, value) for key, value in params.items()}
        state = {"finished": "completed", "running": "running"}.get(run.state, "failed")
        summary = {k: float(v) for k, v in dict(run.summary).items() if isinstance(v, int | float)}
        jobs.append(JobResult(run.name, params, state, summary))
    if not jobs:
        raise FileNotFoundError(f"no W&B runs in {path} with group {group!r}")
    return jobs


def swept_keys(jobs: Sequence[JobResult]) -> list[str]:
    """Override keys whose value differs between jobs (in first-seen order)."""
    keys: dict[str, set[str]] = {}
    for job in jobs:
        for key, value in job.params.items():
            keys.setdefault(key, set()).add(value)
    return [key for key, values in keys.items() if len(values) > 1]


def write_tables(jobs: Sequence[JobResult], metrics: Sequence[str], out_dir: Path) -> list[Path]:
    keys = swept_keys(jobs)
    header = ["job", "status", *keys, *metrics, "error"]
    rows = [
        [
            job.name,
            job.status,
            *(job.params.get(k, "") for k in keys),
            *(_fmt(job.metrics.get(m)) for m in metrics),
            job.error,
        ]
        for job in jobs
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / "report.csv", out_dir / "report.md"
    with csv_path.open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


def _fmt(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


def heatmap_grid(
    jobs: Sequence[JobResult], metric: str, x_key: str, y_key: str
) -> tuple[list[str], list[str], list[list[float]], list[list[int]]]:
    """Mean of ``metric`` per (y, x) cell over completed jobs, and the failed-job count per cell."""
    x_values = sorted({j.params[x_key] for j in jobs if x_key in j.params}, key=_numeric)
    y_values = sorted({j.params[y_key] for j in jobs if y_key in j.params}, key=_numeric)
    sums = [[0.0] * len(x_values) for _ in y_values]
    counts = [[0] * len(x_values) for _ in y_values]
    failed = [[0] * len(x_values) for _ in y_values]
    for job in jobs:
        if x_key not in job.params or y_key not in job.params:
            continue
        row, col = y_values.index(job.params[y_key]), x_values.index(job.params[x_key])
        if job.status != "completed" or metric not in job.metrics:
            failed[row][col] += 1
        else:
            sums[row][col] += job.metrics[metric]
            counts[row][col] += 1
    means = [
        [
            total / count if count else math.nan
            for total, count in zip(row_sums, row_counts, strict=True)
        ]
        for row_sums, row_counts in zip(sums, counts, strict=True)
    ]
    return x_values, y_values, means, failed


def _numeric(value: str) -> tuple[int, float | str]:
    try:
        return (0, float(value))
    except ValueError:
        return (1, value)


def write_heatmaps(
    jobs: Sequence[JobResult], metrics: Sequence[str], x_key: str, y_key: str, out_dir: Path
) -> list[Path]:
    paths = []
    for metric in metrics:
        x_values, y_values, means, failed = heatmap_grid(jobs, metric, x_key, y_key)
        figure = sweep_heatmap_figure(means, failed, x_values, y_values, x_key, y_key, metric)
        path = out_dir / f"heatmap_{metric.replace('/', '_')}.png"
        figure.savefig(path, dpi=120)
        plt.close(figure)
        paths.append(path)
    return paths


@dataclass
class SearchResult:
    """What the Optuna study of a hyperparameter search says (:func:`read_search`)."""

    metric: str
    direction: str
    #: Trials by state (``COMPLETE``, ``FAIL``, ``RUNNING``...).
    states: dict[str, int]
    #: The best trial's job directory name (its trial number), value and parameters.
    best_job: str | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)

    def best_line(self) -> str:
        """One line naming the best trial, or saying there is none."""
        counts = ", ".join(f"{n} {state.lower()}" for state, n in self.states.items())
        if self.best_job is None or self.best_value is None:
            return f"search ({self.direction} {self.metric}; {counts}): no completed trial"
        params = " ".join(f"{k}={v:.4g}" for k, v in self.best_params.items())
        return (
            f"best trial: job {self.best_job}, {self.metric} = {self.best_value:.4f} ({params}); "
            f"{self.direction} {self.metric} over {counts} trials"
        )


def read_search(sweep_dir: str | Path) -> SearchResult | None:
    """The Optuna study in ``sweep_dir`` (``hydra/sweeper=optuna``), ``None`` for a grid sweep."""
    path = run_dir.study_file(sweep_dir)
    if not path.is_file():
        return None
    import optuna

    from hydra_plugins.hugnc.optuna_sweeper import journal_storage

    storage = journal_storage(path)
    (name, *_) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    result = SearchResult(
        metric=(study.metric_names or ["value"])[0],
        direction=study.direction.name.lower(),
        states=states,
    )
    if states.get("COMPLETE"):
        best = study.best_trial
        result.best_job, result.best_value = str(best.number), best.value
        result.best_params = dict(best.params)
    return result


def write_search_plot(
    jobs: Sequence[JobResult],
    search: SearchResult,
    x_key: str,
    y_key: str,
    out_dir: Path,
) -> Path:
    """``search_<metric>.png``: every trial's ``x_key`` x ``y_key`` (log axes), coloured by the
    search's metric; failed trials (or a non-finite metric) as crosses, the best circled."""
    points, failed, labels = [], [], []
    best = None
    for job in jobs:
        if x_key not in job.params or y_key not in job.params:
            continue
        x, y = float(job.params[x_key]), float(job.params[y_key])
        value = job.metrics.get(search.metric, math.nan)
        if job.status == "completed" and math.isfinite(value):
            points.append((x, y, value))
            labels.append(job.name)
        else:
            failed.append((x, y))
        if job.name == search.best_job:
            best = (x, y)
    figure = search_scatter_figure(points, failed, x_key, y_key, search.metric, best, labels)
    path = out_dir / f"search_{search.metric.replace('/', '_')}.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


@dataclass
class GroupSummary:
    """The jobs sharing one value of each group-by key: metric statistics over the rest."""

    keys: dict[str, str]
    completed: int
    failed: int
    #: metric -> (mean, sample standard deviation (nan for one value), number of values).
    stats: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    def cell(self, metric: str, digits: int = 4) -> str:
        """``mean ± std`` (just the mean for one value, empty for none)."""
        mean, std, count = self.stats.get(metric, (math.nan, math.nan, 0))
        if count == 0:
            return ""
        if count == 1 or math.isnan(std):
            return f"{mean:.{digits}f}"
        return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarize(
    jobs: Sequence[JobResult], group_by: Sequence[str], metrics: Sequence[str]
) -> list[GroupSummary]:
    """One :class:`GroupSummary` per combination of ``group_by`` values, in first-seen order.

    Failed jobs (and completed ones without a metric) count in ``failed`` / are left out of that
    metric's statistics; a key a job does not have groups it under ``""``.
    """
    groups: dict[tuple[str, ...], list[JobResult]] = {}
    for job in jobs:
        values = tuple(job.value(key) or "" for key in group_by)
        groups.setdefault(values, []).append(job)
    summaries = []
    for values, members in groups.items():
        completed = [j for j in members if j.status == "completed"]
        summary = GroupSummary(
            dict(zip(group_by, values, strict=True)), len(completed), len(members) - len(completed)
        )
        for metric in metrics:
            data = [j.metrics[metric] for j in completed if metric in j.metrics]
            data = [x for x in data if not math.isnan(x)]
            if data:
                std = statistics.stdev(data) if len(data) > 1 else math.nan
                summary.stats[metric] = (statistics.fmean(data), std, len(data))
        summaries.append(summary)
    return summaries


def write_summary(
    summaries: Sequence[GroupSummary], group_by: Sequence[str], metrics: Sequence[str], out: Path
) -> list[Path]:
    """``summary.csv`` (mean, std, n columns per metric) and ``summary.md`` (mean ± std)."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "summary.csv", out / "summary.md"
    header = [*group_by, "completed", "failed"]
    header += [f"{m}_{stat}" for m in metrics for stat in ("mean", "std", "n")]
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for s in summaries:
            row = [*(s.keys[k] for k in group_by), s.completed, s.failed]
            for metric in metrics:
                mean, std, count = s.stats.get(metric, (math.nan, math.nan, 0))
                row += [_fmt(mean), _fmt(std), count]
            writer.writerow(row)
    md_header = [*group_by, "n", "failed", *metrics]
    lines = ["| " + " | ".join(md_header) + " |", "|" + "---|" * len(md_header)]
    for s in summaries:
        cells = [*(s.keys[k] for k in group_by), str(s.completed), str(s.failed)]
        cells += [s.cell(metric) for metric in metrics]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return [csv_path, md_path]


@one_line_errors("hugnc-report")
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hugnc-report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_dir", nargs="?", help="a multirun directory (logs/.../multiruns/...)"
    )
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read runs from W&B instead")
    parser.add_argument("--group", help="the W&B group (the sweep directory's name)")
    parser.add_argument("--metric", action="append", help=f"metric(s) (default {DEFAULT_METRICS})")
    parser.add_argument("--x", default="loss.alpha", help="heatmap columns (default loss.alpha)")
    parser.add_argument("--y", default="loss.beta", help="heatmap rows (default loss.beta)")
    parser.add_argument("--out", help="output directory (default: the sweep dir, or ./report)")
    parser.add_argument(
        "--group-by",
        nargs="+",
        metavar="KEY",
        help="also write summary.csv/.md: one row per value combination of these keys (e.g. "
        "loss feature_dim weights), mean ± std of each metric over the other keys (seeds)",
    )
    args = parser.parse_args(argv)
    if bool(args.wandb) == bool(args.sweep_dir) or bool(args.wandb) != bool(args.group):
        parser.error("give either SWEEP_DIR or both --wandb ENTITY/PROJECT and --group G")
    try:
        if args.wandb:
            jobs = collect_wandb(args.wandb, args.group)
        else:
            jobs = collect_local(args.sweep_dir)
    except (FileNotFoundError, RuntimeError) as error:
        print(f"hugnc-report: {error}", file=sys.stderr)
        return 2
    out_dir = Path(args.out or args.sweep_dir or "report")
    search = read_search(args.sweep_dir) if args.sweep_dir else None
    defaults = (search.metric, *DEFAULT_METRICS) if search else DEFAULT_METRICS
    metrics = args.metric or list(
        dict.fromkeys(m for m in defaults if any(m in j.metrics for j in jobs))
    )
    written = write_tables(jobs, metrics, out_dir)
    keys = swept_keys(jobs)
    if args.x not in keys or args.y not in keys:
        print(f"no plot: {args.x} and {args.y} are not both swept (swept: {keys})")
    elif search is not None:
        written.append(write_search_plot(jobs, search, args.x, args.y, out_dir))
    else:
        written += write_heatmaps(jobs, metrics, args.x, args.y, out_dir)
    if search is not None:
        with (out_dir / "report.md").open("a") as handle:
            handle.write(f"\n{search.best_line()}\n")
    print((out_dir / "report.md").read_text())
    if args.group_by:
        written += write_summary(
            summarize(jobs, args.group_by, metrics), args.group_by, metrics, out_dir
        )
        print((out_dir / "summary.md").read_text())
    failed = sum(job.status != "completed" for job in jobs)
    print(f"{len(jobs)} jobs, {failed} failed; wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
