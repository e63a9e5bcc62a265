"""What a dataset is: images and labels in memory, plus the facts each dataset is known by."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from advprune.core.errors import DataError

# The name of images passed in Python as tensors: no files to read them again from.
CUSTOM_DATASET = "custom"


def check_limit(limit: int | None) -> None:
    """A limit counts examples, so it must be positive (None means the whole split)."""
    if limit is not None and limit <= 0:
        raise DataError(
            f"limit must be a positive number of examples, got {limit}; "
            "pass a limit of 1 or more, or none for the whole split"
        )


@dataclass
class ImageDataset:
    """A whole split held as (N, C, H, W) images and int64 (N,) labels.

    The standard datasets are kept as uint8 (a quarter of float32 memory, so even Tiny-ImageNet
    fits on a GPU; batches are converted there, see `BatchLoader`); images a user passes as float
    tensors in [0, 1] are kept as they are (`from_tensors`). `class_names` are kept where the
    files name them (an image folder's class folders); `source` holds the settings that read the
    split again (dataset, data_dir, test_fraction), so a run trained on it in Python records
    where its data came from; None for tensors made in Python.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...] = ()
    source: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype not in (torch.uint8, torch.float32) or self.images.dim() != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 or float32 (N, C, H, W) tensor, got "
                f"{self.images.dtype} {tuple(self.images.shape)}; convert them before building "
                "an ImageDataset"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise DataError(
                f"{self.name}: labels must be an int64 tensor of shape ({len(self.images)},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}; give one label per image"
            )

    @classmethod
    def from_tensors(
        cls, images: torch.Tensor, labels: torch.Tensor, name: str = CUSTOM_DATASET
    ) -> ImageDataset:
        """A dataset of the caller's own tensors: float images in [0, 1] (or uint8), as they are.

        Example:
            ImageDataset.from_tensors(torch.rand(100, 3, 32, 32), torch.randint(0, 10, (100,)))
        """
        if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
            raise DataError("pass images and labels as torch tensors: (N, C, H, W) and (N,)")
        if images.dim() == 3:  # (N, H, W): one channel
            images = images[:, None]
        if images.is_floating_point():
            images = images.detach().float()
            if images.numel() and (images.min() < 0 or images.max() > 1):
                raise DataError(
                    f"{name}: float images must be in [0, 1] (found {images.min().item():.3g} to "
                    f"{images.max().item():.3g}); divide by 255, and leave normalisation to the "
                    "model"
                )
        labels = labels.detach().long().flatten()
        classes = int(labels.max().item()) + 1 if labels.numel() else 0
        return cls(name, images.contiguous(), labels, classes)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, limit: int | None) -> ImageDataset:
        """The first `limit` examples (all of them when `limit` is None or exceeds the size)."""
        check_limit(limit)
        if limit is None or limit >= len(self):
            return self
        return dataclasses.replace(self, images=self.images[:limit], labels=self.labels[:limit])

    def to(self, device: torch.device | str) -> ImageDataset:
        return dataclasses.replace(
            self, images=self.images.to(device), labels=self.labels.to(device)
        )


@dataclass(frozen=True)
class DatasetSpec:
    """What a model, an attack and the augmentation need to know about a dataset.

    `mean`/`std` are the per-channel statistics of the training split (pixels in [0, 1]); models
    normalise inside, so attacks work in pixel space. `default_eps` is the usual L-inf budget for
    the dataset (0.3 MNIST, 0.1 Fashion-MNIST, 8/255 for the colour sets). For Tiny-ImageNet MAD
    uses 4/255 instead, so a MAD recipe must set eps itself. `crop_padding` 0 means no random crop.
    `train_size`/`test_size` count the examples of the standard files (what `--scale` shrinks);
    None for a dataset described by hand.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool
    default_eps: float
    train_size: int | None = None
    test_size: int | None = None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            num_classes=10,
            in_channels=1,
            image_size=28,
            mean=(0.1307,),
            std=(0.3081,),
            crop_padding=0,
            flip=False,
            default_eps=0.3,
            train_size=60000,
            test_size=10000,
        ),
        DatasetSpec(
            name="fashion-mnist",
            num_classes=10,
            in_channels=1,
            image_size=28,
            mean=(0.2860,),
            std=(0.3530,),
            crop_padding=0,
            flip=False,
            default_eps=0.1,
            train_size=60000,
            test_size=10000,
        ),
        DatasetSpec(
            name="cifar10",
            num_classes=10,
            in_channels=3,
            image_size=32,
            mean=(0.4914, 0.4822, 0.4465),
            std=(0.2470, 0.2435, 0.2616),
            crop_padding=4,
            flip=True,
            default_eps=8 / 255,
            train_size=50000,
            test_size=10000,
        ),
        DatasetSpec(
            name="cifar100",
            num_classes=100,
            in_channels=3,
            image_size=32,
            mean=(0.5071, 0.4865, 0.4409),
            std=(0.2673, 0.2564, 0.2762),
            crop_padding=4,
            flip=True,
            default_eps=8 / 255,
            train_size=50000,
            test_size=10000,
        ),
        # Digits are not mirror-symmetric, so SVHN is cropped but never flipped.
        DatasetSpec(
            name="svhn",
            num_classes=10,
            in_channels=3,
            image_size=32,
            mean=(0.4377, 0.4438, 0.4728),
            std=(0.1980, 0.2010, 0.1970),
            crop_padding=4,
            flip=False,
            default_eps=8 / 255,
            train_size=73257,
            test_size=26032,
        ),
        # MAD reports Tiny-ImageNet at 4/255: see the class docstring.
        DatasetSpec(
            name="tiny-imagenet",
            num_classes=200,
            in_channels=3,
            image_size=64,
            mean=(0.4802, 0.4481, 0.3975),
            std=(0.2770, 0.2691, 0.2821),
            crop_padding=4,
            flip=True,
            default_eps=8 / 255,
            train_size=100000,
            test_size=10000,
        ),
    )
}


def get_spec(name: str) -> DatasetSpec:
    """What advprune knows of a dataset before reading it (classes, shape, standard ε, sizes).

    Example:
        get_spec("fashion-mnist").default_eps   # 0.1
    """
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None


def channel_statistics(
    images: torch.Tensor, chunk: int = 1024
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of (N, C, H, W) images in [0, 1] pixel units
    (uint8 images are divided by 255), summed in float64 a chunk at a time: a float copy of a
    whole split may not fit in memory. The normalisation a dataset given as files or tensors gets.

    Example:
        mean, std = channel_statistics(train.images)   # ((0.286,), (0.353,)) for Fashion-MNIST
    """
    sums = torch.zeros(2, images.shape[1], dtype=torch.float64)
    for part in images.split(chunk):
        x = part.double() / 255 if part.dtype == torch.uint8 else part.double()
        sums += torch.stack([x.sum((0, 2, 3)), x.square().sum((0, 2, 3))]).cpu()
    count = images[:, :1].numel()
    mean = sums[0] / count
    std = (sums[1] / count - mean.square()).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
