"""PGD-AT training throughput, and our data pipeline against a per-sample DataLoader.

Prints, on the current device and in one run:
1. images/s of the data pipeline alone — advprune's BatchLoader (uint8 tensors resident on the
   device, batched crop + flip) against a per-sample `torch.utils.data` Dataset/DataLoader doing
   the same augmentation — and their ratio, on CIFAR-shaped data (crop 4 + flip);
2. images/s of PGD-AT training steps (PGD-7 on the training batch, then SGD) for LeNet-5-Caffe on
   Fashion-MNIST-shaped input and ResNet-18 on CIFAR-shaped input;
3. one epoch of `advprune.training.train` (PGD-7 AT, Adam 1e-3, batch 128, LeNet-5-Caffe) on the
   first `--trainer-images` Fashion-MNIST training images (synthetic ones if the files are missing)
   against a plain PGD-7 AT loop written from the textbook on the same images, model and device,
   and their ratio: the whole `train` call (set-up, the per-epoch test monitor, checkpoint and
   model files), and without the monitor, which the plain loop does not do.

On a CPU the times are CPU seconds of this process, so that other jobs on a shared machine stay
out of the ratios (use --threads 1); on a GPU, wall seconds.

    python benchmarks/train_throughput.py [--device cuda] [--resnet-batch-size 128]
                                          [--trainer-images 12800] [--only trainer]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from advprune.core.device import resolve_device
from advprune.core.errors import DataError
from advprune.data import DATASETS, BatchLoader, ImageDataset, load_dataset
from advprune.models import architecture, create_model
from advprune.training import TrainConfig, train
from advprune.training.objectives import AttackSettings, pgd_at
from advprune.training.trainer import TrainingData, monitor


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


def clock(device: torch.device) -> Callable[[], float]:
    """CPU seconds of this process on a CPU device, so that other jobs on a shared machine do not
    enter the ratio (use --threads 1: with more, idle threads spinning count too); wall seconds
    on a GPU."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def plain_pgd_at_epoch(
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    eps: float,
    steps: int,
    batch_size: int,
) -> float:
    """Seconds of one epoch of the textbook loop: PGD-K from a uniform start on the model in eval
    mode, then Adam 1e-3 on CE(f(x̃), y) in train mode; data resident as one float tensor."""
    now = clock(device)
    synchronize(device)
    started = now()
    spec = DATASETS["fashion-mnist"]
    torch.manual_seed(0)
    model = create_model(**architecture("lenet5-caffe", spec)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x_all = (images.float() / 255).to(device)
    y_all = labels.to(device)
    alpha = 2.5 * eps / steps

    def attack(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        delta = (torch.rand_like(x) * 2 - 1) * eps
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), y)
            (gradient,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + alpha * gradient.sign()).clamp(-eps, eps)
            delta = (x + delta).clamp(0, 1) - x
        return (x + delta).detach()

    order = torch.randperm(len(y_all), device=device)
    for start in range(0, len(y_all) - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        x, y = x_all[index], y_all[index]
        model.eval()
        x_adv = attack(x, y)
        model.train()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x_adv), y).backward()
        optimizer.step()
    synchronize(device)
    return now() - started


def trainer_epoch(
    data: TrainingData, device: torch.device, eps: float, steps: int, batch_size: int
) -> tuple[float, float]:
    """Seconds of the whole `train` call for one epoch (set-up, the steps, the test monitor, the
    checkpoint and model files), and of its test monitor alone, run again on the trained model."""
    config = TrainConfig(
        dataset="fashion-mnist",
        model="lenet5-caffe",
        objective="pgd-at",
        eps=eps,
        attack_steps=steps,
        epochs=1,
        batch_size=batch_size,
        optimizer="adam",
        lr=1e-3,
        weight_decay=0.0,
        schedule="constant",
        device=str(device),
    ).validate()
    now = clock(device)
    with tempfile.TemporaryDirectory() as run_dir:
        synchronize(device)
        started = now()
        model = train(config, run_dir, data=data, progress=False, log=lambda line: None)
        synchronize(device)
        whole = now() - started
    started = now()
    monitor(model, data, config, device, epoch=0)
    synchronize(device)
    return whole, now() - started


