"""`load_dataset`: find a split's files on disk (downloading them if asked) and read them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from advprune.core.errors import DataError
from advprune.data import cifar, idx, svhn, tiny_imagenet
from advprune.data.dataset import DatasetSpec, ImageDataset, check_limit, get_spec
from advprune.data.downloads import download as download_dataset
from advprune.data.image_folder import IMAGE_FOLDER, read_image_folder

SPLITS = ("train", "test")
# Debian's dataset-fashion-mnist package installs the four IDX files here.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def default_data_dir() -> Path:
    """Where datasets are looked for, and downloaded to, when no data directory is given."""
    return Path.home() / ".cache" / "advprune" / "datasets"


@dataclass(frozen=True)
class _Format:
    """How one dataset sits on disk and how to read it.

    `subfolders` are tried under each data directory ("" is the directory itself): the layout our
    download produces and torchvision's. `find(folder, split)` returns what `read(found, limit)`
    needs, or None when the split is not in `folder`.
    """

    subfolders: tuple[str, ...]
    find: Callable[[Path, str], Any]
    read: Callable[[Any, int | None], tuple[torch.Tensor, torch.Tensor]]
    wanted: Callable[[str], str]


_FORMATS = {
    "mnist": _Format(
        ("", "mnist", "MNIST/raw"), idx.find_idx_files, idx.read_idx_split, idx.wanted
    ),
    "fashion-mnist": _Format(
        ("", "fashion-mnist", "FashionMNIST/raw"),
        idx.find_idx_files,
        idx.read_idx_split,
        idx.wanted,
    ),
    "cifar10": _Format(
        (cifar.CIFAR10.folder, ""),
        partial(cifar.find_cifar_files, layout=cifar.CIFAR10),
        cifar.read_cifar_split,
        partial(cifar.wanted, layout=cifar.CIFAR10),
    ),
    "cifar100": _Format(
        (cifar.CIFAR100.folder, ""),
        partial(cifar.find_cifar_files, layout=cifar.CIFAR100),
        cifar.read_cifar_split,
        partial(cifar.wanted, layout=cifar.CIFAR100),
    ),
    "svhn": _Format(("", "svhn"), svhn.find_svhn_file, svhn.read_svhn_split, svhn.wanted),
    "tiny-imagenet": _Format(
        ("tiny-imagenet-200", ""),
        tiny_imagenet.find_tiny_imagenet,
        tiny_imagenet.read_tiny_imagenet_split,
        tiny_imagenet.wanted,
    ),
}


def _folders(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    roots = [Path(data_dir)] if data_dir is not None else [default_data_dir()]
    if data_dir is None and name == "fashion-mnist":
        roots.insert(0, SYSTEM_FASHION_MNIST)
    return [root / sub for root in roots for sub in _FORMATS[name].subfolders]


def _find(name: str, split: str, folders: list[Path]) -> tuple[Path, Any] | None:
    for folder in folders:
        found = _FORMATS[name].find(folder, split)
        if found is not None:
            return folder, found
    return None


def _missing(name: str, split: str, folders: list[Path]) -> DataError:
    if name == "fashion-mnist":
        fix = (
            "install the Debian package dataset-fashion-mnist (apt-get install -y "
            "dataset-fashion-mnist) or pass --data-dir DIR / --download"
        )
    else:
        fix = "pass --data-dir DIR or --download"
    return DataError(
        f"{name} {split} split not found: looked for {_FORMATS[name].wanted(split)} in "
        f"{', '.join(map(str, folders))}; {fix}"
    )


def _check_contents(
    spec: DatasetSpec, folder: Path, images: torch.Tensor, labels: torch.Tensor
) -> None:
    """Files of another dataset would otherwise surface as a shape error deep inside a model."""
    expected = (spec.in_channels, spec.image_size, spec.image_size)
    if tuple(images.shape[1:]) != expected:
        raise DataError(
            f"images in {folder} are {tuple(images.shape[1:])}, but {spec.name} images are "
            f"{expected}; point --data-dir at {spec.name}'s files"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= spec.num_classes:
        raise DataError(
            f"labels in {folder} range over [{low}, {high}], but {spec.name} has "
            f"{spec.num_classes} classes; point --data-dir at {spec.name}'s files"
        )


def dataset_names() -> tuple[str, ...]:
    """What `--dataset` reads: the standard datasets and a folder of the user's images."""
    return (*_FORMATS, IMAGE_FOLDER)


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    limit: int | None = None,
    test_fraction: float | None = None,
) -> ImageDataset:
    """The `split` ("train" or "test") of dataset `name`, or its first `limit` examples.

    Looks under `data_dir` (default: ~/.cache/advprune/datasets, and for Fashion-MNIST first
    /usr/share/datasets/fashion-mnist); with `download`, missing files are fetched into that
    directory. Tiny-ImageNet's test split is its labelled val split. "imagefolder" reads the
    user's class folders under `data_dir` (`data.image_folder`; `test_fraction` holds out part
    of each class when there is no test folder).

    Example:
        test = load_dataset("imagefolder", "test", data_dir="my_images")
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    check_limit(limit)
    if name == IMAGE_FOLDER:
        if data_dir is None:
            raise DataError(
                "the imagefolder dataset needs its folder; pass --data-dir DIR "
                "(DIR/train/CLASS/*.png)"
            )
        return read_image_folder(data_dir, split, test_fraction, limit)
    spec = get_spec(name)
    folders = _folders(name, data_dir)
    found = _find(name, split, folders)
    if found is None and download:
        download_dataset(name, data_dir if data_dir is not None else default_data_dir())
        found = _find(name, split, folders)
    if found is None:
        raise _missing(name, split, folders)
    folder, files = found
    images, labels = _FORMATS[name].read(files, limit)
    _check_contents(spec, folder, images, labels)
    source = {"dataset": name, "data_dir": None if data_dir is None else str(data_dir)}
    return ImageDataset(spec.name, images, labels, spec.num_classes, source=source)
