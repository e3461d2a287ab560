"""Config validation: a bad command line fails in one clear message before anything is written.

The table of bad inputs goes through the real CLI (``python -m hugnc`` in a subprocess, started
in an empty directory): exit code 2, the message naming the key and what is allowed, no
traceback, a few lines only, and the directory still empty (no run directory, no W&B run). More
cases, the schema's pieces and every shipped config (no false positives) are checked in-process.
"""

from __future__ import annotations

import subprocess
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from helpers.cli_runs import run_hugnc

from hugnc import preflight, schema
from hugnc.arguments import describe, fits
from hugnc.config import config_dir
from hugnc.preflight import (
    EXIT_CODE,
    SKIP_ENV,
    ConfigCheckError,
    check_command_line,
    run_checked,
)
from hugnc.run_dir import checkpoint_problem, output_location_problem
from hugnc.schema import checkable, signature_of, unknown_key_problem


def run_cli(args: Sequence[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """``python -m hugnc ARGS`` with logs, data and W&B all pointed into ``cwd``."""
    return run_hugnc(
        *args,
        cwd=cwd,
        data_dir=cwd / "data",
        env={
            "HUGNC_LOG_DIR": str(cwd / "logs"),
            "WANDB_DIR": str(cwd / "wandb"),
            "OMP_NUM_THREADS": "1",
            **env,
        },
        timeout=300,
    )


# (command line, a fragment the message must contain). One subprocess each.
CLI_TABLE = [
    pytest.param(["loss.alpha=-1"], "loss.alpha = -1: must be >= 0 (command line)", id="alpha<0"),
    pytest.param(["loss.beta=-0.5"], "loss.beta = -0.5: must be >= 0", id="beta<0"),
    pytest.param(["loss.mhe_power=-2"], "loss.mhe_power = -2: must be >= 0", id="mhe_power<0"),
    pytest.param(["loss.alpha=abc"], "loss.alpha = 'abc': must be a number >= 0", id="alpha-str"),
    pytest.param(
        ["model.feature_dim=1"], "model.feature_dim = 1: must be >= 2 or null", id="feature_dim<2"
    ),
    pytest.param(["data.batch_size=0"], "data.batch_size = 0: must be >= 1", id="batch_size<1"),
    pytest.param(
        ["data.batch_size=1.5"],
        "data.batch_size = 1.5: must be an integer >= 1",
        id="batch_size-float",
    ),
    pytest.param(
        ["data=cifar10_lt", "data.imb_factor=1.5"],
        "data.imb_factor = 1.5: must be in (0, 1] or null",
        id="imb_factor>1",
    ),
    pytest.param(
        ["+data.imb_factor=0"], "data.imb_factor = 0: must be in (0, 1] or null", id="imb_factor=0"
    ),
    pytest.param(
        ["loss=mhe"],
        "loss=mhe: no such option; loss is one of ce, mgd_hug, mhe_hug, mhs_hug",
        id="unknown-option",
    ),
    pytest.param(
        ["loss.alpah=1"],
        "loss.alpah: unknown key (did you mean loss.alpha?); hugnc.losses.HUGLoss takes alpha, "
        "beta, mhe_power, variant",
        id="typo-key",
    ),
    pytest.param(
        ["+trainer.max_epoch=3"],
        "trainer.max_epoch: unknown key (did you mean trainer.max_epochs?); not one of the",
        id="typo-added-key",
    ),
    pytest.param(
        ["trainer.precision=17"],
        "trainer.precision = 17: must be one of 64, 32, 16",
        id="precision",
    ),
    pytest.param(["data.num_classes=1"], "data.num_classes = 1: must be >= 2", id="num_classes<2"),
    pytest.param(
        ["+sed=1"], "sed: unknown key (did you mean seed?); the top level takes", id="typo-top"
    ),
    pytest.param(
        ["ckpt_path=last"],
        "checkpoints/last.ckpt (ckpt_path=last looks in this run's own directory",
        id="ckpt-last-in-a-new-run",
    ),
    pytest.param(["ckpt_path=gone.ckpt"], "ckpt_path=gone.ckpt: no such file", id="ckpt-missing"),
    pytest.param(
        [f"ckpt_path={Path(__file__)}"],
        f"ckpt_path={Path(__file__)} is not a PyTorch checkpoint, or a damaged one",
        id="ckpt-not-a-checkpoint",
    ),
    pytest.param(
        ["-m", "loss.alpha=0.1,-1"],
        "sweep job 2 of 2 (loss.alpha=-1): loss.alpha = -1: must be >= 0",
        id="multirun-one-bad-job",
    ),
    # In-process, on a machine made GPU-less (the test hides any GPU there is).
    pytest.param(
        ["trainer=gpu"],
        "trainer.accelerator = 'gpu': this machine has no GPU (torch finds no CUDA device); "
        "train on the CPU with trainer=cpu",
        id="gpu-on-a-cpu-machine",
    ),
    pytest.param(
        ["-m", "trainer=ddp", "seed=0,1"],
        "every sweep job: trainer.accelerator = 'gpu': this machine has no GPU",
        id="ddp-sweep-on-a-cpu-machine",
    ),
]


#: Rows also run as users run them, in a new process (import-time output, the real exit): one
#: bad value, one bad option, one bad sweep job. The rest run ``main()`` in this process.
SUBPROCESS_ROWS = {"alpha<0", "unknown-option", "multirun-one-bad-job"}


def _assert_rejected_before_writing(
    code: object, stdout: str, stderr: str, expected: str, cwd: Path
) -> None:
    assert code == EXIT_CODE, stderr[-3000:]
    assert expected in stderr, stderr
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) < 15
    # Only the message: no Hydra error wall, no warnings, no W&B banner.
    assert all(line.startswith("hugnc: ") for line in lines), stderr
    # No run or sweep directory, no W&B run, no data download: nothing at all.
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"), [row for row in CLI_TABLE if row.id in SUBPROCESS_ROWS]
)
def test_bad_command_line_fails_before_writing(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    result = run_cli(args, tmp_path)
    _assert_rejected_before_writing(
        result.returncode, result.stdout, result.stderr, expected, tmp_path
    )


@pytest.mark.parametrize(
    ("args", "expected"), [row for row in CLI_TABLE if row.id not in SUBPROCESS_ROWS]
)
def test_bad_command_line_fails_before_writing_in_process(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture,
    args: list[str],
    expected: str,
) -> None:
    """``python -m hugnc ARGS`` minus the process start: the same environment as ``run_cli``."""
    from hugnc.__main__ import main
    from hugnc.errors import DEBUG_ENV

    monkeypatch.chdir(tmp_path)
    for name, value in {
        "HUGNC_DATA_DIR": tmp_path / "data",
        "HUGNC_LOG_DIR": tmp_path / "logs",
        "WANDB_DIR": tmp_path / "wandb",
        "HYDRA_FULL_ERROR": "0",
        DEBUG_ENV: "0",  # what the entry point sets for its children; restored after the test
    }.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.setattr(sys, "argv", ["hugnc", *args])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main()
    stdout, stderr = capfd.readouterr()
    _assert_rejected_before_writing(exit_info.value.code, stdout, stderr, expected, tmp_path)


def test_without_the_check_the_same_mistake_leaves_a_run_directory(tmp_path: Path) -> None:
    """The control for the table: Hydra alone makes the directory before the loss rejects alpha,
    so an empty directory above really means the check stopped the run first."""
    result = run_cli(["trainer=debug", "logger=none", "loss.alpha=-1"], tmp_path, **{SKIP_ENV: "1"})
    assert result.returncode != 0
    assert "alpha must be >= 0" in result.stderr
    assert len(list((tmp_path / "logs" / "train" / "runs").iterdir())) == 1


# More bad inputs, checked in-process (same code path minus process start).
IN_PROCESS_TABLE = [
    (["loss.variant=mhx"], "loss.variant = 'mhx': must be one of mhe, mhs, mgd"),
    (["data.eval_batch_size=0"], "data.eval_batch_size = 0: must be >= 1 or null"),
    (["trainer.max_epochs=0"], "trainer.max_epochs = 0: must be >= 1 or -1 or null"),
    (["trainer.max_epochs=1.5"], "trainer.max_epochs = 1.5: must be an integer >= 1"),
    (["trainer.deterministic=maybe"], "trainer.deterministic = 'maybe': must be"),
    (["+data.imb_factor=-0.1"], "data.imb_factor = -0.1: must be in (0, 1]"),
    (["data=cifar10_lt", "data.imb_type=log"], "data.imb_type = 'log': must be one of exp, step"),
    (["model=resnet18", "model.feature_dim=1"], "model.feature_dim = 1: must be >= 2"),
    (["model.widths=[16,a]"], "model.widths = [16, 'a']: must be a list of int"),
    (["model=resnet18", "model.depth=50"], "model.depth = 50: must be one of 18, 34"),
    (["model=resnet18", "model.depth=true"], "model.depth = true: must be one of 18, 34"),
    (["model=resnet50", "model.arch=resnet"], "model.arch = 'resnet': must be one of resnet18,"),
    (["head.scale=0"], "head.scale = 0: must be > 0"),
    (["optimizer.lr=-0.1"], "optimizer.lr = -0.1: must be > 0"),
    (["matmul_precision=low"], "matmul_precision = 'low': must be one of highest, high, medium"),
    (["retain_host_memory=maybe"], "retain_host_memory = 'maybe': must be"),
    (["trainer=ddp", "compile=true"], "compile = true: torch.compile does not combine with"),
    (["data.on_device=maybe"], "data.on_device = 'maybe': must be one of 'auto' or true or false"),
    (
        ["experiment=nope"],
        "experiment=nope: no such option; experiment is one of paper_budget, quickstart",
    ),
    (["los=ce"], "los: unknown key (did you mean loss?)"),
    (["trainer.max_epoch=3"], "trainer.max_epoch: unknown key (did you mean trainer.max_epochs?)"),
    (["+loss.alpah=1"], "loss.alpah: unknown key (did you mean loss.alpha?)"),
    (["data.imb_factor=0.5"], "data.imb_factor: not in conf/data/fashion_mnist.yaml; add it with"),
    (["loss=ce", "loss.alpha=1"], "loss.alpha: unknown key; hugnc.losses.CrossEntropyLoss"),
    (["logger=csv", "+logger.csv.flush_every=3"], "did you mean logger.csv.flush_logs_every_n"),
    (["callbacks.neural_collapse.max_batches=x"], "max_batches = 'x': must be int or null"),
    (["+callbacks.extra.every=1"], "callbacks.extra: needs a _target_"),
    (["loss.alpha=${nope}"], "loss.alpha = '${nope}': cannot be resolved"),
    (["~loss.alpha"], "loss.alpha: missing: hugnc.losses.HUGLoss needs it"),
    (["~loss"], "loss: missing"),
    (["loss=null"], "loss=null: a config group needs one of its options (to drop it: ~loss)"),
    (["loss.alpha=[1,"], "cannot parse 'loss.alpha=[1,'"),
    (["loss.alpha=0.1,0.2"], "loss.alpha=0.1,0.2: a comma-separated value is a sweep; add -m"),
    (["data=split_cifar10"], "split_cifar10 is a continual split: run it with python -m hugnc"),
    (["+logger.wandb.id=abc", "data.seed=-3"], "data.seed = -3: must be >= 0"),
    (["-m", "loss.alpha=0.1,0.2", "data.batch_size=0"], "every sweep job: data.batch_size = 0"),
    (["-m", "loss=ce,mhe_hug", "loss.mhe_power=-1"], "sweep job 1 of 2 (loss=ce): loss.mhe_power:"),
    (["-m", "data.batch_size=range(0,2)"], "sweep job 1 of 2 (data.batch_size=0)"),
    # sweep=alpha_beta's grid (hydra.sweeper.params) is expanded: every job sets loss.alpha.
    (["-m", "sweep=alpha_beta", "loss=ce"], "every sweep job: loss.alpha: unknown key"),
    (["hydra.mode=MULTIRUN", "loss.beta=1,-1"], "sweep job 2 of 2 (loss.beta=-1)"),
    # An Optuna search: the two corners of its space are checked (CE has no alpha to search).
    (["-m", "hparams_search=hug_alpha_beta", "loss=ce"], "every sweep job: loss.alpha: unknown"),
    (
        ["-m", "hparams_search=hug_alpha_beta", "loss.alpha=interval(-1, 1)"],
        "the search space's lower bounds (loss.alpha=-1.0 loss.beta=0.005): loss.alpha = -1.0: "
        "must be >= 0",
    ),
]


@pytest.mark.parametrize(
    ("args", "expected"), IN_PROCESS_TABLE, ids=[" ".join(args) for args, _ in IN_PROCESS_TABLE]
)
def test_bad_config_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigCheckError) as info:
        check_command_line(args)
    message = str(info.value)
    assert expected in message, message
    assert all(line.startswith("hugnc: ") for line in message.splitlines())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "overrides",
    [
        ["sweep=alpha_beta", "loss.alpha=0.15", "seed=1,2"],  # a param replaced by one value
        ["sweep=alpha_beta", "loss.beta=0.3,1.0", "loss=mhe_hug,mgd_hug"],  # by a list
        ["sweep=results_tune", "loss=mhs_hug", "loss.alpha=0.15", "optimizer.lr=0.05"],
    ],
    ids=" ".join,
)
def test_the_checked_jobs_are_the_jobs_hydra_launches(
    overrides: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The command line's value of a key in ``hydra.sweeper.params`` replaces the param's (not
    multiplied with it: 12 checked jobs for 2 launched ones took minutes), same order."""
    from hydra import initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the oracle
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("train", overrides, run_mode=RunMode.MULTIRUN)
        params = [f"{key}={value}" for key, value in master.hydra.sweeper.params.items()]
        parsed = OverridesParser.create(loader).parse_overrides([*params, *overrides])
        (launched,) = BasicSweeper.split_arguments(parsed, max_batch_size=None)
        jobs = preflight.sweep_jobs(master)
    GlobalHydra.instance().clear()
    assert [job.overrides for job in jobs] == launched
    assert jobs[-1].label.startswith(f"sweep job {len(launched)} of {len(launched)} (")


def test_every_problem_is_reported_with_its_origin() -> None:
    with pytest.raises(ConfigCheckError) as info:
        check_command_line(["loss.alpha=-1", "data=mnist", "data.batch_size=0"])
    lines = str(info.value).splitlines()
    assert "hugnc: invalid config: loss.alpha = -1: must be >= 0 (command line)" in lines
    assert "hugnc: invalid config: data.batch_size = 0: must be >= 1 (command line)" in lines
    assert len(lines) == 3  # two problems and the closing line


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


SHIPPED = [
    [f"{group}={option}"]
    for group in ("loss", "model", "trainer", "optimizer", "scheduler", "logger", "callbacks")
    for option in _options(group)
]
SHIPPED += [[f"data={o}"] for o in _options("data") if not o.startswith("split_")]
SHIPPED += [[f"experiment={o}"] for o in _options("experiment")]
# results_tune: 72 jobs, each composed and checked.
SHIPPED += [
    pytest.param(["-m", f"sweep={o}"], marks=[pytest.mark.slow] if o == "results_tune" else [])
    for o in _options("sweep")
]
SHIPPED += [["-m", f"hydra/launcher={o}", "loss.alpha=0.1,0.2"] for o in ("local", "slurm")]
# Every HUG loss has its search space (its corners are checked).
SHIPPED += [
    ["-m", "hparams_search=hug_alpha_beta", f"loss={o}"]
    for o in _options("loss")
    if o.endswith("_hug")
]
# Documented command lines (README) and those of the other CLI tests.
SHIPPED += [
    ["data=cifar10", "+data.imb_factor=0.02"],
    ["data=imagenet", "data.class_list=imagenet100.txt", "data.num_classes=100"],
    ["model=resnet18", "model.feature_dim=128", "trainer=gpu", "trainer.precision=bf16-mixed"],
    ["loss=mhe_hug", "loss.alpha=0.15", "loss.beta=1.0", "loss.mhe_power=0"],
    ["trainer.max_epochs=-1", "+trainer.limit_train_batches=5", "+trainer.fast_dev_run=true"],
    ["callbacks.neural_collapse.split=val", "callbacks.neural_collapse.max_batches=null"],
    ["~callbacks.progress_bar", "~callbacks.neural_collapse", "scheduler=none", "test=false"],
    # What resume=RUN_DIR turns into (ckpt_path must name a checkpoint: the test writes one).
    ["+logger.wandb.id=abc123", "+logger.wandb.resume=allow", "ckpt_path=<a checkpoint>"],
    ["hydra.run.dir=/x", "hydra.job.name=__main___rank1", "hydra.output_subdir=null"],
    ["-m", "loss.alpha=0.1,0.15", "loss.beta=0.015,1.0", "seed=0,1,2"],
]


@pytest.mark.parametrize("args", SHIPPED, ids=lambda a: " ".join(a))
def test_shipped_configs_are_valid(
    args: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Every option of every group composes and passes: the checks have no false positives.
    (The data itself is not needed: ImageNet is not on this machine; tests/data checks that.)"""
    monkeypatch.setattr(preflight, "_machine_problems", lambda cfg: [])
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}}, checkpoint)
    check_command_line([a.replace("<a checkpoint>", str(checkpoint)) for a in args])


