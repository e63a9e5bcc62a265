"""Batches from an in-memory dataset, built on the device and reproducible per (seed, epoch)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from advprune.core.errors import ConfigError
from advprune.data.dataset import DatasetSpec, ImageDataset


def crop_and_flip(
    images: torch.Tensor, padding: int, offsets: torch.Tensor | None, flips: torch.Tensor | None
) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip for a whole batch, in one gather.

    Sample i is `images[i]` padded by `padding` zeros on each side, cut back to its size at
    `offsets[i] = (dy, dx)` (each in [0, 2 * padding]), then mirrored if `flips[i]`. Each output
    pixel's position in the flattened padded image is computed for the batch at once and read with
    a single `gather` (on CPU several times faster than 4-D advanced indexing).
    """
    batch, channels, height, width = images.shape
    padded_width = width + 2 * padding
    padded = F.pad(images, (padding,) * 4).flatten(2)
    rows = torch.arange(height, device=images.device).expand(batch, height)
    cols = torch.arange(width, device=images.device).expand(batch, width)
    if offsets is not None:
        rows = rows + offsets[:, :1]
        cols = cols + offsets[:, 1:]
    else:
        rows, cols = rows + padding, cols + padding
    if flips is not None:
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * padded_width + cols[:, None, :]).flatten(1)
    out = padded.gather(2, index[:, None, :].expand(batch, channels, height * width))
    return out.view(batch, channels, height, width)


def _as_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float in [0, 1]; float images are already there."""
    return images.float() / 255 if images.dtype == torch.uint8 else images


class BatchLoader:
    """(x, y) batches of an `ImageDataset`, replacing `torch.utils.data.DataLoader`.

    The images (uint8, or float in [0, 1]) move to `device` once; each batch is gathered,
    augmented and converted to float in [0, 1] there, with no Python work per sample. Epoch e's
    order and augmentation come
    from a private generator seeded from (seed, e) alone, so epoch e yields the same batches
    whatever ran before, and `epoch(e, start_batch=k)` resumes mid-epoch by skipping k batches.

    With `world_size` > 1 (DDP) the epoch's permutation is padded by wrapping around to a multiple
    of `world_size` and rank r takes positions r, r + world_size, ... as `DistributedSampler` does,
    so the shards are disjoint (up to the padding) and every rank runs the same number of batches.
    `drop_last` drops a rank's last, incomplete batch.
    """

    def __init__(
        self,
        dataset: ImageDataset,
        spec: DatasetSpec | None,
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(
                f"batch size must be at least 1, got {batch_size}; raise --batch-size"
            )
        if not 0 <= rank < world_size:
            raise ConfigError(
                f"rank {rank} is outside 0..{world_size - 1} for world size {world_size}; "
                "launch with torchrun so that RANK and WORLD_SIZE agree"
            )
        self.device = torch.device(device)
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.crop_padding = spec.crop_padding if augment and spec is not None else 0
        self.flip = augment and spec is not None and spec.flip
        self.samples_per_rank = math.ceil(len(dataset) / world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.samples_per_rank // self.batch_size
        return math.ceil(self.samples_per_rank / self.batch_size)

    def _generator(self, epoch: int) -> torch.Generator:
        """A generator for (seed, epoch), hashed so that nearby seeds give unrelated streams."""
        key = hashlib.blake2b(f"{self.seed}:{epoch}".encode(), digest_size=8).digest()
        return torch.Generator().manual_seed(int.from_bytes(key, "little"))

    def _plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This rank's example order, crop offsets and flips for `epoch`, on the device.

        Every draw is made for the whole padded epoch before sharding, so they do not depend on
        which batch we start from.
        """
        generator = self._generator(epoch)
        size = len(self.labels)
        order = torch.randperm(size, generator=generator) if self.shuffle else torch.arange(size)
        total = self.samples_per_rank * self.world_size
        if total > size:
            order = order.repeat(math.ceil(total / size))[:total]
        shard = slice(self.rank, None, self.world_size)
        offsets = flips = None
        if self.crop_padding:
            offsets = torch.randint(2 * self.crop_padding + 1, (total, 2), generator=generator)
            offsets = offsets[shard].to(self.device)
        if self.flip:
            flips = (torch.rand(total, generator=generator) < 0.5)[shard].to(self.device)
        return order[shard].to(self.device), offsets, flips

    def epoch(
        self, epoch: int, start_batch: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from batch `start_batch` on: float32 x in [0, 1], int64 y."""
        if not 0 <= start_batch <= len(self):
            raise ConfigError(
                f"start batch {start_batch} is outside 0..{len(self)}; the checkpoint does not "
                "match this batch size or dataset, resume with the settings it was saved with"
            )
        return self._batches(epoch, start_batch)

    def _batches(self, epoch: int, start_batch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order, offsets, flips = self._plan(epoch)
        for start in range(
            start_batch * self.batch_size, len(self) * self.batch_size, self.batch_size
        ):
            batch = slice(start, start + self.batch_size)
            index = order[batch]
            images = self.images[index]
            if offsets is not None or flips is not None:
                images = crop_and_flip(
                    images,
                    self.crop_padding,
                    None if offsets is None else offsets[batch],
                    None if flips is None else flips[batch],
                )
            yield _as_float(images), self.labels[index]
