"""No host-device synchronization in a training step (the GPU goal, checked on the CPU).

A GPU host waits for the device whenever a tensor's value is read (``.item()``, ``bool()``,
``nonzero``, ``bincount``'s min/max...). The CPU has no such wait, but the same reads are visible
as aten ops: a TorchDispatchMode counts them in each training step of a real fit with the default
callbacks, the FiniteLossGuard in its accelerator mode (deferred reads), and the progress bar on.
"""

from __future__ import annotations

import pytest
from lightning import Callback
from torch.utils._python_dispatch import TorchDispatchMode

from hugnc import devices
from hugnc.train import train

#: aten ops that read a device tensor's value on the host (each one a sync on a GPU).
SYNCING_OPS = {
    "_local_scalar_dense",  # .item(), float(), bool(), int()
    "nonzero",
    "bincount",
    "unique",
    "_unique2",
    "masked_select",
    "is_nonzero",
    "equal",
    "one_hot",
}
#: Steps where reads are documented: Lightning's logging every log_every_n_steps, the guard and the
#: progress bar every 50 steps.
LOG_EVERY, READ_EVERY = 20, 50


class SyncCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS:
            self.count += 1
            self.names.append(name)
        return func(*args, **(kwargs or {}))


class PerStep(Callback):
    def __init__(self, counter: SyncCounter) -> None:
        self.counter = counter
        self.per_step: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = len(self.counter.names)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # global_step is the number of optimizer steps done, this one included.
        self.per_step[trainer.global_step] = self.counter.names[self.start :]


@pytest.mark.real_data
@pytest.mark.parametrize("loss", ["mhe_hug", "mgd_hug", "ce"])
def test_training_steps_read_nothing_from_the_device(
    compose_cfg, monkeypatch: pytest.MonkeyPatch, loss: str
) -> None:
    monkeypatch.setattr(devices, "host_reads_are_free", lambda device: False)
    counter = SyncCounter()
    per_step = PerStep(counter)
    cfg = compose_cfg(
        f"loss={loss}",
        "logger=csv",
        "data.batch_size=32",
        "data.train_subset=2048",
        "trainer.max_epochs=1",
        "debug=limit",
        "trainer.limit_train_batches=60",
        f"trainer.log_every_n_steps={LOG_EVERY}",
        "test=false",
        "~callbacks.neural_collapse",
        "~callbacks.training_dynamics",
        "model.widths=[4,8,8]",
    )
    with counter:
        train(cfg, extra_callbacks=[per_step])
    assert len(per_step.per_step) == 60
    documented = {s for s in per_step.per_step if s % LOG_EVERY == 0 or s % READ_EVERY == 0}
    syncing = {
        step: names
        for step, names in per_step.per_step.items()
        if names and step not in documented and step != 1
    }
    assert not syncing, f"host reads in training steps: {syncing}"