@pytest.mark.parametrize("option", [o for o in _options("data") if o.startswith("split_")])
def test_continual_entry_point_checks_its_config(option: str) -> None:
    check_command_line([f"data={option}"], config_name="continual")
    with pytest.raises(ConfigCheckError, match=r"data\.num_tasks = 0: must be >= 1"):
        check_command_line([f"data={option}", "data.num_tasks=0"], "continual")
    with pytest.raises(ConfigCheckError, match=r"continual\.fresh_optimizer = 'no': must be"):
        check_command_line([f"data={option}", "continual.fresh_optimizer=no"], "continual")


@pytest.mark.parametrize("option", ["fashion_mnist", "cifar10_lt"])
def test_the_entry_points_take_their_own_kind_of_data(option: str) -> None:
    """A whole dataset is python -m hugnc's, a continual split python -m hugnc.continual's: the
    other entry point says which to use (it would fail with a traceback after setup)."""
    with pytest.raises(ConfigCheckError) as refused:
        check_command_line([f"data={option}"], config_name="continual")
    assert f"data: {option} is not a continual split" in str(refused.value)
    assert f"python -m hugnc on data={option}" in str(refused.value)
    with pytest.raises(ConfigCheckError, match="split_fashion_mnist is a continual split: run"):
        check_command_line(["data=split_fashion_mnist"])


