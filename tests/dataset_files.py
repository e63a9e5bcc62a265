"""Small dataset files in the real on-disk formats (IDX, CIFAR pickles, SVHN .mat, Tiny-ImageNet
folders), for the readers' tests and for running recipes on synthetic data."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> Path:
    data = struct.pack(f">I{len(dims)}I", magic, *dims) + payload
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def write_idx_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool):
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", 0x803, images.shape, images.tobytes())
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", 0x801, labels.shape, labels.tobytes())


def write_cifar_batch(path: Path, data: np.ndarray, labels: list[int], label_key: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"test batch", b"data": data, label_key: labels}
    path.write_bytes(pickle.dumps(batch, protocol=2))


def cifar_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_svhn_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> Path:
    """`images` as (32, 32, 3, N) uint8 and `labels` as (N, 1) with 10 for the digit 0, like the
    original .mat files."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}_32x32.mat"
    savemat(path, {"X": images, "y": labels})
    return path


def make_tiny_imagenet(root: Path) -> Path:
    """Two classes, listed unsorted in wnids.txt; solid colours survive JPEG almost exactly."""
    folder = root / "tiny-imagenet-200"
    colours = {"n02": (200, 30, 30), "n01": (20, 40, 220)}
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("n02\nn01\n")
    for wnid, colour in colours.items():
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (64, 64), colour).save(images / f"{wnid}_{i}.JPEG")
    (folder / "val" / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), colours["n02"]).save(folder / "val/images/val_0.JPEG")
    Image.new("L", (64, 64), 128).save(folder / "val/images/val_1.JPEG")
    (folder / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn02\t0\t0\t63\t63\nval_1.JPEG\tn01\t1\t2\t30\t40\n"
    )
    return folder


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "emu"),
    per_class: dict[str, int] | None = None,
    size: int = 12,
    mode: str = "RGB",
) -> Path:
    """PNGs in ROOT/SPLIT/CLASS/, class k brighter in channel k (so a network can learn them):
    `per_class` images per split (default 24 train, 8 test); a split with 0 is not written."""
    rng = np.random.default_rng(0)
    channels = 3 if mode == "RGB" else 1
    for split, count in (per_class or {"train": 24, "test": 8}).items():
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 90, (size, size, channels), dtype=np.uint8)
                pixels[:, :, label % channels] += 120 + 40 * (label // channels)
                image = pixels if mode == "RGB" else pixels[:, :, 0]
                Image.fromarray(image, mode).save(folder / f"{i:03d}.png")
    return root
