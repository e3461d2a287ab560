"""`hugnc-geometry RUN_DIR` and the run-loading library behind it, on a real tiny run."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.outputs import GEOMETRY_PICTURES

from hugnc.run_dir import load_run_config
from hugnc.tools.geometry import gnc_prediction, main

pytestmark = pytest.mark.real_data


@pytest.mark.slow
def test_console_script_recomputes_the_runs_numbers(tiny_run_dir: Path, tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "hugnc-geometry"
    out = tmp_path / "geometry"
    result = subprocess.run(
        [str(script), str(tiny_run_dir), "--checkpoint", "last", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["samples"] == {"train": 2048, "test": 2048}
    # Same subset, same weights, same code path as the training callback at that epoch.
    epoch = torch.load(Path(saved["checkpoint"]), map_location="cpu", weights_only=False)["epoch"]
    history = json.loads((tiny_run_dir / "nc_history.json").read_text())
    measured = history[epoch]
    assert saved["train"].keys() == measured.keys() - {"epoch"}
    for name, value in saved["train"].items():
        assert value == pytest.approx(measured[name], rel=1e-9, abs=1e-12), name
    assert math.isfinite(saved["test"]["nc4"]) and saved["test"]["nc4"] != saved["train"]["nc4"]
    for name in GEOMETRY_PICTURES:
        assert (out / name).stat().st_size > 10_000, name
    assert "nc1_trace_ratio" in result.stdout and "regular 10-gon" in result.stdout


def test_not_a_run_dir_is_one_clear_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "is not a hugnc run directory: no .hydra/config.yaml" in capsys.readouterr().err


def test_run_without_checkpoint_says_so(tiny_run_dir: Path, tmp_path: Path, capsys) -> None:
    shutil.copytree(tiny_run_dir / ".hydra", tmp_path / ".hydra")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no checkpoint in" in capsys.readouterr().err


class _WritesAFile:
    """A pickled object whose unpickling creates a file: what a malicious checkpoint can do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_from_elsewhere_cannot_run_code(
    tiny_run_dir: Path, tmp_path: Path, capsys
) -> None:
    """A shared run directory whose checkpoint names code: refused in one line, the code never
    runs; --trust-checkpoint (the user's own file) loads it."""
    run = tmp_path / "shared_run"
    shutil.copytree(tiny_run_dir, run, ignore=shutil.ignore_patterns("wandb", "geometry"))
    marker = tmp_path / "payload_ran"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state["payload"] = _WritesAFile(marker)
    for checkpoint in (run / "checkpoints").glob("*.ckpt"):
        torch.save(state, checkpoint)
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "--checkpoint", "last", "--max-batches", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "would run code named in the file" in err and "--trust-checkpoint" in err
    assert "Traceback" not in err
    assert not marker.exists()
    main([str(run), "--checkpoint", "last", "--max-batches", "1", "--trust-checkpoint"])
    assert marker.exists()


@pytest.mark.parametrize("damage", ["text", "truncated", "zip-without-pickle"])
def test_a_file_that_is_no_checkpoint_is_one_clear_error(
    tiny_run_dir: Path, tmp_path: Path, capsys, damage: str
) -> None:
    """Not a checkpoint (a text file, a copy cut short, another zip) is said so: neither a
    traceback nor the advice to trust the file."""
    import zipfile

    path = tmp_path / "given.ckpt"
    if damage == "text":
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif damage == "truncated":
        data = (tiny_run_dir / "checkpoints" / "last.ckpt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_run_dir), "--checkpoint", str(path), "--max-batches", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    line = err.strip().splitlines()[-1]  # after argparse's usage
    assert "Traceback" not in err and str(path) in line and "--trust-checkpoint" not in line
    assert "not a PyTorch checkpoint" in line or "cannot be read as a checkpoint" in line


def test_moved_run_dir_resolves_to_its_new_place(tiny_run_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(tiny_run_dir / ".hydra", moved / ".hydra")
    cfg = load_run_config(moved)
    assert cfg.paths.output_dir == str(moved.resolve())
    assert cfg.callbacks.neural_collapse.output_dir == str(moved.resolve())
    assert cfg.callbacks.neural_collapse.max_batches == 2
    assert load_run_config(moved, data_dir="/elsewhere").data.data_dir == "/elsewhere"


@pytest.mark.parametrize(
    ("num_classes", "dim", "expected"),
    [(10, 2, "regular 10-gon"), (10, 2, "36.0 degrees"), (4, 3, "-0.3333"), (10, 3, "Tammes")],
)
def test_gnc_prediction_names_the_optimum(num_classes: int, dim: int, expected: str) -> None:
    assert expected in gnc_prediction(num_classes, dim)


def test_damaged_data_is_one_line(
    tiny_run_dir: Path, fashion_mnist_dir: Path, tmp_path: Path, capsys
) -> None:
    """An error the user can fix while the tool runs (here a damaged data file): one line with
    the tool's name and exit code 2, no traceback."""
    shutil.copytree(fashion_mnist_dir, tmp_path / "data")
    images = next((tmp_path / "data").rglob("t10k-images-idx3-ubyte"))
    images.write_bytes(images.read_bytes()[:1000])
    code = main([str(tiny_run_dir), "--data-dir", str(tmp_path / "data"), "--max-batches", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("hugnc-geometry: ") and "is damaged" in err and "Traceback" not in err
