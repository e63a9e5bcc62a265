"""Where the CPU time of an exported ANP-VS network goes, layer by layer, against the dense one.

`advprune export` reports one end-to-end ratio. This script splits it: the median time of each
leaf module (conv, pool, ReLU, linear) of the dense model of the run's architecture and of the
exported model, on the same input, in one process, and each layer's ratio. It shows which layers
a pruned network must shrink to get faster; e.g. a conv layer that keeps its channels, and the
pooling after it, bound the speed-up whatever happens elsewhere.

    python benchmarks/layer_latency.py RUN_DIR [--batch-size 128] [--threads 1] [--repeats 30]
                                       [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from advprune.core.run_dir import RunDir
from advprune.models import create_model, input_shape
from advprune.models.serialization import ARCHITECTURE_KEYS, load_model


def leaf_times(model: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median milliseconds spent in each leaf module over `repeats` forward passes."""
    samples: dict[str, list[float]] = {}
    starts: dict[str, float] = {}
    handles = []
    for name, module in model.named_modules():
        if list(module.children()):
            continue

        def before(_module: nn.Module, _args: tuple, name: str = name) -> None:
            starts[name] = time.perf_counter()

        def after(_module: nn.Module, _args: tuple, _out: torch.Tensor, name: str = name) -> None:
            samples.setdefault(name, []).append(time.perf_counter() - starts[name])

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.inference_mode():
            model.eval()
            for _ in range(5):
                model(x)
            samples.clear()
            for _ in range(repeats):
                model(x)
    finally:
        for handle in handles:
            handle.remove()
    return {name: 1000 * statistics.median(times) for name, times in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="an exported ANP-VS run directory")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--channels-last", action="store_true", help="both models in NHWC")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    exported, metadata = load_model(RunDir(args.run_dir).exported / "model.safetensors")
    architecture = metadata["architecture"]
    dense = create_model(**{key: architecture[key] for key in ARCHITECTURE_KEYS})
    shape = input_shape(architecture)
    x = torch.rand((args.batch_size, *shape), generator=torch.Generator().manual_seed(0))
    if args.channels_last:
        dense, exported = (m.to(memory_format=torch.channels_last) for m in (dense, exported))
    dense_ms = leaf_times(dense, x, args.repeats)
    exported_ms = leaf_times(exported, x, args.repeats)

    layout = "channels_last" if args.channels_last else "NCHW"
    print(f"batch {args.batch_size}, {args.threads} thread(s), {layout}, median of {args.repeats}")
    print(f"{'layer':24} {'dense ms':>10} {'exported ms':>12} {'ratio':>7}")
    for name, ms in dense_ms.items():
        other = exported_ms.get(name, 0.0)
        ratio = f"{ms / other:6.2f}x" if other > 0 else "      –"
        print(f"{name:24} {ms:10.3f} {other:12.3f} {ratio}")
    total_dense, total_exported = sum(dense_ms.values()), sum(exported_ms.values())
    print(
        f"{'sum of layers':24} {total_dense:10.3f} {total_exported:12.3f} "
        f"{total_dense / total_exported:6.2f}x"
    )


if __name__ == "__main__":
    main()
