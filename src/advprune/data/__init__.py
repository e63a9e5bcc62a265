"""Datasets as in-memory tensors, read from their standard files or a user's image folders."""

from advprune.data.dataset import CUSTOM_DATASET, DATASETS, DatasetSpec, ImageDataset, get_spec
from advprune.data.downloads import download
from advprune.data.image_folder import IMAGE_FOLDER, image_folder_spec
from advprune.data.loader import BatchLoader
from advprune.data.registry import dataset_names, load_dataset

__all__ = [
    "CUSTOM_DATASET",
    "DATASETS",
    "IMAGE_FOLDER",
    "BatchLoader",
    "DatasetSpec",
    "ImageDataset",
    "dataset_names",
    "download",
    "get_spec",
    "image_folder_spec",
    "load_dataset",
]
