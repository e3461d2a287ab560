"""DataLoader throughput vs the model's consumption (run: ``python benchmarks/bench_data.py``).

Pipelines, each with 0 and 2 DataLoader workers, in training mode (augmentation on, shuffled):

- ``cifar10 hugnc``: :class:`hugnc.data.CIFAR10DataModule`: the images held as one uint8 tensor,
  each batch fetched, randomly cropped (padding 4), flipped and normalized by tensor ops;
- ``cifar10 per-image``: the usual torchvision pipeline for comparison: ``CIFAR10`` with
  ``RandomCrop(32, 4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize`` image by image;
- ``imagenet``: :class:`hugnc.data.ImageNetDataModule` (ImageFolder, JPEG decoding,
  RandomResizedCrop(224) + flip) on a fixture of photo-sized JPEGs (500x375).

The data are fixtures in the real on-disk formats (CIFAR pickles, ImageFolder JPEGs) written to a
temporary directory; throughput does not depend on the pixel values. The CIFAR fixture is not the
real file, so torchvision's md5 check is switched off here, in the benchmark only.

The model's consumption rate is a full training step (forward, backward, SGD) of the model each
pipeline feeds, on this machine's CPU: CIFAR ResNet-18 and LeNet++ at 32x32, torchvision
ResNet-50 at 224x224. A loader is fast enough when its rate is above the model's.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
import torchvision.datasets.cifar as tv_cifar
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from hugnc.data import CIFAR10DataModule, ImageNetDataModule
from hugnc.data.synthetic import write_cifar, write_image_folder
from hugnc.models import CifarResNet, LeNetPlusPlus, TorchvisionResNet


def loader_rate(loader: DataLoader, max_batches: int, max_seconds: float) -> float:
    """Images per second, steady state: the first batch (worker start-up) is not counted."""
    iterator = iter(loader)
    next(iterator)
    images, start = 0, time.perf_counter()
    for batch_index, (batch, _) in enumerate(iterator):
        images += len(batch)
        if batch_index + 1 >= max_batches or time.perf_counter() - start > max_seconds:
            break
    return images / (time.perf_counter() - start)


def model_rate(model: nn.Module, shape: Iterable[int], batch_size: int, steps: int) -> float:
    """Images per second of full SGD training steps on random inputs (after one warm-up step)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    head = nn.Linear(model.feature_dim, 10)
    images = torch.randn(batch_size, *shape)
    targets = torch.randint(0, 10, (batch_size,))

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(model(images)), targets).backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return batch_size * steps / (time.perf_counter() - start)


def cifar_loaders(root: Path, batch_size: int, workers: int) -> dict[str, DataLoader]:
    datamodule = CIFAR10DataModule(
        str(root), download=False, batch_size=batch_size, num_workers=workers
    )
    datamodule.setup()
    per_image = datasets.CIFAR10(
        str(root),
        train=True,
        transform=transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(CIFAR10DataModule.mean, CIFAR10DataModule.std),
            ]
        ),
    )
    return {
        "cifar10 hugnc (batched)": datamodule.train_dataloader(),
        "cifar10 per-image (torchvision)": DataLoader(
            per_image, batch_size=batch_size, shuffle=True, num_workers=workers
        ),
    }


def imagenet_loader(root: Path, batch_size: int, workers: int) -> DataLoader:
    classes = sorted(p.name for p in (root / "train").iterdir())
    datamodule = ImageNetDataModule(
        str(root),
        num_classes=len(classes),
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
    )
    datamodule.setup()
    return datamodule.train_dataloader()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar-images", type=int, default=10000, help="fixture size")
    parser.add_argument("--imagenet-images", type=int, default=400, help="fixture size")
    parser.add_argument("--batches", type=int, default=30, help="batches timed per loader")
    parser.add_argument("--seconds", type=float, default=8.0, help="time cap per loader")
    parser.add_argument("--quick", action="store_true", help="fewer batches and model steps")
    args = parser.parse_args(argv)
    batches, seconds, steps = (args.batches, args.seconds, 3)
    if args.quick:
        batches, seconds, steps = 8, 3.0, 1
    # The CIFAR fixture is not the real archive: only here, skip torchvision's md5 check.
    tv_cifar.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} (other processes distort the numbers)"
    )
    rows: list[tuple[str, int, int, float, str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_cifar(root, 10, train_per_class=args.cifar_images // 10, test_per_class=1)
        num_classes = 10
        write_image_folder(
            root / "imagenet",
            [f"n{i:08d}" for i in range(num_classes)],
            train_per_class=args.imagenet_images // num_classes,
            val_per_class=1,
            size=(500, 375),
        )
        torch.manual_seed(0)
        cifar_models = {
            "resnet18": model_rate(CifarResNet(18), (3, 32, 32), 128, steps),
            "lenet_pp": model_rate(LeNetPlusPlus((3, 32, 32)), (3, 32, 32), 512, steps),
        }
        resnet50 = model_rate(TorchvisionResNet("resnet50"), (3, 224, 224), 16, steps)
        for workers in (0, 2):
            for name, loader in cifar_loaders(root, 512, workers).items():
                rate = loader_rate(loader, batches, seconds)
                for model, consumed in cifar_models.items():
                    rows.append((name, workers, 512, rate, model, consumed))
            rate = loader_rate(imagenet_loader(root / "imagenet", 64, workers), batches, seconds)
            rows.append(("imagenet (JPEG, 500x375)", workers, 64, rate, "resnet50", resnet50))
    print(format_table(rows))


def format_table(rows: list[tuple[str, int, int, float, str, float]]) -> str:
    header = (
        f"{'pipeline':<32} {'workers':>7} {'batch':>5} {'loader img/s':>12} "
        f"{'model (train step)':>18} {'model img/s':>11} {'loader/model':>12}"
    )
    lines = [
        "DataLoader throughput (training mode) vs the model's consumption, CPU",
        header,
        "-" * len(header),
    ]
    for name, workers, batch, rate, model, consumed in rows:
        lines.append(
            f"{name:<32} {workers:>7} {batch:>5} {rate:>12,.0f} {model:>18} {consumed:>11,.0f} "
            f"{rate / consumed:>11.1f}x"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
