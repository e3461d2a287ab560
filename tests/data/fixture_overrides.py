"""Overrides that point the data and paper-experiment configs at the fixtures of ``data_root``
(never a download) and make a run a fast_dev_run on them; shared by their end-to-end tests."""

from __future__ import annotations

NO_DOWNLOAD = ["data.download=false"]
#: The CIFAR fixtures hold 12 (CIFAR-10) / 6 (CIFAR-100) images per class: an imbalance ratio of
#: 100 would leave classes empty, so long-tailed runs use ratio 2.
CIFAR_LT = [*NO_DOWNLOAD, "data.imb_factor=0.5"]
#: The MNIST fixture's training split is small: a 10-image validation split.
MNIST = [*NO_DOWNLOAD, "data.val_size=10"]
#: The ImageNet fixture: 4 class folders of small JPEGs, read in the test process.
IMAGENET = [
    "data.num_classes=4",
    "data.image_size=32",
    "data.resize_size=36",
    "data.num_workers=0",
    "data.pin_memory=false",
    "data.persistent_workers=false",
]
#: One fast_dev_run batch of 4; NC metrics and their pictures (seconds per test loop) off.
FAST_RUN = [
    "trainer=debug",
    "logger=none",
    "~callbacks.progress_bar",
    "~callbacks.neural_collapse",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "optimizer.lr=0.01",
]