def trainer_against_plain_loop(args: argparse.Namespace, device: torch.device) -> None:
    spec = DATASETS["fashion-mnist"]
    try:
        train_split = load_dataset("fashion-mnist", "train", limit=args.trainer_images)
        test_split = load_dataset("fashion-mnist", "test")
        source = "Fashion-MNIST"
    except DataError:
        train_split = synthetic("fashion-mnist", args.trainer_images)
        test_split = synthetic("fashion-mnist", spec.test_size)
        source = "synthetic Fashion-MNIST-shaped"
    data = TrainingData(spec, train_split, test_split)
    eps, steps, batch = spec.default_eps, 7, args.batch_size
    # torch's first optimizer step imports its compiler stack (seconds): let neither loop pay it.
    warm_up = torch.zeros(1, requires_grad=True)
    warm_up.grad = torch.zeros(1)
    torch.optim.Adam([warm_up]).step()
    runs = []  # (plain, whole, monitor), the two loops taken in turn so that drift hits both
    for _ in range(args.trainer_repeats):
        plain = plain_pgd_at_epoch(
            train_split.images, train_split.labels, device, eps, steps, batch
        )
        runs.append((plain, *trainer_epoch(data, device, eps, steps, batch)))
    plain, whole, watch = (statistics.median(column) for column in zip(*runs, strict=True))
    whole_ratio = statistics.median(run[1] / run[0] for run in runs)
    rest_ratio = statistics.median((run[1] - run[2]) / run[0] for run in runs)
    unit = "CPU s" if device.type == "cpu" else "s"
    defaults = TrainConfig()
    print(
        f"advprune train against a plain PGD-{steps} AT loop, one epoch of "
        f"{len(train_split):,} {source} images, lenet5-caffe, Adam, batch {batch} "
        f"(median of {len(runs)}):"
    )
    print(f"  plain loop                       {plain:>8.1f} {unit}")
    print(f"  train(), whole call              {whole:>8.1f} {unit}   ratio {whole_ratio:.3f}")
    print(
        f"    of which the test monitor      {watch:>8.1f} {unit}   (clean on "
        f"{min(defaults.monitor_clean_examples, len(test_split)):,} test images, PGD-10 on "
        f"{defaults.monitor_examples:,})"
    )
    print(f"  train() less its monitor                    ratio {rest_ratio:.3f}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--pipeline-images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lenet-steps", type=int, default=20)
    parser.add_argument("--resnet-steps", type=int, default=2)
    parser.add_argument("--resnet-batch-size", type=int, default=32, help="128 on a GPU")
    parser.add_argument("--trainer-images", type=int, default=12_800)
    parser.add_argument("--trainer-repeats", type=int, default=1, help="pairs, taken in turn")
    parser.add_argument(
        "--only", choices=("pipeline", "steps", "trainer"), help="run one of the three parts"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.only in (None, "pipeline"):
        pipeline_comparison(args, device)
    if args.only in (None, "steps"):
        step_rates(args, device)
    if args.only in (None, "trainer"):
        trainer_against_plain_loop(args, device)


def pipeline_comparison(args: argparse.Namespace, device: torch.device) -> None:
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


def step_rates(args: argparse.Namespace, device: torch.device) -> None:
    print("PGD-AT training (PGD-7 + SGD step):")
    lenet = training_rate(
        "lenet5-caffe", "fashion-mnist", args.batch_size, args.lenet_steps, device
    )
    print(f"  lenet5-caffe, Fashion-MNIST shape  {lenet:>10,.0f} img/s")
    resnet = training_rate("resnet18", "cifar10", args.resnet_batch_size, args.resnet_steps, device)
    print(f"  resnet18, CIFAR-10 shape, batch {args.resnet_batch_size}  {resnet:>10,.1f} img/s")


if __name__ == "__main__":
    main()
