"""Reproduce the README's Fashion-MNIST results table on CPU (or --stages paper_budget's table).

The command line of ``python -m experiments.results``: runs each stage's multirun as a subprocess
(its output in ``<out>/<stage>.log``), skips the stages a killed run finished (``--resume``) and
writes the table (:mod:`experiments.results.table`).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from experiments import timing
from experiments.logged_run import run_logged
from experiments.paper_budget import plan as budget_plan
from experiments.paper_budget import records as budget_records
from experiments.paper_budget import runner as budget_runner
from experiments.results.plan import (
    SEPARATE_STAGES,
    STAGES,
    Options,
    Stage,
    build_stages,
    select_tuned,
    write_settings,
)
from experiments.results.table import tuned_sentence, write_results
from hugnc.launching import ray_launcher_installed
from hugnc.tools.report import collect_local

PROG = "python -m experiments.results"
#: Exit statuses after which a job counts as interrupted (run again), not as finished.
INTERRUPTED = ("SIGTERM", "KeyboardInterrupt", "no metrics.json")


# --- Running a stage ------------------------------------------------------------------------------
def stage_finished(stage_dir: Path, expected_jobs: int) -> bool:
    """Whether all ``expected_jobs`` jobs of a stage ran to their end (completed, or failed for a
    reason of their own such as a NaN loss -- running them again would fail again), i.e. not
    killed or interrupted."""
    try:
        jobs = collect_local(stage_dir)
    except FileNotFoundError:
        return False
    if len(jobs) != expected_jobs:
        return False
    return all(
        job.status == "completed"
        or (job.status == "failed" and not any(s in job.error for s in INTERRUPTED))
        for job in jobs
    )


def run_stage(
    stage: Stage, out: Path, env: dict[str, str], jobs_at_once: int = 1, gpus: int = 0
) -> tuple[bool, float]:
    """Run (or skip) one stage, ``jobs_at_once`` CPU jobs at a time (``gpus`` > 0: one job per
    GPU); returns (finished, seconds)."""
    stage_dir = out / stage.name
    if stage_dir.exists():
        if stage_finished(stage_dir, stage.expected_jobs):
            print(f"[{stage.name}] all {stage.expected_jobs} jobs finished before: skipped")
            return True, 0.0
        k = 1
        while (aside := out / f"{stage.name}.incomplete-{k}").exists():
            k += 1
        stage_dir.rename(aside)
        print(f"[{stage.name}] unfinished; moved to {aside.name}, running it again")
    log_path = out / f"{stage.name}.log"
    command = stage.command(out, jobs_at_once, gpus)
    print(
        f"[{stage.name}] {stage.expected_jobs} jobs, estimated "
        f"{timing.minutes(stage.estimate_s)}; log: {log_path}",
        flush=True,
    )
    start = time.monotonic()
    returncode = run_logged(command, log_path, env)
    elapsed = time.monotonic() - start
    finished = stage_finished(stage_dir, stage.expected_jobs)
    try:
        jobs = collect_local(stage_dir)
        failed = sum(job.status != "completed" for job in jobs)
        counts = f"{len(jobs)} jobs, {failed} failed"
    except FileNotFoundError:
        counts = "no jobs"
    print(
        f"[{stage.name}] done in {timing.minutes(elapsed)} (exit {returncode}; {counts})"
        + ("" if finished else f"; UNFINISHED, see {log_path}"),
        flush=True,
    )
    return finished, elapsed


# --- Command line ---------------------------------------------------------------------------------
def _parse_stages(text: Sequence[str]) -> list[str]:
    names = [name for item in text for name in item.split(",") if name]
    unknown = [name for name in names if name not in STAGES + SEPARATE_STAGES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {unknown}; choose from {STAGES + SEPARATE_STAGES}"
        )
    if any(name in SEPARATE_STAGES for name in names) and len(set(names)) > 1:
        raise argparse.ArgumentTypeError(
            f"{SEPARATE_STAGES} run on their own: --stages paper_budget, then the others"
        )
    return [name for name in STAGES + SEPARATE_STAGES if name in names]


def _prepare_out(args: argparse.Namespace, options: Options) -> Path:
    out = Path(args.out or f"results/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    plan_file = out / "plan.json"
    if args.resume:
        if not plan_file.is_file():
            raise SystemExit(f"{PROG}: --resume needs a results directory (with plan.json): {out}")
        stored = json.loads(plan_file.read_text())
        if stored != asdict(options):
            raise SystemExit(
                f"{PROG}: {out} was planned with {stored}, not {asdict(options)}; "
                "resume with the same --epochs/--seeds/--quick/--robustness/--logger"
            )
        return out
    if out.exists():
        raise SystemExit(
            f"{PROG}: {out} exists; nothing was changed. Continue it with "
            f"--resume --out {out}, or choose another --out"
        )
    out.mkdir(parents=True)
    plan_file.write_text(json.dumps(asdict(options), indent=2))
    return out


def _job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
    return env


def default_gpus() -> int:
    """The machine's CUDA GPUs when Ray is installed (then every job trains on one of them),
    else 0: the results run on the CPU."""
    if not ray_launcher_installed():
        return 0
    import torch

    return torch.cuda.device_count()


def default_jobs_at_once() -> int:
    """One job per core through Ray where it is installed: the CPU-bound results model trains
    faster as 2 single-thread jobs than as 1 two-thread job on 2 cores
    (``benchmarks/bench_sweep.py``: 1.59x for a 4-job sweep, README 'Sweeps, multi-GPU and
    clusters'); one job at a time with all cores otherwise."""
    return (os.cpu_count() or 1) if ray_launcher_installed() else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="results directory (default results/<date>_<time>)")
    parser.add_argument("--resume", action="store_true", help="continue an existing --out")
    parser.add_argument("--epochs", type=int, help="main-stage epochs (default 3, the config's)")
    parser.add_argument(
        "--seeds",
        help="main-stage seeds, e.g. 0,1,2 (the default; --quick: 0); lt/continual: the first",
    )
    parser.add_argument(
        "--stages",
        nargs="+",
        default=list(STAGES),
        help=f"stages to run, of {', '.join(STAGES)} (default all); or paper_budget on its own",
    )
    parser.add_argument("--quick", action="store_true", help="tiny pipeline check (tests)")
    parser.add_argument(
        "--robustness",
        action="store_true",
        help="main stage: FGSM/PGD-10 robust accuracy (eps 0.1, 2 test batches; ~+6 min)",
    )
    parser.add_argument("--logger", default="csv", help="logger config (csv | none | wandb)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and estimate only")
    parser.add_argument(
        "--jobs-at-once",
        type=int,
        default=default_jobs_at_once(),
        help="jobs run concurrently (hydra/launcher=ray, 1 core each; 1: Hydra's basic launcher "
        "with all cores); default: the number of cores if Ray is installed, else 1",
    )
    parser.add_argument(
        "--gpus",
        type=int,
        default=default_gpus(),
        help="train on the GPU, one job per GPU at a time (trainer=gpu, hydra/launcher=ray); "
        "default: the machine's CUDA GPUs if Ray is installed, else 0 (CPU, --jobs-at-once)",
    )
    budget = parser.add_argument_group("paper_budget stage")
    budget.add_argument(
        "--record",
        default=str(budget_plan.DEFAULT_RECORD),
        help=f"where finished jobs' small outputs go (default {budget_plan.DEFAULT_RECORD})",
    )
    budget.add_argument(
        "--commit", action="store_true", help="git-commit each finished job's record at once"
    )
    budget.add_argument("--only", help="comma-separated job names, e.g. ce_d64_s0,mhe_hug_d64_s0")
    args = parser.parse_args(argv)
    try:
        stage_names = _parse_stages(args.stages)
        seeds_text = args.seeds or ("0" if args.quick else "0,1,2")
        seeds = [int(s) for s in seeds_text.split(",") if s]
    except (argparse.ArgumentTypeError, ValueError) as error:
        parser.error(str(error))
    if not seeds:
        parser.error("--seeds needs at least one seed")
    if stage_names == ["paper_budget"]:
        return _run_paper_budget(args, parser)
    options = Options(args.epochs, seeds, args.quick, args.robustness, args.logger)

    stages = [s for s in build_stages(options, {}) if s.name in stage_names]
    total = sum(s.estimate_s for s in stages)
    print(f"results plan (time model in experiments/timing.py; {timing.MACHINE}):")
    for stage in stages:
        print(
            f"  {stage.name:<9} {stage.expected_jobs:>3} jobs  ~{timing.minutes(stage.estimate_s)}"
        )
    print(f"  total     ~{timing.minutes(total)}", flush=True)
    if args.gpus:
        print(f"  on {args.gpus} GPU(s), one job per GPU (the time model is the CPU's)", flush=True)
    if args.dry_run:
        return 0

    out = _prepare_out(args, options)
    print(f"results directory: {out}", flush=True)
    env = _job_env()
    tuned_file = out / "tuned.json"
    tuned: dict[str, dict[str, Any]] = (
        json.loads(tuned_file.read_text()) if tuned_file.is_file() else {}
    )
    start = time.monotonic()
    unfinished = []
    for name in stage_names:
        if name != "tune" and not tuned:
            print(f"[{name}] needs the tune stage's choice (tuned.json): run --stages tune first")
            unfinished.append(name)
            continue
        (stage,) = (s for s in build_stages(options, tuned) if s.name == name)
        write_settings(out, [stage])
        finished, _ = run_stage(stage, out, env, args.jobs_at_once, args.gpus)
        if not finished:
            unfinished.append(name)
        if name == "tune":
            tuned = select_tuned(collect_local(out / "tune")) if (out / "tune").exists() else {}
            tuned_file.write_text(json.dumps(tuned, indent=2))
            print(tuned_sentence(tuned), flush=True)
    elapsed = time.monotonic() - start
    header = [
        f"Produced by `{PROG}` ({'quick check' if options.quick else 'full run'}) into "
        f"`{out}`; this invocation took {timing.minutes(elapsed)}. Settings: "
        f"`conf/experiment/results.yaml`, `conf/sweep/results_*.yaml`; main-stage seeds "
        f"{','.join(map(str, seeds))}.",
    ]
    if unfinished:
        header.append(f"Unfinished stages: {', '.join(unfinished)} (see <stage>.log).")
    readme, csv_path = write_results(out, tuned, header)
    print(readme.read_text())
    print(f"wrote {readme} and {csv_path} in {timing.minutes(elapsed)}")
    if unfinished:
        print(f"unfinished stages {unfinished}: continue with {PROG} --resume --out {out}")
        return 1
    return 0


def _run_paper_budget(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--stages paper_budget``: its own jobs, run directories and committed record."""
    try:
        jobs = budget_plan.jobs([n for n in (args.only or "").split(",") if n])
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out) if args.out else budget_plan.DEFAULT_OUT
    record = Path(args.record)
    recorded = [job.name for job in jobs if budget_records.is_recorded(record, job)]
    estimate = budget_plan.job_estimate_s() * (len(jobs) - len(recorded))
    print(
        f"results plan: paper_budget {len(jobs)} jobs ({len(recorded)} recorded), "
        f"~{timing.minutes(estimate)} for the rest ({timing.MACHINE})",
        flush=True,
    )
    if args.dry_run:
        return 0
    if not args.resume and (out.exists() or recorded):
        parser.error(
            f"{out if out.exists() else record} holds an earlier paper_budget run; nothing was "
            "changed. Continue it with --resume (finished jobs are kept, killed ones continue "
            "from their last checkpoint), or choose another --out and --record"
        )
    return budget_runner.run(
        jobs, out, record, _job_env(), quick=args.quick, commit_records=args.commit
    )