def test_more_tasks_than_classes_is_refused_before_the_run() -> None:
    with pytest.raises(ConfigCheckError, match=r"data: cannot split 10 classes into num_tasks=20"):
        check_command_line(["data=split_fashion_mnist", "data.num_tasks=20"], "continual")
    check_command_line(["data=split_fashion_mnist", "data.num_tasks=10"], "continual")


def test_ufm_entry_point_checks_its_config() -> None:
    check_command_line(["loss=mgd_hug", "ufm.num_classes=10"], config_name="ufm")
    with pytest.raises(ConfigCheckError, match=r"ufm\.lr = 0: must be > 0 \(command line\)"):
        check_command_line(["ufm.lr=0"], config_name="ufm")
    with pytest.raises(ConfigCheckError, match=r"ufm\.schedule = 'linear': must be one of"):
        check_command_line(["ufm.schedule=linear"], config_name="ufm")


@pytest.mark.parametrize(
    "args",
    [
        ["--help", "loss.alpha=-1"],
        ["--cfg", "job", "loss.alpha=-1"],
        ["--info", "defaults", "loss.alpha=-1"],
        ["--shell-completion", "install=bash", "loss.alpha=-1"],
        ["--version"],
    ],
)
def test_commands_that_run_nothing_are_left_to_hydra(args: list[str]) -> None:
    check_command_line(args)


