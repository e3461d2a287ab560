"""TrainingDynamicsMonitor: its values against independent recomputation, in a real short fit."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hugnc.callbacks import TrainingDynamicsMonitor
from hugnc.callbacks.training_dynamics import _CLIPPED, _CLIPPED_N, _GRAD, _GRAD_N
from hugnc.metrics.dynamics import scale_invariant_weights
from hugnc.train import build_module, train

SHORT_FIT = (
    "experiment=paper_budget",
    "logger=csv",
    "data.train_subset=512",
    "trainer.max_epochs=2",
    "debug=limit",
    "trainer.limit_train_batches=4",
    "test=false",
    "callbacks.neural_collapse.max_batches=1",
    "callbacks.training_dynamics.every_n_steps=2",
)


def test_feature_gradient_norm_is_the_gradient_reaching_the_features(compose_cfg) -> None:
    cfg = compose_cfg("experiment=paper_budget", "loss=mgd_hug", "model.feature_dim=8")
    module = build_module(cfg, (1, 28, 28))
    monitor = TrainingDynamicsMonitor(output_dir="unused")
    monitor.setup(SimpleNamespace(), module, "fit")
    images, targets = torch.randn(32, 1, 28, 28), torch.arange(32) % 10

    # Reference: autograd's gradient of the loss with respect to the features.
    features = module.features(images)
    loss = module.criterion(features, module.head.classifier, targets).loss
    (reference,) = torch.autograd.grad(loss, features)

    monitor._sums = torch.zeros(8)
    monitor._capturing = True
    module.criterion(module.features(images), module.head.classifier, targets).loss.backward()
    assert monitor._sums[_GRAD_N].item() == 1.0
    assert monitor._sums[_GRAD].item() == pytest.approx(reference.norm().item(), rel=1e-5)
    # Not capturing (validation, or outside training steps): nothing is hooked.
    monitor._capturing = False
    module.criterion(module.features(images), module.head.classifier, targets).loss.backward()
    assert monitor._sums[_GRAD_N].item() == 1.0
    monitor.teardown(SimpleNamespace(), module, "fit")
    assert not module.backbone._forward_hooks


def test_clipped_steps_are_those_whose_total_gradient_norm_exceeds_the_threshold(
    compose_cfg,
) -> None:
    cfg = compose_cfg("experiment=paper_budget", "loss=ce", "model.feature_dim=2")
    module = build_module(cfg, (1, 28, 28))
    images, targets = torch.randn(16, 1, 28, 28), torch.arange(16) % 10
    torch.nn.functional.cross_entropy(module(images), targets).backward()
    # Naive reference: the 2-norm of every gradient entry of the model, concatenated.
    norm = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None]).norm()

    monitor = TrainingDynamicsMonitor(output_dir="unused")
    monitor._sums = torch.zeros(8)
    for threshold, algorithm in [(0.99, "norm"), (1.01, None), (0.5, "value"), (None, None)]:
        trainer = SimpleNamespace(
            gradient_clip_val=None if threshold is None else threshold * norm.item(),
            gradient_clip_algorithm=algorithm,
        )
        monitor.on_before_optimizer_step(trainer, module, optimizer=None)
    # Only the two norm-clipped steps count; the one below the norm was clipped.
    assert monitor._sums[_CLIPPED_N].item() == 2.0
    assert monitor._sums[_CLIPPED].item() == 1.0


@pytest.mark.real_data
@pytest.mark.parametrize("loss", ["ce", "mhe_hug"])
def test_short_fit_logs_dynamics_that_match_the_final_weights(compose_cfg, loss: str) -> None:
    # CE also clips with a threshold below any gradient norm: every step is clipped.
    clipping = ("+trainer.gradient_clip_val=1e-9",) if loss == "ce" else ()
    cfg = compose_cfg(*SHORT_FIT, f"loss={loss}", *clipping)
    metrics = train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    history = json.loads((run_dir / "dynamics_history.json").read_text())
    assert [entry["epoch"] for entry in history] == [0, 1]
    assert [entry["step"] for entry in history] == [4, 8]
    assert (run_dir / "dynamics_curves.png").stat().st_size > 10_000
    last = history[-1]
    for key in ("angular_update_deg", "feature_grad_norm", "intra_distance", "weight_norm"):
        assert math.isfinite(last[key]) and last[key] > 0, key
        assert metrics[f"dynamics/{key}"] == pytest.approx(last[key], rel=1e-5)
    if clipping:
        assert [entry["clipped_fraction"] for entry in history] == [1.0, 1.0]
    else:
        assert "clipped_fraction" not in last

    # Recompute from the final weights (the last epoch's values are measured after its last step).
    module = build_module(cfg, (1, 28, 28))
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    module.load_state_dict(checkpoint["state_dict"])
    weights = [w for _, w in scale_invariant_weights(module.backbone)]
    squared = torch.stack([w.detach().pow(2).sum() for w in weights])
    assert last["weight_norm"] == pytest.approx(squared.sum().sqrt().item(), rel=1e-5)
    assert last["effective_lr"] == pytest.approx((0.1 / squared).mean().item(), rel=1e-5)
    unit = torch.nn.functional.normalize(module.head.classifier.detach().double(), dim=1)
    cosines = (unit @ unit.T).fill_diagonal_(-1.0)
    naive_min_angle = math.degrees(math.acos(cosines.max().item()))
    assert last["classifier_min_angle_deg"] == pytest.approx(naive_min_angle, abs=1e-3)
    # The history is part of the checkpoint (resume continues it).
    states = [v for k, v in checkpoint["callbacks"].items() if "TrainingDynamicsMonitor" in k]
    assert states and states[0]["history"][0] == history[0]
