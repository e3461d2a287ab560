"""precision / channels_last / compile: per-trainer defaults, same numbers, finite losses."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from hugnc.train import build_module, train

LOSSES = ["ce", "mhe_hug", "mhs_hug", "mgd_hug"]
DEBUG_RUN = (
    "trainer=debug",
    "logger=none",
    "data.batch_size=64",
    "data.eval_batch_size=64",
    "~callbacks.progress_bar",
    "~callbacks.neural_collapse",
)


@pytest.mark.parametrize(
    ("trainer", "precision", "channels_last"),
    [
        ("default", "32-true", False),
        ("cpu", "32-true", False),
        ("debug", "32-true", False),
        ("gpu", "bf16-mixed", True),
        ("ddp", "bf16-mixed", True),
        ("ddp_cpu", "32-true", False),
    ],
)
def test_trainer_configs_set_speed_defaults(
    compose_cfg, trainer: str, precision: str, channels_last: bool
) -> None:
    cfg = compose_cfg(f"trainer={trainer}")
    assert cfg.trainer.precision == precision
    assert cfg.channels_last is channels_last
    assert cfg.compile is False
    gpu = trainer in ("gpu", "ddp")
    # GPU trainers: data on the device where the datamodule can hold it, cuDNN autotuning.
    assert cfg.data.on_device == ("auto" if gpu else False)
    assert cfg.trainer.get("benchmark", None) is (True if gpu else None)
    # The global-package trainer configs still give Lightning a complete Trainer config.
    assert cfg.trainer._target_ == "lightning.Trainer" and cfg.trainer.max_epochs == 200


@pytest.mark.parametrize("model", ["lenet_pp", "resnet18"])
def test_channels_last_changes_layout_not_numbers(compose_cfg, model: str) -> None:
    cfg = compose_cfg(f"model={model}", "loss=mgd_hug")
    reference = build_module(cfg, input_shape=(1, 28, 28)).eval()
    cfg.channels_last = True
    fast = build_module(cfg, input_shape=(1, 28, 28)).eval()
    fast.load_state_dict(reference.state_dict())
    fast.configure_model()
    convs = [m for m in fast.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(
        conv.weight.is_contiguous(memory_format=torch.channels_last) for conv in convs
    )
    images = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(images), reference(images), rtol=1e-4, atol=1e-5)
    assert fast.state_dict().keys() == reference.state_dict().keys()


@pytest.mark.parametrize("loss", LOSSES)
def test_bf16_mixed_training_of_every_loss_is_finite(compose_cfg, loss: str) -> None:
    cfg = compose_cfg(
        f"loss={loss}", "trainer.precision=bf16-mixed", "channels_last=true", *DEBUG_RUN
    )
    metrics = train(cfg)
    assert {"train/loss", "val/loss", "test/acc"} <= metrics.keys()
    assert all(math.isfinite(value) for value in metrics.values()), metrics
    if loss != "ce":
        assert math.isfinite(metrics["train/loss_inter"]) and math.isfinite(
            metrics["train/loss_intra"]
        )


@pytest.mark.parametrize("loss", LOSSES)
def test_float16_autocast_step_of_every_loss_is_finite(compose_cfg, loss: str) -> None:
    """What 16-mixed does on a GPU, on the CPU (Lightning maps 16-mixed to bf16 there): the
    backbone runs in float16 (slow on CPUs: a small batch); the loss and its gradients stay finite
    and near float32's."""
    cfg = compose_cfg(f"loss={loss}", "data.batch_size=32", "data.train_subset=256")
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    images, targets = next(iter(datamodule.train_dataloader()))
    module = build_module(cfg, datamodule.input_shape).train()
    values = {}
    for dtype in (torch.float32, torch.float16):
        module.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype == torch.float16):
            features = module.features(images)
            terms = module._loss_terms(features, module.head.logits(features), targets)
        terms["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])
        assert torch.isfinite(grads).all()
        values[dtype] = {name: float(value.detach()) for name, value in terms.items()}
    for name, value in values[torch.float16].items():
        assert math.isfinite(value)
        assert value == pytest.approx(values[torch.float32][name], rel=0.02, abs=1e-3), name


@pytest.mark.parametrize("loss", ["mhe_hug", "mgd_hug"])
def test_bf16_training_steps_follow_float32(compose_cfg, loss: str) -> None:
    """Ten bf16 steps from the same weights and batches land near the float32 losses: the HUG
    terms are computed in float32 under autocast, only the backbone runs in bf16."""
    losses = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg = compose_cfg(
            f"loss={loss}",
            f"trainer.precision={precision}",
            "trainer=cpu",
            "trainer.max_epochs=1",
            "debug=limit",
            "trainer.limit_train_batches=10",
            "trainer.limit_val_batches=0",
            "test=false",
            "logger=none",
            "data.batch_size=128",
            "optimizer.lr=0.02",
            "~callbacks.progress_bar",
            "~callbacks.neural_collapse",
            "~callbacks.model_checkpoint",
            "~callbacks.last_checkpoint",
            "+trainer.enable_checkpointing=false",
        )
        losses[precision] = train(cfg)["train/loss"]
    assert math.isfinite(losses["bf16-mixed"])
    assert losses["bf16-mixed"] == pytest.approx(losses["32-true"], rel=0.05), losses


@pytest.mark.slow
def test_compiled_backbone_trains_and_keeps_checkpoint_keys(compose_cfg) -> None:
    cfg = compose_cfg("compile=true", "loss=mhs_hug", *DEBUG_RUN)
    metrics = train(cfg)
    assert math.isfinite(metrics["train/loss"])
    compiled = build_module(cfg, input_shape=(1, 28, 28))
    compiled.configure_model()
    plain = build_module(compose_cfg("loss=mhs_hug"), input_shape=(1, 28, 28))
    assert compiled.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(compiled.state_dict())
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    batch, _ = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        torch.testing.assert_close(
            compiled.eval()(batch), plain.eval()(batch), rtol=1e-4, atol=1e-4
        )


def test_on_device_auto_is_the_device_path_where_the_datamodule_has_one(tmp_path) -> None:
    from hugnc.data import FashionMNISTDataModule, ImageNetDataModule

    assert FashionMNISTDataModule(str(tmp_path), on_device="auto").on_device is True
    assert ImageNetDataModule(str(tmp_path), on_device="auto").on_device is False
    with pytest.raises(ValueError, match="no on-device data path"):
        ImageNetDataModule(str(tmp_path), on_device=True)


@pytest.mark.slow
def test_compiled_run_stays_under_the_recompile_limit(compose_cfg, monkeypatch) -> None:
    """One run compiles the backbone once per way it is called (training with grad, validation
    and NC measurement under no_grad, test under inference_mode, attacks with input gradients)
    plus once when batch sizes vary; each compile past torch's per-function limit would silently
    fall back to eager. Partial last batches in every loop, and the robustness attacks."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    # Guards, hence recompilations, are Dynamo's; the eager backend skips Inductor's codegen.
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(
        torch.nn.Module, "compile", lambda self, **kwargs: compile_module(self, backend="eager")
    )
    torch._dynamo.reset()
    counters.clear()
    cfg = compose_cfg(
        "experiment=quickstart",
        "compile=true",
        "callbacks=robustness",
        "callbacks.robustness.attacks=[fgsm,pgd2]",
        "callbacks.robustness.max_batches=2",
        "callbacks.robustness.batch_size=96",
        "callbacks.robustness.eps=0.1",
        "callbacks.robustness.alpha=0.01",
        "logger=none",
        "~callbacks.progress_bar",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=3",
        "data.eval_batch_size=2048",  # 5,000 validation / 10,000 test images: partial batches
        "callbacks.neural_collapse.max_batches=2",
    )
    metrics = train(cfg)
    assert "test/robust_acc/pgd2" in metrics
    graphs = counters["stats"]["unique_graphs"]
    assert dict(counters["graph_break"]) == {}
    assert graphs <= 5 < torch._dynamo.config.recompile_limit, dict(counters["stats"])