def test_the_check_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SKIP_ENV, "1")
    check_command_line(["loss.alpha=-1"])


def test_run_checked_exits_with_the_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def never_called() -> None:
        raise ConfigCheckError("hugnc: invalid config: loss.alpha = -1: must be >= 0")

    monkeypatch.setattr("sys.argv", ["hugnc", "loss.alpha=-1"])
    monkeypatch.setenv("HUGNC_DEBUG", "0")
    with pytest.raises(SystemExit) as info:
        run_checked(never_called, "train")
    assert info.value.code == EXIT_CODE
    assert "loss.alpha = -1: must be >= 0" in capsys.readouterr().err


def test_a_failing_check_does_not_block_the_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("schema bug")

    monkeypatch.setattr(schema, "_check_structure", broken)
    check_command_line(["loss.alpha=0.1"])  # the dry run passes: Hydra would go on
    assert "config check skipped (RuntimeError: schema bug)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        (1, float, True),
        (1.5, int, False),
        (True, int, False),
        (1, bool, False),
        ("abc", float, False),
        (None, int | None, True),
        (None, int, False),
        (32, typing.Literal[64, 32, 16], True),
        (32.0, typing.Literal[64, 32, 16], False),
        ("32", typing.Literal[64, 32, 16], False),
        ([1, 2], list[int], True),
        ([1, "a"], typing.Sequence[int], False),
        ((0.9, 0.99), tuple[float, float], True),
        ((0.9,), tuple[float, float], False),
        ("a", typing.Iterable[str], False),
        ({"a": 1}, dict[str, int], True),
        ("cuda", typing.Union[str, int], True),  # noqa: UP007  (Lightning's form)
        ("x", Path, True),
        ("x", typing.Any, True),
        ({"_target_": "x.Y"}, Exception, True),  # a class: a node Hydra may instantiate
        (3, Exception, False),
    ],
)
def test_annotation_matching(value: object, hint: object, expected: bool) -> None:
    assert fits(value, checkable(hint)) is expected


