"""LightningDataModules; no knowledge of models or losses."""

from hugnc.data.base import (
    ImageDataModule,
    availability_problem,
    global_batch_problem,
    select_classes,
)
from hugnc.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from hugnc.data.continual import DATAMODULES, ContinualDataModule, split_classes
from hugnc.data.errors import DataCorruptError, DataError, DatasetUnavailableError
from hugnc.data.fashion_mnist import FashionMNISTDataModule, ensure_fashion_mnist
from hugnc.data.imagenet import ImageNetDataModule
from hugnc.data.in_memory import InMemoryImageDataModule, TensorImageDataset
from hugnc.data.long_tail import long_tail_counts, sample_per_class
from hugnc.data.mnist import MNIST5kDataModule, MNISTDataModule
from hugnc.data.on_device import DeviceBatchLoader, EpochShardSampler
from hugnc.data.subsets import SPLITS, split_loader

__all__ = [
    "DATAMODULES",
    "SPLITS",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ContinualDataModule",
    "DataCorruptError",
    "DataError",
    "DatasetUnavailableError",
    "DeviceBatchLoader",
    "EpochShardSampler",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "ImageNetDataModule",
    "InMemoryImageDataModule",
    "MNIST5kDataModule",
    "MNISTDataModule",
    "TensorImageDataset",
    "availability_problem",
    "ensure_fashion_mnist",
    "global_batch_problem",
    "long_tail_counts",
    "sample_per_class",
    "select_classes",
    "split_classes",
    "split_loader",
]
