"""A user's own images in class folders (`--dataset imagefolder --data-dir DIR`), read with Pillow.

Layout: DIR/train/CLASS/*.png and DIR/test/CLASS/*.png (any image format Pillow reads; nested
folders inside a class count for it). Without DIR/test, `test_fraction` holds out that fraction
of each class as the test split; without DIR/train, DIR's own class folders are the train split.
Labels follow the sorted class-folder names of the train split, as torchvision's `ImageFolder`
numbers them. Examples come in one fixed shuffled order (seed 0), so the first N — what
`--limit-train N` keeps — are a sample of every class, as in the standard datasets' files.
Every image must have the same size and mode (L: grey, RGB: colour): the network takes one shape.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from advprune.core.errors import DataError
from advprune.data.dataset import DatasetSpec, ImageDataset, channel_statistics

IMAGE_FOLDER = "imagefolder"
EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
)
CHANNELS = {"L": 1, "RGB": 3}
ORDER_SEED = 0
FIX_SHAPE = (
    "convert them to one first, e.g. with Pillow: Image.open(p).convert('RGB').resize((32, 32))"
)

Example = tuple[Path, int]


def _train_root(data_dir: Path) -> Path:
    return data_dir / "train" if (data_dir / "train").is_dir() else data_dir


def _class_folders(root: Path, data_dir: Path) -> list[Path]:
    """The class folders under `root` (DIR/test is a split, not a class, when root is DIR)."""
    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p != data_dir / "test"
    )


def class_names(data_dir: Path) -> list[str]:
    """The sorted class-folder names of the train split: label k is the k-th name."""
    root = _train_root(data_dir)
    names = [folder.name for folder in _class_folders(root, data_dir)]
    if not names:
        raise DataError(
            f"{root} holds no class folders; put each class's images in DIR/train/CLASS/ "
            "(e.g. DIR/train/cat/1.png) and pass --data-dir DIR"
        )
    return names


def _images_in(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS)
    if not files:
        raise DataError(
            f"{folder} holds no images ({', '.join(sorted(EXTENSIONS))}); add some or remove "
            "the folder"
        )
    return files


def _examples(root: Path, data_dir: Path, classes: list[str]) -> list[Example]:
    """(path, label) of every image under `root`, whose class folders must be among `classes`."""
    labels = {name: label for label, name in enumerate(classes)}
    examples = []
    for folder in _class_folders(root, data_dir):
        if folder.name not in labels:
            raise DataError(
                f"{folder} is not a class of the train split ({', '.join(classes)}); rename it "
                "or add the class to the train folder"
            )
        examples += [(path, labels[folder.name]) for path in _images_in(folder)]
    return examples


def _shuffled(examples: list[Example]) -> list[Example]:
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(ORDER_SEED))
    return [examples[i] for i in order.tolist()]


def _held_out(examples: list[Example], fraction: float) -> set[int]:
    """Indices of `fraction` of each class (at least one, never all), chosen with a fixed seed."""
    generator = torch.Generator().manual_seed(ORDER_SEED)
    held = set()
    for label in sorted({label for _, label in examples}):
        members = [i for i, (_, lab) in enumerate(examples) if lab == label]
        count = min(len(members) - 1, max(1, round(fraction * len(members))))
        picked = torch.randperm(len(members), generator=generator)[:count]
        held.update(members[i] for i in picked.tolist())
    return held


def find_examples(
    data_dir: str | os.PathLike, split: str, test_fraction: float | None = None
) -> tuple[list[Example], list[str]]:
    """The (path, label) examples of `split` and the class names, before any image is decoded."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"image folder {data_dir} does not exist; pass --data-dir DIR holding "
            "DIR/train/CLASS/*.png"
        )
    classes = class_names(data_dir)
    has_test = (data_dir / "test").is_dir()
    if has_test and test_fraction is not None:
        raise DataError(
            f"{data_dir} has a test folder and a test fraction was given; drop --test-fraction "
            "to test on DIR/test, or remove DIR/test to hold out a fraction of DIR/train"
        )
    if split == "test" and has_test:
        return _shuffled(_examples(data_dir / "test", data_dir, classes)), classes
    examples = _examples(_train_root(data_dir), data_dir, classes)
    if test_fraction is None:
        if split == "test":
            raise DataError(
                f"{data_dir} has no test folder; add DIR/test/CLASS/ images or pass "
                "--test-fraction 0.2 to hold out 20 % of each class of DIR/train"
            )
        return _shuffled(examples), classes
    held = _held_out(examples, test_fraction)
    kept = [e for i, e in enumerate(examples) if (i in held) == (split == "test")]
    return _shuffled(kept), classes


