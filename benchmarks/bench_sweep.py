"""A sweep's wall time, one job at a time vs Ray's concurrent jobs: ``benchmarks/bench_sweep.py``.

The same sweep (``--jobs`` seeds of the results model, ``experiment=results``: LeNet++ 16-32-64 on
Fashion-MNIST, one epoch on ``--subset`` training images, validation, NC measurement and test) is
run twice as users run it, ``python -m hugnc -m ...`` in a subprocess:

- ``basic``: Hydra's basic launcher, the jobs one after the other in one process with
  ``--cores`` torch threads;
- ``ray``: ``hydra/launcher=ray`` on a Ray instance of ``--cores`` cores, one core and one torch
  thread per job, so ``--cores`` jobs run at once.

Both include everything a user waits for: imports, the config check of every job, Ray's start and
its workers' imports. The ratio is basic/ray wall time (> 1: Ray is faster). On a GPU machine,
``--gpu`` runs both with ``trainer=gpu`` and Ray gives each job one GPU (``--cores`` is then the
number of GPUs, and the basic launcher uses one of them).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hugnc.tools.report import collect_local


def sweep_command(
    launcher: str, jobs: int, subset: int, cores: int, gpu: bool, quick: bool = False
) -> list[str]:
    """``python -m hugnc -m ...`` for the benchmark sweep on ``launcher`` (basic | ray);
    ``quick``: each job cut to a few batches per loop (``debug=limit``)."""
    command = [
        sys.executable,
        "-m",
        "hugnc",
        "-m",
        "experiment=results",
        "trainer.max_epochs=1",
        f"data.train_subset={subset}",
        "logger=csv",
        "seed=" + ",".join(str(seed) for seed in range(jobs)),
    ]
    if gpu:
        command.append("trainer=gpu")
    if quick:
        command.append("debug=limit")
    if launcher == "ray":
        command += ["hydra/launcher=ray", "hydra.launcher.ray.remote.num_cpus=1"]
        command.append(f"hydra.launcher.ray.init.num_{'gpus' if gpu else 'cpus'}={cores}")
    return command


def timed_sweep(launcher: str, args: argparse.Namespace, out: Path) -> float:
    """Wall seconds of one sweep; fails unless every job completed."""
    sweep_dir = out / launcher
    threads = "1" if launcher == "ray" else str(args.cores)
    env = os.environ | {"OMP_NUM_THREADS": threads}
    if args.data_dir:
        env["HUGNC_DATA_DIR"] = args.data_dir
    command = [
        *sweep_command(launcher, args.jobs, args.subset, args.cores, args.gpu, args.quick),
        f"hydra.sweep.dir={sweep_dir}",
    ]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=out)
    elapsed = time.perf_counter() - start
    jobs = collect_local(sweep_dir) if sweep_dir.is_dir() else []
    if done.returncode != 0 or [job.status for job in jobs] != ["completed"] * args.jobs:
        raise SystemExit(
            f"{launcher} sweep failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
        )
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=4, help="jobs of the sweep (seeds)")
    parser.add_argument("--subset", type=int, default=4096, help="training images per job")
    parser.add_argument("--cores", type=int, default=2, help="cores (GPUs with --gpu) to use")
    parser.add_argument("--gpu", action="store_true", help="trainer=gpu, one GPU per Ray job")
    parser.add_argument("--data-dir", help="HUGNC_DATA_DIR for the jobs (default: hugnc's)")
    parser.add_argument(
        "--quick", action="store_true", help="a few batches per job (debug=limit): startup only"
    )
    args = parser.parse_args(argv)
    unit = "GPU" if args.gpu else "thread"
    print(
        f"sweep of {args.jobs} jobs: experiment=results, 1 epoch on {args.subset} images "
        f"(+ val, NC, test){', debug=limit' * args.quick}; {os.cpu_count()} cores on this machine"
    )
    with tempfile.TemporaryDirectory() as tmp:
        basic = timed_sweep("basic", args, Path(tmp))
        ray = timed_sweep("ray", args, Path(tmp))
    rows = [
        (f"basic launcher, 1 job at a time x {args.cores} {unit}s", basic),
        (f"ray launcher, {args.cores} jobs at a time x 1 {unit}", ray),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'launcher':<{width}}  wall s  s/job")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:6.1f}  {seconds / args.jobs:5.1f}")
    print(f"basic/ray wall time: {basic / ray:.2f}x")


if __name__ == "__main__":
    main()
