"""Accuracy of a model under an attack, over a whole in-memory dataset."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from advprune.data import BatchLoader, ImageDataset

Attack = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def accuracy(
    model: nn.Module,
    dataset: ImageDataset,
    attack: Attack | None = None,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 500,
    progress: bool = False,
    desc: str = "",
) -> float:
    """Fraction of `dataset` classified correctly after `attack` (None: clean accuracy).

    The model's mode is the caller's choice (evaluation uses eval mode: deterministic masks, frozen
    BN), and the order is fixed, so two calls see the same examples.
    """
    loader = BatchLoader(dataset, None, batch_size, shuffle=False, augment=False, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for x, y in tqdm(
        loader.epoch(0), total=len(loader), desc=desc, disable=not progress, leave=False
    ):
        if attack is not None:
            x = attack(model, x, y)
        with torch.no_grad():
            correct += (model(x).argmax(1) == y).sum()
    return correct.item() / len(dataset)
