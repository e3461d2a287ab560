"""``python -m hugnc [overrides]``: one Hydra entry point for training runs and sweeps."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from hugnc.config import config_dir
from hugnc.errors import EXIT_USER
from hugnc.launching import register_hydra_plugins
from hugnc.preflight import run_checked
from hugnc.run_dir import ResumeError, rewrite_argv

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _run(cfg: DictConfig) -> float | None:
    # Heavy imports after Hydra handled --help / --cfg.
    from lightning.pytorch.utilities import rank_zero_only

    from hugnc.launching import run_job
    from hugnc.train import train

    metrics = run_job(train, cfg)
    accuracy = metrics.get("test/acc")
    # Lightning's stubs type rank_zero_only as a function; it carries the process rank.
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]
        summary = f"test/acc = {accuracy:.4f}" if accuracy is not None else "no test metrics"
        print(f"{summary}; run directory: {cfg.paths.output_dir}")
    return optimized_value(metrics, cfg.get("optimized_metric", "val/acc"))


def optimized_value(metrics: dict[str, float], metric: str) -> float | None:
    """The value a sweeper optimizes: ``metric`` among a run's final metrics, ``None`` (a failed
    trial, with the keys there are in the log) when the run has no such metric."""
    if metric not in metrics:
        known = ", ".join(sorted(metrics))
        log.warning(f"optimized_metric={metric} is not among the final metrics ({known})")
        return None
    return metrics[metric]


def main() -> None:
    try:
        sys.argv[1:] = rewrite_argv(sys.argv[1:])
    except ResumeError as error:
        print(f"hugnc: {error}", file=sys.stderr)
        sys.exit(EXIT_USER)
    register_hydra_plugins()
    run_checked(_run, config_name="train")


if __name__ == "__main__":
    main()
