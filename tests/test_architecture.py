"""docs/ARCHITECTURE.md's dependency rules, checked on the import graph of src/hugnc."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hugnc"
#: annotated_types: the ranges in constructor annotations (hugnc.arguments judges them).
THIRD_PARTY_OK = {"torch", "torchmetrics", "numpy", "annotated_types"}


def _imports(path: Path) -> set[str]:
    """Every module a file imports (absolute names, also imports inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def _external(name: str) -> bool:
    top = name.split(".")[0]
    return top != "hugnc" and top not in sys.stdlib_module_names and top != "__future__"


@pytest.mark.parametrize("package", ["losses", "metrics"])
def test_math_packages_import_only_torch(package: str) -> None:
    for path in _files(package):
        for name in _imports(path):
            if _external(name):
                assert name.split(".")[0] in THIRD_PARTY_OK, f"{path.name} imports {name}"
            if name.startswith("hugnc."):
                allowed = (f"hugnc.{package}", "hugnc.devices", "hugnc.losses", "hugnc.arguments")
                assert name.startswith(allowed), f"{path.name} imports {name}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("data", ("hugnc.models", "hugnc.losses", "hugnc.module", "hugnc.callbacks")),
        ("models", ("hugnc.losses", "hugnc.callbacks", "hugnc.module")),
        ("tools", ("hugnc.callbacks",)),
        ("metrics", ("hugnc.callbacks", "hugnc.module")),
    ],
)
def test_layers_do_not_reach_up(package: str, forbidden: tuple[str, ...]) -> None:
    for path in _files(package):
        bad = [name for name in _imports(path) if name.startswith(forbidden)]
        assert not bad, f"{package}/{path.name} imports {bad}"


LAYOUT_LITERALS = ('"last.ckpt"', '".hydra"', '"checkpoints"', '/ "metrics.json"', '/ "wandb"')


def test_only_run_dir_spells_the_run_directory_layout() -> None:
    for path in SRC.rglob("*.py"):
        if path.name == "run_dir.py":
            continue
        text = path.read_text()
        found = [literal for literal in LAYOUT_LITERALS if literal in text]
        assert not found, f"{path.relative_to(SRC)} spells {found}: ask hugnc.run_dir"


def test_training_code_never_asks_which_loss_it_has() -> None:
    """The module and the UFM know only the Criterion interface."""
    for name in ("module.py", "ufm.py", "train.py"):
        for node in ast.walk(ast.parse((SRC / name).read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "hugnc.losses":
                imported = {alias.name for alias in node.names}
                assert imported <= {"Criterion", "ClassifierHead"}, (name, imported)
