"""One interface for every loss: ``loss_terms(features, targets, head, logits)``; a new loss is a
Criterion subclass that the LightningModule and the UFM use without knowing it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning import Trainer
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from hugnc.losses import Criterion, CrossEntropyLoss, HUGLoss
from hugnc.models import LinearHead, ProxyHead
from hugnc.module import HUGClassifier
from hugnc.ufm import UFMSettings, UnconstrainedFeatures, simulate


def test_cross_entropy_terms_are_the_logits_cross_entropy() -> None:
    torch.manual_seed(0)
    head, features, targets = LinearHead(5, 3), torch.randn(8, 5), torch.randint(0, 3, (8,))
    criterion = CrossEntropyLoss(label_smoothing=0.1)
    expected = F.cross_entropy(head.logits(features), targets, label_smoothing=0.1)
    assert criterion.loss_terms(features, targets, head) == {"loss": expected}
    logits = torch.randn(8, 3)
    given = criterion.loss_terms(features, targets, head, logits)["loss"]
    torch.testing.assert_close(given, F.cross_entropy(logits, targets, label_smoothing=0.1))
    assert not criterion.needs_global_batch


def test_hug_terms_use_the_head_proxies() -> None:
    torch.manual_seed(0)
    head, features, targets = ProxyHead(5, 3), torch.randn(8, 5), torch.randint(0, 3, (8,))
    criterion = HUGLoss("mgd", 0.15, 0.03)
    out = criterion(features, head.classifier, targets)
    terms = criterion.loss_terms(features, targets, head, logits=torch.zeros(8, 3))
    assert terms == {"loss": out.loss, "loss_intra": out.intra, "loss_inter": out.inter}
    assert list(terms) == ["loss", "loss_intra", "loss_inter"]
    assert criterion.needs_global_batch


class SquaredMarginLoss(Criterion):
    """A fourth loss, defined outside hugnc: nothing in hugnc knows it."""

    def loss_terms(
        self, features: Tensor, targets: Tensor, head, logits: Tensor | None = None
    ) -> dict[str, Tensor]:
        logits = head.logits(features) if logits is None else logits
        true = logits.gather(1, targets[:, None])
        margin = (1.0 + logits - true).clamp(min=0.0).pow(2).mean()
        return {"loss": margin, "loss_true_logit": true.mean()}


def test_a_new_criterion_trains_and_logs_its_terms(tmp_path) -> None:
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    backbone.feature_dim = 3
    module = HUGClassifier(
        backbone=backbone,
        head=LinearHead(3, 4),
        criterion=SquaredMarginLoss(),
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        num_classes=4,
    )
    data = TensorDataset(torch.randn(32, 12), torch.randint(0, 4, (32,)))
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    assert {"train/loss", "train/loss_true_logit", "train/acc"} <= set(trainer.callback_metrics)

    ufm = UnconstrainedFeatures(LinearHead(3, 4), num_classes=4, samples_per_class=5, feature_dim=3)
    history = simulate(ufm, SquaredMarginLoss(), UFMSettings(4, 5, 3, steps=20, log_every=10))
    assert "loss_true_logit" in history[-1]
