"""The continual driver: accuracy-matrix formulas, task masking, optimizer carry-over, and
task-after-task training on real Fashion-MNIST."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hugnc.continual import (
    CarryOptimizerState,
    TaskMaskedHead,
    average_accuracy,
    average_forgetting,
    train_continual,
)
from hugnc.models import LinearHead
from hugnc.train import train

# A hand-made accuracy matrix: R[t][i] = accuracy on task i after training on task t.
R = [
    [0.90, None, None, None],
    [0.60, 0.80, None, None],
    [0.70, 0.50, 0.95, None],
    [0.30, 0.40, 0.85, 0.70],
]


def test_average_accuracy_by_hand() -> None:
    assert average_accuracy(R) == pytest.approx((0.30 + 0.40 + 0.85 + 0.70) / 4)
    assert average_accuracy(R, 0) == pytest.approx(0.90)
    assert average_accuracy(R, 2) == pytest.approx((0.70 + 0.50 + 0.95) / 3)


def test_average_forgetting_by_hand() -> None:
    # task 0: best 0.90 before the end, now 0.30; task 1: best 0.80, now 0.40; task 2: 0.95 -> 0.85.
    expected = ((0.90 - 0.30) + (0.80 - 0.40) + (0.95 - 0.85)) / 3
    assert average_forgetting(R) == pytest.approx(expected)
    assert average_forgetting(R, 0) == 0.0
    # After task 2: task 0 best 0.90 -> 0.70, task 1 best 0.80 -> 0.50.
    assert average_forgetting(R, 2) == pytest.approx(((0.90 - 0.70) + (0.80 - 0.50)) / 2)
    # An improved earlier task gives negative forgetting (backward transfer).
    assert average_forgetting([[0.5, None], [0.7, 0.9]]) == pytest.approx(-0.2)


def test_task_masked_head_predicts_only_task_classes() -> None:
    torch.manual_seed(0)
    head = TaskMaskedHead(LinearHead(feature_dim=3, num_classes=6), num_classes=6)
    assert head.classifier is head.head.classifier
    features = torch.randn(200, 3)
    assert len(head.logits(features).argmax(1).unique()) > 2
    head.set_classes([1, 4])
    assert set(head.logits(features).argmax(1).tolist()) <= {1, 4}
    loss = torch.nn.functional.cross_entropy(head(features), torch.full((200,), 4))
    assert torch.isfinite(loss)


def test_carry_optimizer_state_keeps_momentum_not_learning_rate() -> None:
    weight = torch.nn.Parameter(torch.ones(3))
    first = torch.optim.SGD([weight], lr=0.5, momentum=0.9)
    weight.grad = torch.ones(3)
    first.step()
    carry = CarryOptimizerState()
    carry.on_fit_end(SimpleNamespace(optimizers=[first]), None)
    second = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    carry.on_fit_start(SimpleNamespace(optimizers=[second]), None)
    torch.testing.assert_close(second.state[weight]["momentum_buffer"], torch.ones(3))
    assert second.param_groups[0]["lr"] == 0.1


FAST = (
    "model.widths=[8,8,8]",
    "model.kernel_size=3",
    "~callbacks.progress_bar",
    "~callbacks.neural_collapse",
    "data.batch_size=64",
    "data.eval_batch_size=256",
)


@pytest.mark.real_data
def test_driver_on_real_fashion_mnist(compose_cfg) -> None:
    cfg = compose_cfg(
        *FAST,
        "data=split_fashion_mnist",
        "trainer=cpu",
        "trainer.max_epochs=1",
        "debug=limit",
        "trainer.limit_train_batches=4",
        "trainer.limit_test_batches=2",
        "logger=csv",
        "loss=ce",
        "optimizer.lr=0.05",
        config_name="continual",
    )
    assert cfg.task_name == "continual" and cfg.continual.fresh_optimizer is True
    results = train_continual(cfg)
    matrix = results["accuracy_matrix"]
    assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
    for t, row in enumerate(matrix):
        assert all(0.0 <= a <= 1.0 for a in row[: t + 1]) and row[t + 1 :] == [None] * (4 - t)
    # A few CE steps per task: the model moves to the new task's classes (10-way chance: 10%)
    # and, plain fine-tuning, forgets the earlier ones.
    assert sum(matrix[t][t] for t in range(5)) / 5 > 0.3, matrix
    assert results["average_forgetting"] > 0.1, matrix
    assert results["average_accuracy"] == pytest.approx(average_accuracy(matrix))
    assert results["average_forgetting"] == pytest.approx(average_forgetting(matrix))
    assert [p["average_accuracy"] for p in results["per_task"]] == pytest.approx(
        [average_accuracy(matrix, t) for t in range(5)]
    )
    run_dir = Path(cfg.paths.output_dir)
    assert json.loads((run_dir / "continual.json").read_text()) == results
    status = json.loads((run_dir / "metrics.json").read_text())
    assert status["status"] == "completed"
    assert status["continual/average_forgetting"] == results["average_forgetting"]
    # The loggers got R row by row, with the summaries, after every task.
    (metrics_csv,) = run_dir.glob("csv/**/metrics.csv")
    rows = [r for r in csv.DictReader(metrics_csv.open()) if r.get("continual/task")]
    assert [int(float(r["continual/task"])) for r in rows] == list(range(5))
    assert float(rows[-1]["continual/acc_task_0"]) == pytest.approx(matrix[4][0])
    assert float(rows[2]["continual/average_accuracy"]) == pytest.approx(
        average_accuracy(matrix, 2)
    )
    # One checkpoint folder per task.
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        f"task_{t}" for t in range(5)
    ]


def test_task_incremental_with_carried_optimizer(compose_cfg) -> None:
    cfg = compose_cfg(
        *FAST,
        "data=split_fashion_mnist",
        "data.num_tasks=2",
        "data.scenario=task",
        "continual.fresh_optimizer=false",
        "trainer=debug",
        "logger=none",
        config_name="continual",
    )
    results = train_continual(cfg)
    assert results["scenario"] == "task" and len(results["tasks"]) == 2
    assert [len(task) for task in results["tasks"]] == [5, 5]
    assert all(entry is not None for entry in results["accuracy_matrix"][1])


def test_split_config_in_plain_training_is_one_clear_error(compose_cfg) -> None:
    cfg = compose_cfg(*FAST, "data=split_fashion_mnist", "trainer=debug", "logger=none")
    with pytest.raises(RuntimeError, match=r"configs with `python -m hugnc\.continual`"):
        train(cfg)


def test_continual_driver_refuses_plain_data(compose_cfg) -> None:
    cfg = compose_cfg(*FAST, "data=fashion_mnist", "trainer=debug", config_name="continual")
    with pytest.raises(ValueError, match="needs a continual split as data"):
        train_continual(cfg)
    status = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert status["status"] == "failed" and "continual split" in status["error"]
