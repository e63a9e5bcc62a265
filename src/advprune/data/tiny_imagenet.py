"""Tiny-ImageNet-200 as unpacked from tiny-imagenet-200.zip: JPEG folders decoded with Pillow.

Layout: `wnids.txt` (one WordNet id per line), `train/<wnid>/images/*.JPEG` and
`val/images/*.JPEG` labelled by `val/val_annotations.txt` (filename, wnid, box, tab-separated).
The labelled val split serves as the test split, as in the papers (the test split has no labels).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advprune.core.errors import DataError

SIZE = 64


def _split_index(folder: Path, split: str) -> Path:
    return folder / "train" if split == "train" else folder / "val" / "val_annotations.txt"


def wanted(split: str) -> str:
    if split == "train":
        return "wnids.txt and train/<wnid>/images/*.JPEG"
    return "wnids.txt and val/val_annotations.txt with val/images/*.JPEG"


def find_tiny_imagenet(folder: Path, split: str) -> list[tuple[Path, int]] | None:
    """(image path, label) of every `split` example in `folder`; None if the split is absent.

    Train examples come class by class (sorted wnids, then sorted file names); test (val) ones in
    the order of val_annotations.txt.
    """
    if not ((folder / "wnids.txt").is_file() and _split_index(folder, split).exists()):
        return None
    wnids = class_ids(folder)
    examples = (_train_examples if split == "train" else _val_examples)(folder, wnids)
    if not examples:
        raise DataError(f"{folder} holds no {split} images; unpack tiny-imagenet-200.zip again")
    return examples


def class_ids(folder: Path) -> list[str]:
    """The WordNet ids in sorted order: label k is the k-th id, as in torchvision's ImageFolder
    (which sorts the train folder names), so labels agree with models trained that way."""
    path = folder / "wnids.txt"
    wnids = sorted(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not wnids or len(set(wnids)) != len(wnids):
        raise DataError(
            f"{path} must list distinct WordNet ids, one per line; restore it from the archive"
        )
    return wnids


def _train_examples(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    examples = []
    for label, wnid in enumerate(wnids):
        images_dir = folder / "train" / wnid / "images"
        if not images_dir.is_dir():
            raise DataError(
                f"{images_dir} is missing although {wnid} is in wnids.txt; "
                "unpack tiny-imagenet-200.zip again"
            )
        examples += [(path, label) for path in sorted(images_dir.glob("*.JPEG"))]
    return examples


def _val_examples(folder: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    labels = {wnid: label for label, wnid in enumerate(wnids)}
    annotations = _split_index(folder, "test")
    examples = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in labels:
            raise DataError(
                f"{annotations} line {number} is not 'filename<TAB>wnid' with a wnid from "
                "wnids.txt; unpack tiny-imagenet-200.zip again"
            )
        examples.append((folder / "val" / "images" / fields[0], labels[fields[1]]))
    return examples


def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
    except OSError as err:
        raise DataError(f"cannot decode {path}: {err}; unpack tiny-imagenet-200.zip again") from err
    if pixels.shape != (SIZE, SIZE, 3):
        raise DataError(
            f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, not {SIZE}x{SIZE}; "
            "Tiny-ImageNet images are 64x64, unpack tiny-imagenet-200.zip again"
        )
    return pixels


def read_tiny_imagenet_split(
    examples: list[tuple[Path, int]], limit: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 3, 64, 64) images and int64 labels; only the first `limit` images are decoded.

    Decoding runs on a thread pool: Pillow releases the GIL while it decodes.
    """
    examples = examples[:limit]
    images = np.empty((len(examples), SIZE, SIZE, 3), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        for i, pixels in enumerate(pool.map(_decode, [path for path, _ in examples])):
            images[i] = pixels
    labels = torch.tensor([label for _, label in examples], dtype=torch.int64)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels
