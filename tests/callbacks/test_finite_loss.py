"""A NaN loss stops training at once, names the step and terms, and keeps earlier checkpoints."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hugnc import devices
from hugnc.callbacks import FiniteLossGuard, NonFiniteLossError
from hugnc.train import train

# lr=1e30 makes the weights (and so the features and the loss) overflow after a few steps.
DIVERGING_RUN = (
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


@pytest.mark.real_data
def test_diverging_run_stops_with_a_clear_error(compose_cfg) -> None:
    cfg = compose_cfg(*DIVERGING_RUN)
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


class _Trainer:
    """What the guard reads of a Trainer."""

    def __init__(self) -> None:
        self.current_epoch, self.global_step = 0, 0
        self.checkpoint_callback = SimpleNamespace(last_model_path="/runs/x/checkpoints/last.ckpt")
        # One process: Lightning's single-device strategy returns the tensor as it is.
        self.strategy = SimpleNamespace(reduce=lambda tensor, reduce_op: tensor)


def _step(guard: FiniteLossGuard, trainer: _Trainer, loss: float) -> None:
    trainer.global_step += 1
    terms = {"loss": torch.tensor(loss), "loss_intra": torch.tensor(0.5)}
    outputs = {"loss": terms["loss"].clone().requires_grad_(), "loss_terms": terms}
    guard.on_train_batch_end(trainer, None, outputs, None, trainer.global_step - 1)


def test_on_the_cpu_every_step_is_read_at_once() -> None:
    guard, trainer = FiniteLossGuard(every_n_steps=50), _Trainer()
    _step(guard, trainer, 1.0)
    with pytest.raises(NonFiniteLossError, match=r"step 2 \(batch 1\): loss=nan, loss_intra=0.5"):
        _step(guard, trainer, float("nan"))


def test_on_accelerators_the_first_bad_step_is_named_when_read(monkeypatch) -> None:
    # As on a GPU: reading the loss would synchronize, so steps are read every 5.
    monkeypatch.setattr(devices, "host_reads_are_free", lambda device: False)
    guard, trainer = FiniteLossGuard(every_n_steps=5), _Trainer()
    for loss in (1.0, 2.0, 3.0, 4.0, 5.0, 1.0):  # steps 1-5 read together, all finite
        _step(guard, trainer, loss)
    _step(guard, trainer, float("inf"))  # step 7: bad, not read yet
    _step(guard, trainer, float("nan"))  # step 8
    _step(guard, trainer, 1.0)  # step 9
    with pytest.raises(NonFiniteLossError) as error:
        _step(guard, trainer, 1.0)  # step 10: the 5 pending steps are read
    message = str(error.value)
    assert "at epoch 0, step 7 (batch 6) (read at step 10): loss=inf, loss_intra=0.5" in message
    assert "Last good checkpoint: /runs/x/checkpoints/last.ckpt" in message


@pytest.mark.parametrize(
    "hook", ["on_save_checkpoint", "on_validation_start", "on_train_epoch_end", "on_train_end"]
)
def test_pending_steps_are_read_before_checkpoints_and_at_epoch_ends(monkeypatch, hook) -> None:
    monkeypatch.setattr(devices, "host_reads_are_free", lambda device: False)
    guard, trainer = FiniteLossGuard(every_n_steps=100), _Trainer()
    _step(guard, trainer, 1.0)
    _step(guard, trainer, float("nan"))
    arguments = (trainer, None, {}) if hook == "on_save_checkpoint" else (trainer, None)
    with pytest.raises(NonFiniteLossError, match=r"step 2 \(batch 1\): loss=nan"):
        getattr(guard, hook)(*arguments)
    getattr(guard, hook)(*arguments)  # read once: nothing pending any more


@pytest.mark.real_data
def test_deferred_reads_never_checkpoint_a_diverged_model(compose_cfg, monkeypatch) -> None:
    monkeypatch.setattr(devices, "host_reads_are_free", lambda device: False)
    cfg = compose_cfg(*DIVERGING_RUN, "callbacks.finite_loss.every_n_steps=1000")
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at epoch 0, step"):
        train(cfg)
    # Found before the first validation and its checkpoints, though never read within the steps.
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def _nan_on_rank_1_body(rank: int, world_size: int, out_dir: str) -> None:
    import json
    from pathlib import Path
    from types import SimpleNamespace

    import torch
    import torch.distributed as dist

    from hugnc.callbacks import FiniteLossGuard, NonFiniteLossError

    def reduce(tensor, reduce_op):
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=getattr(dist.ReduceOp, reduce_op.upper()))
        return tensor

    trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce=reduce),
        current_epoch=0,
        global_step=0,
        checkpoint_callback=None,
    )
    guard = FiniteLossGuard(every_n_steps=1)
    stopped_at, message = None, ""
    for step in range(6):
        trainer.global_step = step + 1
        loss = float("nan") if (rank == 1 and step == 3) else 1.0
        try:
            guard.on_train_batch_end(trainer, None, {"loss": torch.tensor(loss)}, None, step)
        except NonFiniteLossError as error:
            stopped_at, message = step, str(error)
            break
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps([stopped_at, message]))


def test_nan_on_one_ddp_rank_stops_every_rank_at_that_step(tmp_path) -> None:
    import json

    from helpers.two_ranks import run_two_ranks

    run_two_ranks(_nan_on_rank_1_body, tmp_path, timeout=60)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [step for step, _ in results] == [3, 3]
    assert "loss=nan" in results[1][1] and "on another DDP rank" in results[0][1]
    assert all("step 4 (batch 3)" in message for _, message in results)
