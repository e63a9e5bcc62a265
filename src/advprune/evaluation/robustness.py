"""Accuracy of a model under an attack, over a whole in-memory dataset, and per example."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from advprune.data import BatchLoader, ImageDataset

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
Observer = Callable[[torch.Tensor, torch.Tensor], None]


def correctness(
    model: nn.Module,
    dataset: ImageDataset,
    attack: Attack | None = None,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    progress: bool = False,
    desc: str = "",
    observe: Observer | None = None,
) -> Tensor:
    """Per example of `dataset`, in order: is it classified correctly after `attack` (None: on x
    itself)? A bool tensor on the CPU, one host-device synchronisation at the end.

    The model's mode is the caller's choice (evaluation uses eval mode: deterministic masks, frozen
    BN), and the order is fixed, so two calls see the same examples. `observe(x, x_adv)` sees
    every attacked batch (e.g. to measure latent vulnerability on the same examples).
    """
    loader = BatchLoader(dataset, None, batch_size, shuffle=False, augment=False, device=device)
    correct = []
    for x, y in tqdm(
        loader.epoch(0), total=len(loader), desc=desc, disable=not progress, leave=False
    ):
        if attack is not None:
            x_adv = attack(model, x, y)
            if observe is not None:
                observe(x, x_adv)
            x = x_adv
        with torch.no_grad():
            correct.append(model(x).argmax(1) == y)
    return torch.cat(correct).cpu()


def accuracy(
    model: nn.Module,
    dataset: ImageDataset,
    attack: Attack | None = None,
    **options,
) -> float:
    """Fraction of `dataset` classified correctly after `attack` (None: clean accuracy); the
    options are `correctness`'s."""
    correct = correctness(model, dataset, attack, **options)
    return int(correct.sum()) / len(correct)
