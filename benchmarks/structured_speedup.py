"""Structured pruning's measured speed-up against its FLOPs reduction, VGG-16 and ResNet-18.

For each network (random weights: timing does not depend on the values) and each channel
sparsity, every channel group loses that fraction of its channels by L1 filter norm (magnitude
`--structure channels`), the masked network is exported at its pruned widths (`--round-to`, as
`advprune export`), and the export is timed against the dense network in the same process with
`evaluation.latency.latency_comparison` as `advprune export` does: both models in both memory
layouts, interleaved in every repeat, each counted in its faster layout, the speed-up being the
median of the per-pair ratios with their min–max (`measured_speedup`). The quotient
measured / FLOPs says how much of the FLOPs reduction the hardware
turns into time. `--layers` adds the per-layer times of one configuration (benchmarks/
layer_latency.py's hooks), to show which layers hold the speed-up back.

    python benchmarks/structured_speedup.py [--threads 1] [--pairs 10] [--device auto]
        [--layers vgg16-bn:0.75]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform

import torch
from torch import nn

from advprune.core.device import resolve_device
from advprune.evaluation.complexity import model_complexity
from advprune.evaluation.latency import latency_comparison, measured_speedup
from advprune.masks.channels import (
    channel_groups,
    channel_weight_masks,
    filter_norms,
    select_channels,
)
from advprune.masks.export import channel_sparsity, export_gated
from advprune.models import create_model
from advprune.pipelines.export import ROUNDINGS, fastest_export
from layer_latency import leaf_times

SHAPE = (3, 32, 32)


def pruned_network(
    dense: nn.Module, sparsity: float, round_to: int | None, device: torch.device, threads: int
) -> tuple[nn.Module, float, int]:
    """The export of `dense` without the `sparsity` fraction of each group's channels (lowest
    L1 filter norm), the channel sparsity it has and its width multiple: `round_to`, or when
    None the fastest of `ROUNDINGS` on `device` (or the smallest near it), as `advprune export`
    chooses."""
    example = torch.zeros(1, *SHAPE)
    groups = channel_groups(dense, example)
    keep = select_channels(filter_norms(dense, groups), sparsity, scheme="layerwise")
    masked = copy.deepcopy(dense)
    channel_weight_masks(masked, groups, keep).apply(masked)
    removed = channel_sparsity(masked, example)["channel_sparsity"]
    if round_to is not None:
        return export_gated(masked, example, round_to), removed, round_to
    exported, choice = fastest_export(
        masked, example, batch_size=128, threads=threads, device=device
    )
    return exported, removed, choice["round_to"]


def spread(result: dict, batch: int) -> str:
    value = result[f"batch_{batch}"]
    return f"{value['median']:6.2f}x ({value['min']:.2f}–{value['max']:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vgg16-bn", "resnet18"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.75, 0.9])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument(
        "--round-to", type=int, help="width multiple (default: as advprune export chooses)"
    )
    parser.add_argument("--device", default="auto", help="auto: CUDA when there is one")
    parser.add_argument("--layers", help="MODEL:SPARSITY whose per-layer times to print")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    rounding = args.round_to or f"as export chooses from {ROUNDINGS}"
    print(
        f"device: {device} ({platform.processor() or platform.machine()}), torch "
        f"{torch.__version__}, {args.threads} thread(s), {args.pairs} pairs, round-to "
        f"{rounding}; load average {os.getloadavg()[0]:.2f} at the start"
    )
    print(
        f"{'network':10} {'channels':>8} {'round':>5} {'FLOPs':>7} {'batch 1 (min–max)':>22} "
        f"{'batch 128 (min–max)':>22} {'b1/FLOPs':>8} {'b128/FLOPs':>10}"
    )
    for name in args.models:
        torch.manual_seed(0)
        dense = create_model(name, num_classes=10, in_channels=3, image_size=32).eval()
        dense_flops = model_complexity(dense, SHAPE)["flops"]
        for sparsity in args.sparsities:
            exported, removed, round_to = pruned_network(
                dense, sparsity, args.round_to, device, args.threads
            )
            flops = dense_flops / model_complexity(exported, SHAPE)["flops"]
            comparison = latency_comparison(
                dense, exported, SHAPE, (1, 128), threads=args.threads, repeats=args.pairs,
                device=device,
            )  # fmt: skip
            measured = measured_speedup(comparison)
            quotients = [measured[f"batch_{b}"]["median"] / flops for b in (1, 128)]
            print(
                f"{name:10} {removed:8.0%} {round_to:5} {flops:6.2f}x {spread(measured, 1):>22} "
                f"{spread(measured, 128):>22} {quotients[0]:8.2f} {quotients[1]:10.2f}"
            )
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.layers:
        print_layers(*args.layers.split(":"), args.round_to)


def print_layers(name: str, sparsity: str, round_to: int | None) -> None:
    """Median time of each leaf module, dense against exported, batch 128, channels_last."""
    torch.manual_seed(0)
    dense = create_model(name, num_classes=10, in_channels=3, image_size=32).eval()
    exported, _, _ = pruned_network(dense, float(sparsity), round_to, torch.device("cpu"), 1)
    x = torch.rand((128, *SHAPE), generator=torch.Generator().manual_seed(0))
    x = x.contiguous(memory_format=torch.channels_last)
    models = [m.to(memory_format=torch.channels_last) for m in (dense, exported)]
    dense_ms, exported_ms = (leaf_times(model, x, repeats=5) for model in models)
    print(f"\n{name} at {float(sparsity):.0%} channels, batch 128, channels_last, median of 5")
    print(f"{'layer':22} {'kind':12} {'dense ms':>9} {'exported ms':>11} {'ratio':>7}")
    for layer, ms in dense_ms.items():
        other = exported_ms.get(layer, 0.0)
        kind = type(dense.get_submodule(layer)).__name__
        ratio = f"{ms / other:6.2f}x" if other > 0 else "      –"
        print(f"{layer:22} {kind:12} {ms:9.2f} {other:11.2f} {ratio}")
    total_dense, total_exported = sum(dense_ms.values()), sum(exported_ms.values())
    ratio = total_dense / total_exported
    print(f"{'sum':35} {total_dense:9.2f} {total_exported:11.2f} {ratio:6.2f}x")


if __name__ == "__main__":
    main()
