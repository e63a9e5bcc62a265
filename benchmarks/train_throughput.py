"""PGD-AT training throughput, and our data pipeline against a per-sample DataLoader.

Prints, on the current device and in one run:
1. images/s of the data pipeline alone — advprune's BatchLoader (uint8 tensors resident on the
   device, batched crop + flip) against a per-sample `torch.utils.data` Dataset/DataLoader doing
   the same augmentation — and their ratio, on CIFAR-shaped data (crop 4 + flip);
2. images/s of PGD-AT training steps (PGD-7 on the training batch, then SGD) for LeNet-5-Caffe on
   Fashion-MNIST-shaped input and ResNet-18 on CIFAR-shaped input.

    python benchmarks/train_throughput.py [--device cuda] [--resnet-batch-size 128]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from advprune.core.device import resolve_device
from advprune.data import DATASETS, BatchLoader, ImageDataset
from advprune.models import architecture, create_model
from advprune.training.objectives import AttackSettings, pgd_at


class PerSampleDataset(Dataset):
    """The usual pipeline: index one uint8 image, augment it alone, let DataLoader collate."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, padding: int) -> None:
        self.images, self.labels, self.padding = images, labels, padding

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index].float() / 255
        padded = F.pad(image, (self.padding,) * 4)
        top, left = torch.randint(0, 2 * self.padding + 1, (2,)).tolist()
        image = padded[:, top : top + image.shape[1], left : left + image.shape[2]]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return image, self.labels[index]


def synthetic(name: str, count: int) -> ImageDataset:
    spec = DATASETS[name]
    generator = torch.Generator().manual_seed(0)
    shape = (count, spec.in_channels, spec.image_size, spec.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, spec.num_classes, (count,), generator=generator)
    return ImageDataset(name, images, labels, spec.num_classes)


def pipeline_rate(batches, device: torch.device) -> float:
    """Images per second to produce every batch of one epoch on `device`."""
    started, seen = time.perf_counter(), 0
    for x, _ in batches:
        x = x.to(device, non_blocking=True)
        seen += len(x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def training_rate(
    model_name: str, dataset: str, batch_size: int, steps: int, device: torch.device
) -> float:
    """Images per second of PGD-7 adversarial training steps (after one warm-up step)."""
    spec = DATASETS[dataset]
    model = create_model(**architecture(model_name, spec)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = synthetic(dataset, batch_size * (steps + 1))
    loader = BatchLoader(data, spec, batch_size, shuffle=True, augment=True, device=device)
    attack = AttackSettings(spec.default_eps, steps=7)
    model.train()
    for step, (x, y) in enumerate(loader.epoch(0)):
        if step == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
        out = pgd_at(model, x, y, attack, beta=0.0)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch_size * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pipeline-images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lenet-steps", type=int, default=20)
    parser.add_argument("--resnet-steps", type=int, default=2)
    parser.add_argument("--resnet-batch-size", type=int, default=32, help="128 on a GPU")
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    data = synthetic("cifar10", args.pipeline_images)
    ours = BatchLoader(
        data, DATASETS["cifar10"], args.batch_size, shuffle=True, augment=True, device=device
    )
    reference = DataLoader(
        PerSampleDataset(data.images, data.labels, padding=4),
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=0,
    )
    ours_rate = pipeline_rate(ours.epoch(0), device)
    reference_rate = pipeline_rate(reference, device)
    print(
        f"data pipeline, CIFAR-shaped, crop 4 + flip, batch {args.batch_size}, "
        f"{args.pipeline_images} images:"
    )
    print(f"  advprune BatchLoader        {ours_rate:>12,.0f} img/s")
    print(f"  per-sample DataLoader      {reference_rate:>12,.0f} img/s")
    print(f"  ratio                      {ours_rate / reference_rate:>12.1f}x")

    print("PGD-AT training (PGD-7 + SGD step):")
    lenet = training_rate(
        "lenet5-caffe", "fashion-mnist", args.batch_size, args.lenet_steps, device
    )
    print(f"  lenet5-caffe, Fashion-MNIST shape  {lenet:>10,.0f} img/s")
    resnet = training_rate("resnet18", "cifar10", args.resnet_batch_size, args.resnet_steps, device)
    print(f"  resnet18, CIFAR-10 shape, batch {args.resnet_batch_size}  {resnet:>10,.1f} img/s")


if __name__ == "__main__":
    main()