def _decode(path: Path) -> tuple[np.ndarray, str]:
    try:
        with Image.open(path) as image:
            mode = image.mode
            pixels = np.asarray(image) if mode in CHANNELS else None
    except OSError as err:
        raise DataError(f"cannot read image {path}: {err}; replace or remove the file") from err
    if pixels is None:
        raise DataError(
            f"{path} is a {mode} image; advprune reads L (grey) or RGB images: {FIX_SHAPE}"
        )
    return pixels, mode


def read_images(examples: list[Example]) -> torch.Tensor:
    """uint8 (N, C, H, W) images, decoded on a thread pool (Pillow releases the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
        decoded = list(pool.map(_decode, [path for path, _ in examples]))
    first_pixels, first_mode = decoded[0]
    for (path, _), (pixels, mode) in zip(examples, decoded, strict=True):
        if pixels.shape[:2] != first_pixels.shape[:2] or mode != first_mode:
            height, width = pixels.shape[:2]
            raise DataError(
                f"{path} is {width}×{height} {mode}, but {examples[0][0]} is "
                f"{first_pixels.shape[1]}×{first_pixels.shape[0]} {first_mode}; all images must "
                f"share one size and mode: {FIX_SHAPE}"
            )
    images = torch.from_numpy(np.stack([pixels for pixels, _ in decoded]))
    if images.dim() == 3:
        images = images[..., None]
    return images.permute(0, 3, 1, 2).contiguous()


def read_image_folder(
    data_dir: str | os.PathLike,
    split: str,
    test_fraction: float | None = None,
    limit: int | None = None,
) -> ImageDataset:
    """The `split` of an image folder as an in-memory uint8 dataset with its class names.

    Example:
        train = read_image_folder("my_images", "train", test_fraction=0.2)
        train.class_names  # ('cat', 'dog')
    """
    examples, classes = find_examples(data_dir, split, test_fraction)
    examples = examples[:limit]
    labels = torch.tensor([label for _, label in examples], dtype=torch.int64)
    source = {
        "dataset": IMAGE_FOLDER,
        "data_dir": str(Path(data_dir).resolve()),
        "test_fraction": test_fraction,
    }
    return ImageDataset(
        IMAGE_FOLDER, read_images(examples), labels, len(classes), tuple(classes), source
    )


def image_folder_spec(train: ImageDataset, eps: float) -> DatasetSpec:
    """The facts a model and the trainer need, measured on the train split: channels, size,
    classes, per-channel mean/std; no augmentation (nothing is known about the images' symmetry:
    `--flip` turns flips on); `eps` is the run's ε, as an image folder has no standard one."""
    channels, height, width = train.images.shape[1:]
    if height != width:
        raise DataError(
            f"images in {train.source['data_dir'] if train.source else 'the folder'} are "
            f"{width}×{height}; advprune's models take square images: crop or resize them to "
            f"{min(height, width)}×{min(height, width)}"
        )
    mean, std = channel_statistics(train.images)
    return DatasetSpec(
        name=IMAGE_FOLDER,
        num_classes=train.num_classes,
        in_channels=channels,
        image_size=height,
        mean=mean,
        std=std,
        crop_padding=0,
        flip=False,
        default_eps=eps,
    )
