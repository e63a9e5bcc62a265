"""Datasets as in-memory tensors, read from their standard files, batched on the device."""

from advprune.data.dataset import DATASETS, DatasetSpec, ImageDataset, get_spec
from advprune.data.downloads import download
from advprune.data.loader import BatchLoader
from advprune.data.registry import load_dataset

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DatasetSpec",
    "ImageDataset",
    "download",
    "get_spec",
    "load_dataset",
]
