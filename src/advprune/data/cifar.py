"""CIFAR-10/100 "python version" batches: pickles, read with an unpickler that runs no code.

A pickle can call any importable function while it loads, so a plain `pickle.load` of a file from
the internet is remote code execution. These batches only need numpy to rebuild one array, so
`_CifarUnpickler` resolves exactly those globals and refuses everything else.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advprune.core.errors import DataError

try:  # numpy >= 2 moved the array machinery to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

_PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches, as unpacked from the official archive."""

    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes

    def files(self, split: str) -> tuple[str, ...]:
        return self.train_files if split == "train" else (self.test_file,)


CIFAR10 = CifarLayout(
    "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", b"labels"
)
CIFAR100 = CifarLayout("cifar-100-python", ("train",), "test", b"fine_labels")


def _empty_array(subtype: type, shape: tuple, dtype: Any) -> np.ndarray:
    """`numpy ... _reconstruct` limited to what `ndarray.__reduce__` writes: an empty ndarray that
    its pickled state then fills, so a crafted shape cannot make us allocate anything."""
    if subtype is not np.ndarray or shape != (0,):
        raise pickle.UnpicklingError(f"unexpected array reconstruction {subtype!r}{shape!r}")
    return _reconstruct(subtype, shape, dtype)


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """`_codecs.encode` as Python 3 writes `bytes` into protocol-2 pickles, and nothing more."""
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"unexpected _codecs.encode({text!r:.20}, {encoding!r})")
    return text.encode("latin1")


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _CifarUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[module, name]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.path}: not a CIFAR batch; "
                "replace the file with one from the official CIFAR archive"
            ) from None


def load_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, list[int]]:
    """(uint8 (N, 3072) data, N labels) of one batch file, its structure checked."""
    try:
        with open(path, "rb") as handle:
            batch = _CifarUnpickler(handle, path).load()
    except DataError:
        raise
    except (
        OSError,
        EOFError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
    ) as err:
        raise DataError(
            f"cannot read {path}: {err}; the file is corrupt or not a CIFAR batch, "
            "download it again"
        ) from err
    data = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(label_key) if isinstance(batch, dict) else None
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == _PIXELS
        and isinstance(labels, list)
        and len(labels) == len(data)
        and all(isinstance(label, int) for label in labels)
    ):
        raise DataError(
            f"{path} is not a CIFAR batch: expected a dict with {b'data'!r} (N x {_PIXELS} uint8) "
            f"and {label_key!r} (N integers); replace it with the file from the official archive"
        )
    return data, labels


def find_cifar_files(
    folder: Path, split: str, *, layout: CifarLayout
) -> tuple[list[Path], bytes] | None:
    """(batch files, label key) of `split` in `folder`; None if any file is absent."""
    paths = [folder / name for name in layout.files(split)]
    return (paths, layout.label_key) if all(p.is_file() for p in paths) else None


def wanted(split: str, *, layout: CifarLayout) -> str:
    return ", ".join(layout.files(split))


def read_cifar_split(
    found: tuple[list[Path], bytes], limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 32, 32) images and int64 labels; stops reading batches once `limit` is met.

    Each row of a batch is 1024 red, then 1024 green, then 1024 blue values, row-major.
    """
    files, label_key = found
    datas, labels = [], []
    for path in files:
        data, batch_labels = load_batch(path, label_key)
        datas.append(data)
        labels.extend(batch_labels)
        if limit is not None and len(labels) >= limit:
            break
    images = torch.from_numpy(np.concatenate(datas)[:limit].reshape(-1, 3, 32, 32))
    return images, torch.tensor(labels[:limit], dtype=torch.int64)
