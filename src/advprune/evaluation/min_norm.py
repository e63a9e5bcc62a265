"""A minimum-norm attack's per-example distances: the security curve of one run, at every ε.

The distances (L∞, one per test example: 0 where the clean example is already misclassified, inf
where the attack found no adversarial example) are saved to `fmn_distances.safetensors` in the
results folder, so curves can be redrawn, compared per example or cut at any ε later without
attacking again. Robust accuracy at ε is the share of distances > ε; the Adversarial Pruning
Benchmark reads it at 8/255.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from advprune.core.tensor_files import load_tensors, save_tensors
from advprune.data import BatchLoader, ImageDataset

BENCHMARK_EPS = 8 / 255
CURVE_POINTS = 21


def distances_over(
    model: nn.Module,
    dataset: ImageDataset,
    distances: Callable[..., tuple[Tensor, Tensor]],
    options: dict[str, Any],
    *,
    device: torch.device,
    batch_size: int,
    progress: bool = False,
) -> Tensor:
    """Per-example distances of `distances(model, x, y, **options)` over `dataset`, in order, on
    the CPU."""
    loader = BatchLoader(dataset, None, batch_size, shuffle=False, augment=False, device=device)
    found = []
    for x, y in tqdm(
        loader.epoch(0), total=len(loader), desc="fmn", disable=not progress, leave=False
    ):
        found.append(distances(model, x, y, **options)[0].cpu())
    return torch.cat(found)


def save_distances(path: Path, distances: Tensor, settings: dict[str, Any]) -> Path:
    return save_tensors(path, {"distance": distances.float()}, {"settings": settings})


def load_distances(path: Path) -> tuple[Tensor, dict[str, Any]]:
    tensors, metadata = load_tensors(path, "distances file")
    return tensors["distance"], metadata.get("settings", {})


def robust_accuracy(distances: Tensor, eps: float) -> float:
    """Share of examples whose minimal perturbation is larger than `eps`."""
    return int((distances > eps).sum()) / len(distances) if len(distances) else 0.0


def distance_summary(distances: Tensor, eps: float, radii: Sequence[float] = ()) -> dict[str, Any]:
    """What results.json keeps of the distances: their count and median, the accuracy at ε and at
    8/255, and the security curve at `CURVE_POINTS` radii from 0 to 2·max(ε, 8/255) (plus
    `radii`)."""
    finite = distances[torch.isfinite(distances)]
    top = 2 * max(eps, BENCHMARK_EPS)
    grid = sorted({*(top * i / (CURVE_POINTS - 1) for i in range(CURVE_POINTS)), *radii, eps})
    return {
        "examples": len(distances),
        "found": len(finite),
        "median_distance": finite.median().item() if len(finite) else None,
        "accuracy_at": {
            f"{eps:g}": robust_accuracy(distances, eps),
            "8/255": robust_accuracy(distances, BENCHMARK_EPS),
        },
        "security_curve": [{"eps": r, "accuracy": robust_accuracy(distances, r)} for r in grid],
    }
