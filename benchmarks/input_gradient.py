"""The first convolution's input gradient: PyTorch's CPU kernel (oneDNN) against advprune's
`FewChannelConv2d` (models/few_channel_conv.py), one layer at a time and in a whole PGD attack.

Per layer: the backward to the input alone (what an attack step needs), batch 128 (64 for the
7×7 stem), channels_last, float32. Per attack: PGD-10 iterations of a `create_model` network,
the same network with its first layer turned back into a plain Conv2d as the reference. The two
take turns, `--repeats` times; medians, their ratio, and the largest difference of the two
results relative to the largest entry.

    python benchmarks/input_gradient.py [--threads 1] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advprune.models import create_model
from advprune.models.few_channel_conv import input_gradient

LAYERS = {  # name: (in channels, out channels, image size, kernel, stride, padding, batch)
    "LeNet-5-Caffe conv1 (1→20, 5×5, 28²)": (1, 20, 28, 5, 1, 0, 128),
    "1→32, 3×3, 28²": (1, 32, 28, 3, 1, 1, 128),
    "CIFAR stem (3→64, 3×3, 32²)": (3, 64, 32, 3, 1, 1, 128),
    "VGG stem (3→16, 3×3, 32²)": (3, 16, 32, 3, 1, 1, 128),
    "ImageNet stem (3→64, 7×7 /2, 64²)": (3, 64, 64, 7, 2, 3, 64),
}
ATTACKS = {  # name: (model, in channels, image size, batch)
    "lenet5-caffe, batch 128": ("lenet5-caffe", 1, 28, 128),
    "resnet18, batch 32": ("resnet18", 3, 32, 32),
}


def interleaved(first: Callable[[], Tensor], second: Callable[[], Tensor], repeats: int):
    """Median seconds of each, taking turns, and their results' relative difference."""
    times: tuple[list[float], list[float]] = ([], [])
    outputs = [first(), second()]  # warm-up
    for _ in range(repeats):
        for clock, run in zip(times, (first, second), strict=True):
            start = time.perf_counter()
            run()
            clock.append(time.perf_counter() - start)
    scale = outputs[0].abs().max().clamp_min(1e-30)
    difference = ((outputs[0] - outputs[1]).abs().max() / scale).item()
    return statistics.median(times[0]), statistics.median(times[1]), difference


def layer_case(spec: tuple[int, ...]) -> tuple[Callable[[], Tensor], Callable[[], Tensor]]:
    in_channels, out_channels, size, kernel, stride, padding, batch = spec
    channels_last = torch.channels_last
    weight = torch.randn(out_channels, in_channels, kernel, kernel).to(memory_format=channels_last)
    x = torch.rand(batch, in_channels, size, size).to(memory_format=channels_last)
    grad = torch.randn_like(F.conv2d(x, weight, stride=stride, padding=padding))
    geometry = ([stride] * 2, [padding] * 2, [1, 1])

    def native() -> Tensor:
        return torch.ops.aten.convolution_backward(
            grad, x, weight, None, *geometry, False, [0, 0], 1, [True, False, False]
        )[0]

    def ours() -> Tensor:
        return input_gradient(grad, weight, (size, size), (stride,) * 2, (padding,) * 2, (1, 1))

    return native, ours


def attack_case(spec: tuple[str, int, int, int]) -> tuple[Callable[[], Tensor], ...]:
    name, in_channels, size, batch = spec
    torch.manual_seed(0)
    fast = create_model(name, 10, in_channels, image_size=size).eval()
    fast = fast.to(memory_format=torch.channels_last)
    plain = create_model(name, 10, in_channels, image_size=size).eval()
    plain.load_state_dict(fast.state_dict())
    plain = plain.to(memory_format=torch.channels_last)
    for module in plain.modules():
        if isinstance(module, nn.Conv2d):
            module.__class__ = nn.Conv2d
    x = torch.rand(batch, in_channels, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def pgd(model: nn.Module) -> Tensor:
        x_adv = x.clone()
        for _ in range(10):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
            x_adv = (x_adv.detach() + 0.01 * grad.sign()).clamp(0, 1)
        return x_adv

    return (lambda: pgd(plain)), (lambda: pgd(fast))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), medians of {args.repeats}")
    print(f"{'input gradient of':<40} {'oneDNN':>9} {'ours':>9} {'ratio':>7} {'rel. diff':>10}")
    for label, spec in LAYERS.items():
        reference, fast, difference = interleaved(*layer_case(spec), args.repeats)
        print(
            f"{label:<40} {reference * 1e3:7.2f}ms {fast * 1e3:7.2f}ms "
            f"{reference / fast:6.2f}× {difference:10.1e}"
        )
    print(f"{'PGD-10 attack':<40} {'plain':>9} {'ours':>9} {'ratio':>7} {'rel. diff':>10}")
    for label, spec in ATTACKS.items():
        reference, fast, difference = interleaved(*attack_case(spec), max(3, args.repeats // 2))
        print(
            f"{label:<40} {reference * 1e3:7.0f}ms {fast * 1e3:7.0f}ms "
            f"{reference / fast:6.2f}× {difference:10.1e}"
        )


if __name__ == "__main__":
    main()
