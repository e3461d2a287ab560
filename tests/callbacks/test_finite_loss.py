"""A NaN loss stops training at once, names the step and terms, and keeps earlier checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from hugnc.callbacks import NonFiniteLossError
from hugnc.train import train


@pytest.mark.real_data
def test_diverging_run_stops_with_a_clear_error(compose_cfg) -> None:
    # lr=1e30 makes the weights (and so the features and the loss) overflow after a few steps.
    cfg = compose_cfg(
        "loss=ce",
        "trainer=cpu",
        "trainer.max_epochs=3",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "logger=none",
        "~callbacks.progress_bar",
        "~callbacks.neural_collapse",
        "model.widths=[4,4,4]",
        "model.kernel_size=3",
        "data.batch_size=32",
        "optimizer.lr=1e30",
        "scheduler=none",
    )
    with pytest.raises(NonFiniteLossError) as error:
        train(cfg)
    message = str(error.value)
    assert "non-finite training loss at epoch" in message and "loss=" in message
    assert "loss.alpha / loss.beta" in message
    run_dir = Path(cfg.paths.output_dir)
    assert '"status": "failed"' in (run_dir / "metrics.json").read_text()
    assert "NonFiniteLossError" in (run_dir / "metrics.json").read_text()


def test_hug_terms_are_named(compose_cfg) -> None:
    cfg = compose_cfg(
        "loss=mhe_hug",
        "loss.beta=1e40",
        "trainer=debug",
        "logger=none",
        "~callbacks.progress_bar",
        "~callbacks.neural_collapse",
        "data.batch_size=8",
    )
    with pytest.raises(
        NonFiniteLossError, match=r"loss=inf, loss_intra=[0-9.]+, loss_inter=[0-9.]+"
    ):
        train(cfg)