def test_signatures_follow_kwargs_to_the_base_class() -> None:
    from hugnc.data import CIFAR10DataModule
    from hugnc.loggers import wandb_logger
    from hugnc.losses import HUGLoss

    cifar = signature_of(CIFAR10DataModule)
    assert cifar.keys is not None
    assert {"download", "batch_size", "imb_factor", "val_size"} <= cifar.keys
    assert describe(cifar.hints["imb_factor"]) == "a number in (0, 1] or null"
    assert signature_of(wandb_logger).keys is None  # **kwargs go to W&B: anything is accepted
    assert signature_of(HUGLoss).required == {"variant", "alpha", "beta"}


def test_ranges_come_from_the_annotations() -> None:
    from hugnc.data import CIFAR10DataModule

    imb_factor = signature_of(CIFAR10DataModule).hints["imb_factor"]
    max_epochs = schema.THIRD_PARTY["lightning.Trainer"]["max_epochs"]
    for value, expected in [(1, True), (1e-9, True), (None, True), (0, False), (1.0001, False)]:
        assert fits(value, imb_factor) is expected
    assert not fits("0.5", imb_factor)
    assert fits(-1, max_epochs) and fits(1, max_epochs)
    assert not (fits(0, max_epochs) or fits(-2, max_epochs) or fits(True, max_epochs))
    assert describe(imb_factor, 2.0) == "in (0, 1] or null"
    assert describe(max_epochs, "x") == "an integer >= 1 or -1 or null"


