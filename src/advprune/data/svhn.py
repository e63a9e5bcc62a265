"""SVHN cropped digits: MATLAB v5 files `train_32x32.mat` and `test_32x32.mat`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from advprune.core.errors import DataError

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def wanted(split: str) -> str:
    return FILES[split]


def find_svhn_file(folder: Path, split: str) -> Path | None:
    path = folder / FILES[split]
    return path if path.is_file() else None


def read_svhn_split(path: Path, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and int64 labels in [0, 10).

    The file stores X as (32, 32, 3, N) and y as (N, 1) with the digit 0 labelled 10; we map it to
    0 as torchvision does, so class k is digit k.
    """
    try:
        from scipy.io import loadmat
    except ImportError as err:
        raise DataError(f"reading {path} needs scipy; install it with pip install scipy") from err
    try:
        contents = loadmat(path, variable_names=["X", "y"])
    except (OSError, ValueError, TypeError, NotImplementedError) as err:
        raise DataError(
            f"cannot read {path}: {err}; the file is corrupt or not SVHN, download it again"
        ) from err
    x, y = contents.get("X"), contents.get("y")
    if not (
        isinstance(x, np.ndarray)
        and x.dtype == np.uint8
        and x.shape[:3] == (32, 32, 3)
        and x.ndim == 4
        and isinstance(y, np.ndarray)
        and y.size == x.shape[3]
        and np.issubdtype(y.dtype, np.number)
    ):
        raise DataError(
            f"{path} is not an SVHN file: expected X (32, 32, 3, N) uint8 and y with N labels; "
            "replace it with the official train_32x32.mat / test_32x32.mat"
        )
    images = np.ascontiguousarray(x[..., :limit].transpose(3, 2, 0, 1))
    labels = y.reshape(-1)[:limit].astype(np.int64)
    labels[labels == 10] = 0
    return torch.from_numpy(images), torch.from_numpy(labels)
