"""IDX files (MNIST, Fashion-MNIST): a big-endian header, then raw uint8 values; gzip or not."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import torch

from advprune.core.errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)
_PREFIX = {"train": "train", "test": "t10k"}
_CHUNK = 1 << 20


def _stems(split: str) -> tuple[str, str]:
    prefix = _PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def wanted(split: str) -> str:
    images, labels = _stems(split)
    return f"{images}[.gz] and {labels}[.gz]"


def find_idx_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) files of `split` in `folder`, uncompressed first; None if absent."""
    found = []
    for stem in _stems(split):
        path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
        if path is None:
            return None
        found.append(path)
    return found[0], found[1]


def _read_payload(stream: BinaryIO, size: int, path: Path, dims: tuple[int, ...]) -> bytearray:
    """Read exactly `size` bytes in chunks, so a header that lies about its size cannot make us
    allocate more than the file really holds (a gzip stream's length is unknown in advance)."""
    payload = bytearray()
    while len(payload) < size:
        chunk = stream.read(min(_CHUNK, size - len(payload)))
        if not chunk:
            raise DataError(
                f"{path} is truncated: its header declares {'x'.join(map(str, dims))} values but "
                f"it holds only {len(payload)} bytes of them; download the file again"
            )
        payload += chunk
    return payload


def read_idx(path: Path, magic: int, limit: int | None = None) -> tuple[int, torch.Tensor]:
    """Parse one IDX file: (declared example count, uint8 tensor of its first `limit` examples).

    When the whole file is read, bytes beyond the declared size are an error too: either way the
    header and the payload disagree, so the file is not what it claims to be.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            header = stream.read(4)
            if len(header) < 4 or struct.unpack(">I", header)[0] != magic:
                found = f"0x{struct.unpack('>I', header)[0]:08x}" if len(header) == 4 else "none"
                raise DataError(
                    f"{path} is not an IDX file of this kind: magic number {found}, expected "
                    f"0x{magic:08x}; check that images and labels files are not swapped or corrupt"
                )
            ndim = magic & 0xFF
            raw_dims = stream.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path} is truncated inside its header; download the file again")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            if dims[0] == 0:
                raise DataError(f"{path} declares no examples; download the file again")
            count = dims[0] if limit is None else min(dims[0], limit)
            payload = _read_payload(stream, count * math.prod(dims[1:]), path, dims)
            if count == dims[0] and stream.read(1):
                raise DataError(
                    f"{path} holds more bytes than its header declares "
                    f"({'x'.join(map(str, dims))}); the file is corrupt, download it again"
                )
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(
            f"cannot read {path}: {err}; the file is corrupt, download it again"
        ) from err
    return dims[0], torch.frombuffer(payload, dtype=torch.uint8).reshape(count, *dims[1:])


def read_idx_split(
    files: tuple[Path, Path], limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 1, H, W) images and int64 (N,) labels from an (images, labels) IDX pair."""
    images_path, labels_path = files
    num_images, images = read_idx(images_path, IMAGES_MAGIC, limit)
    num_labels, labels = read_idx(labels_path, LABELS_MAGIC, limit)
    if num_images != num_labels:
        raise DataError(
            f"{images_path} holds {num_images} images but {labels_path} holds {num_labels} "
            "labels; they come from different splits or datasets, replace them with a matching pair"
        )
    return images.unsqueeze(1), labels.long()
