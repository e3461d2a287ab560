"""LightningDataModules; no knowledge of models or losses."""

from hugnc.data.fashion_mnist import (
    DatasetUnavailableError,
    FashionMNISTDataModule,
    ensure_fashion_mnist,
)

__all__ = ["DatasetUnavailableError", "FashionMNISTDataModule", "ensure_fashion_mnist"]
