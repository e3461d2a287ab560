"""What the optimizer does to the network, per epoch: the measurements behind "why is HUG slow?".

HUG's only gradient into the backbone is ``beta`` times its intra-class term, and with batch norm
and normalized features the backbone is scale-invariant (:mod:`hugnc.metrics.dynamics`), so how
fast it learns is set by the effective step size ``lr / ||w||^2``, which weight decay raises over
time. This callback logs, per training epoch (``dynamics/*``, every logger, W&B included):

- ``weight_norm``: ``sqrt(sum ||w_l||^2)`` over the backbone's scale-invariant weights;
- ``effective_lr``: mean over those layers of ``lr / ||w_l||^2`` (lr of the epoch's start);
- ``angular_update_deg``: mean angle (degrees) the scale-invariant weights rotate in one optimizer
  step, measured every ``every_n_steps`` steps (mean over layers, then over measured steps);
- ``feature_grad_norm``: mean over steps of ``||dL/dF||_F``, the gradient of the loss reaching the
  batch's features ``F [B, d]`` (this rank's batch; under ``16-mixed`` it includes the loss scale);
- ``intra_distance``: sample mean of ``||x_i/||x_i|| - w_y/||w_y||||`` of the training features to
  their class's classifier row (HUG: its intra term up to class balancing; CE: the linear rows);
- ``classifier_min_angle_deg``: smallest pairwise angle of the classifier rows (HUG: proxies);
- ``clipped_fraction``: only with norm clipping (``trainer.gradient_clip_val``), the fraction of
  the epoch's optimizer steps whose gradient norm over all parameters exceeded the threshold, so
  a run that needed clipping says how often it bound.

Everything accumulates on the device and is read once per epoch (no host sync per step). The
history survives ``resume=`` (callback state in the checkpoint) and is written at the end of
training as ``dynamics_history.json`` and ``dynamics_curves.png`` in ``output_dir``.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from hugnc.callbacks._lightning import backbone, fast_dev_run, head
from hugnc.losses.intra import intra_class_distance
from hugnc.losses.uniformity import min_pairwise_sq_distance
from hugnc.metrics.dynamics import (
    angular_update,
    effective_step_size,
    scale_invariant_weights,
    squared_norms,
)
from hugnc.metrics.neural_collapse import angle_deg_from_sq_distance
from hugnc.plots import dynamics_curves_figure

#: Slots of the per-epoch accumulator: sums and their counts.
_ANGLE, _ANGLE_N, _GRAD, _GRAD_N, _INTRA, _INTRA_N, _CLIPPED, _CLIPPED_N = range(8)


class TrainingDynamicsMonitor(Callback):
    """Per-epoch optimization dynamics (see the module docstring for each ``dynamics/*`` value).

    Args:
        output_dir: where ``dynamics_history.json`` and ``dynamics_curves.png`` go.
        every_n_steps: measure the angular update every this many optimizer steps (each
            measurement copies the scale-invariant weights once: small next to a step).
        plots: write the picture (the history JSON is written either way).
    """

    def __init__(self, output_dir: str | Path, every_n_steps: int = 10, plots: bool = True) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.output_dir = Path(output_dir)
        self.every_n_steps = every_n_steps
        self.plots = plots
        self.history: list[dict[str, float]] = []
        self._weights: list[Tensor] = []
        self._snapshot: list[Tensor] | None = None
        self._sums: Tensor | None = None
        self._capturing = False
        self._epoch_lr = math.nan
        self._hook: Any = None

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._weights = [w for _, w in scale_invariant_weights(backbone(pl_module))]
        if self._hook is None:
            self._hook = backbone(pl_module).register_forward_hook(self._on_backbone_output)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _on_backbone_output(self, module: Any, inputs: Any, output: Tensor) -> None:
        if self._capturing and isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(self._on_feature_grad)

    def _on_feature_grad(self, grad: Tensor) -> None:
        if self._sums is not None:
            self._sums[_GRAD] += torch.linalg.vector_norm(grad.detach().float())
            self._sums[_GRAD_N] += 1.0

    # -- training -------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._sums = torch.zeros(8, device=pl_module.device)
        self._epoch_lr = float(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._capturing = True
        if self._weights and trainer.global_step % self.every_n_steps == 0:
            self._snapshot = [w.detach().clone() for w in self._weights]

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: LightningModule, optimizer: Any
    ) -> None:
        # Lightning calls this hook before it clips (and, under 16-mixed, after unscaling).
        threshold = trainer.gradient_clip_val
        if self._sums is None or not threshold or trainer.gradient_clip_algorithm == "value":
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            self._sums[_CLIPPED] += (norm > float(threshold)).float()
            self._sums[_CLIPPED_N] += 1.0

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._capturing = False
        if self._sums is None:
            return
        with torch.no_grad():
            if self._snapshot is not None:
                angles = angular_update(self._snapshot, self._weights)
                self._sums[_ANGLE] += torch.rad2deg(angles.mean())
                self._sums[_ANGLE_N] += 1.0
                self._snapshot = None
            if isinstance(outputs, dict) and "features" in outputs:
                targets = outputs["targets"]
                intra = intra_class_distance(
                    outputs["features"].float(), head(pl_module).classifier, targets
                )
                self._sums[_INTRA] += intra * len(targets)
                self._sums[_INTRA_N] += len(targets)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._sums is None:
            return
        sums = trainer.strategy.reduce(self._sums, reduce_op="sum")
        self._sums = None
        with torch.no_grad():
            values = {
                "angular_update_deg": sums[_ANGLE] / sums[_ANGLE_N],
                "feature_grad_norm": sums[_GRAD] / sums[_GRAD_N],
                "intra_distance": sums[_INTRA] / sums[_INTRA_N],
                "classifier_min_angle_deg": angle_deg_from_sq_distance(
                    min_pairwise_sq_distance(head(pl_module).classifier.detach())
                ),
            }
            if sums[_CLIPPED_N] > 0:
                values["clipped_fraction"] = sums[_CLIPPED] / sums[_CLIPPED_N]
            if self._weights:
                values["weight_norm"] = squared_norms(self._weights).sum().sqrt()
                values["effective_lr"] = effective_step_size(self._epoch_lr, self._weights)
        # The values are global already (sums reduced over ranks, weights identical on every
        # rank). Not sync_dist: Lightning's epoch-end sync of values logged from a callback hook
        # issued mismatched collectives across gloo ranks (tests/test_distributed.py).
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            for name, value in values.items():
                pl_module.log(f"dynamics/{name}", value.float(), on_epoch=True, sync_dist=False)
        # One host read per epoch.
        entry = {name: float(value) for name, value in values.items()}
        self.history.append(
            {"epoch": trainer.current_epoch, "step": trainer.global_step, "lr": self._epoch_lr}
            | entry
        )

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.history or trainer.global_rank != 0 or fast_dev_run(trainer):
            return
        paths = save_dynamics(self.history, self.output_dir, plots=self.plots)
        rank_zero_info(f"training dynamics: {', '.join(str(p) for p in paths)}")

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


def save_dynamics(
    history: list[dict[str, float]], output_dir: str | Path, plots: bool = True
) -> list[Path]:
    """Write ``dynamics_history.json`` (NaN as null) and, with ``plots``,
    ``dynamics_curves.png``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "dynamics_history.json"
    clean = [{k: (v if math.isfinite(v) else None) for k, v in e.items()} for e in history]
    path.write_text(json.dumps(clean, indent=1))
    paths = [path]
    if plots:
        figure = dynamics_curves_figure(history)
        paths.append(output_dir / "dynamics_curves.png")
        figure.savefig(paths[-1], dpi=100)
        plt.close(figure)
    return paths


__all__ = ["TrainingDynamicsMonitor", "save_dynamics"]
