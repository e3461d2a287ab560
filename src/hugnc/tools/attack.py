"""``hugnc-attack RUN_DIR``: clean and adversarial (FGSM/PGD) test accuracy of a finished run.

Rebuilds the run (:func:`hugnc.tools.runs.load_run`: its config, datamodule and best or last
checkpoint), attacks the test set with :func:`hugnc.robustness.robust_accuracy`, prints a table
and writes ``RUN_DIR/robustness.json`` (or ``--out``).

Attacks, budgets and ``max_batches`` default to the run's ``callbacks.robustness`` settings when
it was trained with ``callbacks=robustness``, else to FGSM, PGD-10 and PGD-20 at eps 8/255, step
2/255 over the whole test set. ``--attack`` / ``--steps`` / ``--eps`` / ``--alpha`` override them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from omegaconf import OmegaConf

from hugnc.data.subsets import split_loader
from hugnc.errors import one_line_errors
from hugnc.robustness import (
    ATTACKS,
    DEFAULT_ALPHA,
    DEFAULT_ATTACKS,
    DEFAULT_EPS,
    AttackSpec,
    normalization_stats,
    parse_attacks,
    parse_budget,
    robust_accuracy,
)
from hugnc.tools.runs import Run, load_run_from_args, run_dir_parser

DEFAULT_STEPS = (10, 20)


def callback_settings(run: Run) -> dict[str, Any]:
    """The run's ``callbacks.robustness`` settings ({} if it had no such callback)."""
    node = OmegaConf.select(run.cfg, "callbacks.robustness", default=None)
    if node is None:
        return {}
    return cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))  # a mapping node


def attack_specs(args: argparse.Namespace, settings: dict[str, Any]) -> list[AttackSpec]:
    """The attacks of the command line, completed by the run's callback settings / defaults."""
    eps = args.eps if args.eps is not None else settings.get("eps", DEFAULT_EPS)
    alpha = args.alpha if args.alpha is not None else settings.get("alpha", DEFAULT_ALPHA)
    random_start = not args.no_random_start and settings.get("random_start", True)
    if args.attack is None and args.steps is None:
        entries: list[Any] = list(settings.get("attacks", DEFAULT_ATTACKS))
    else:
        names = args.attack or ["pgd"]  # --steps alone: PGD only
        steps = args.steps or list(DEFAULT_STEPS)
        entries = []
        for name in dict.fromkeys(names):
            if name == "fgsm":
                entries.append("fgsm")
            else:
                entries += [{"name": "pgd", "steps": count} for count in dict.fromkeys(steps)]
    return parse_attacks(entries, eps, alpha, random_start)


def build_parser() -> argparse.ArgumentParser:
    parser = run_dir_parser(
        "hugnc-attack",
        "Clean and adversarial (L-inf FGSM/PGD, torchattacks) test accuracy of a run.",
    )
    parser.add_argument(
        "--attack", nargs="+", choices=ATTACKS, default=None, help="attacks (default: the run's)"
    )
    parser.add_argument(
        "--steps",
        nargs="+",
        type=int,
        default=None,
        help=f"PGD steps, one attack per value (default {' '.join(map(str, DEFAULT_STEPS))})",
    )
    parser.add_argument(
        "--eps", default=None, help="L-inf budget in [0, 1] pixel units, e.g. 8/255 or 0.1"
    )
    parser.add_argument("--alpha", default=None, help="PGD step in pixel units, e.g. 2/255")
    parser.add_argument("--no-random-start", action="store_true", help="PGD from the clean image")
    parser.add_argument(
        "--max-batches",
        default="config",
        help="test batches: an integer, 'all', or 'config' (the run's callback; default)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="default: eval batch size")
    parser.add_argument("--seed", type=int, default=0, help="subset and random-start seed")
    parser.add_argument("--data-dir", default=None, help="override the run's paths.data_dir")
    parser.add_argument("--out", type=Path, default=None, help="default: RUN_DIR/robustness.json")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def _max_batches(
    value: str, settings: dict[str, Any], parser: argparse.ArgumentParser
) -> int | None:
    if value == "config":
        return settings.get("max_batches")
    if value == "all":
        return None
    if not value.isdigit() or int(value) < 1:
        parser.error(f"--max-batches must be a positive integer, 'all' or 'config', got {value!r}")
    return int(value)


@one_line_errors("hugnc-attack")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("eps", "alpha"):
        if getattr(args, name) is not None:
            try:
                parse_budget(getattr(args, name))
            except ValueError as error:
                parser.error(f"--{name}: {error}")
    run = load_run_from_args(args, parser)
    settings = callback_settings(run)
    try:
        specs = attack_specs(args, settings)
    except ValueError as error:
        parser.error(str(error))
    max_batches = _max_batches(args.max_batches, settings, parser)
    if settings.get("mean") is not None and settings.get("std") is not None:
        mean, std = tuple(settings["mean"]), tuple(settings["std"])
    else:
        mean, std = normalization_stats(run.datamodule)
    loader = split_loader(
        run.datamodule,
        "test",
        max_batches=max_batches,
        batch_size=args.batch_size or settings.get("batch_size"),
        seed=args.seed,
    )
    torch.manual_seed(args.seed)
    result = robust_accuracy(run.module, loader, specs, mean, std, device=torch.device(args.device))
    out = args.out or run.run_dir / "robustness.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "run_dir": str(run.run_dir),
        "checkpoint": str(run.checkpoint),
        "mean": list(mean),
        "std": list(std),
        "max_batches": max_batches,
        "seed": args.seed,
        **result.to_json(),
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"run: {run.run_dir}\ncheckpoint: {run.checkpoint}")
    print(result.table())
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