def test_unknown_key_suggests_the_closest() -> None:
    problem = unknown_key_problem("data.imb_facter", ["imb_factor", "imb_type", "_target_"], "x")
    assert str(problem) == (
        "data.imb_facter: unknown key (did you mean data.imb_factor?); x takes imb_factor, imb_type"
    )


def test_output_location_that_cannot_be_made_fails_before_writing(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("a file where the logs should go")
    result = run_cli(["paths.log_dir=notes.txt/logs", "trainer.max_epochs=1"], tmp_path)
    assert result.returncode == EXIT_CODE, result.stderr
    assert "notes.txt is a file, not a directory" in result.stderr
    assert "paths.log_dir=DIR" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_output_location_problems(tmp_path: Path) -> None:
    assert output_location_problem(tmp_path / "a" / "b" / "c") is None
    assert list(tmp_path.iterdir()) == []  # the write probe leaves nothing behind
    (tmp_path / "file").touch()
    assert "is a file" in output_location_problem(tmp_path / "file" / "run")
    if Path("/proc/self").is_dir():  # writable for os.access as root, yet no directory can be made
        assert "cannot create it in /proc" in output_location_problem("/proc/hugnc/run")


def test_a_new_run_or_sweep_never_overwrites_an_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    check_command_line([f"hydra.run.dir={run}"])  # empty: nothing to lose
    torch.save({}, run / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigCheckError, match=r"holds an earlier run \(1 checkpoint"):
        check_command_line([f"hydra.run.dir={run}"])
    (run / "metrics.json").write_text('{"status": "completed"}')
    with pytest.raises(ConfigCheckError) as refused:
        check_command_line([f"hydra.run.dir={run}"])
    assert f"resume={run}" in str(refused.value) and "status completed" in str(refused.value)
    check_command_line([f"hydra.run.dir={run}", "ckpt_path=last"])  # a continuation
    # DDP rank 1 joins its job's directory (hydra_job_rank_command).
    check_command_line([f"hydra.run.dir={run}", "hydra.output_subdir=null"])

    sweep = tmp_path / "sweep"
    check_command_line(["-m", f"hydra.sweep.dir={sweep}", "seed=0,1"])
    (sweep / "1" / ".hydra").mkdir(parents=True)
    (sweep / "1" / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    check_command_line(["-m", f"hydra.sweep.dir={sweep}", "seed=0,1"])  # killed before a result
    (sweep / "1" / "metrics.json").write_text('{"status": "failed"}')
    with pytest.raises(ConfigCheckError, match=r"holds the runs of an earlier sweep \(jobs 1\)"):
        check_command_line(["-m", f"hydra.sweep.dir={sweep}", "seed=0,1"])
    assert sorted(p.name for p in sweep.iterdir()) == ["1"]


def test_checkpoint_paths_are_checked_before_the_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "old_run"
    assert checkpoint_problem(None, run_dir) is None
    assert checkpoint_problem("best", run_dir) is None  # Lightning's own keyword, for test/fit
    for resolved_by_lightning in ("hpc", "registry", "registry:hug-model", "s3://bucket/a.ckpt"):
        assert checkpoint_problem(resolved_by_lightning, run_dir) is None
    assert "ckpt_path=last: no " in checkpoint_problem("last", run_dir)
    assert "resume=RUN_DIR" in checkpoint_problem("last", run_dir)
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({}, run_dir / "checkpoints" / "last.ckpt")
    # hydra.run.dir=OLD ckpt_path=last: continues the old run.
    assert checkpoint_problem("last", run_dir) is None
    assert checkpoint_problem(str(run_dir / "checkpoints" / "last.ckpt"), tmp_path) is None
    missing = tmp_path / "nope.ckpt"
    assert checkpoint_problem(str(missing), run_dir) == f"ckpt_path={missing}: no such file"
