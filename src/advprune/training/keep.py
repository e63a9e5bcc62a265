"""Which epoch a run ends with: the last one (advprune's default), or the best one by robust
accuracy on images the run sets aside for it.

The official HYDRA, HARP and MAD code keep `model_best`, the epoch of best accuracy on the *test*
set, and report that same set's figures: the test set then chooses the model, and the figures
are optimistic. `best-validation` is the clean alternative (the images it selects on are held
out of training, so the training set shrinks by them); `best-test` is the official procedure,
for reproducing a table as published, labelled as such wherever the run's name is shown.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from advprune.core.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from advprune.data import ImageDataset

KEEPS = ("last", "best-validation", "best-test")
KEEP_METRICS = ("pgd10", "clean")
KEPT_PREFIX = "kept/"  # the kept epoch's tensors in a checkpoint's method state


def check_keep(keep: str, examples: int) -> None:
    if keep != "last" and examples < 1:
        raise ConfigError(
            f"--keep {keep} selects on --keep-examples images, got {examples}; pass e.g. "
            "--keep-examples 1000"
        )


def selection_split(
    train: ImageDataset, test: ImageDataset, keep: str, examples: int
) -> tuple[ImageDataset, ImageDataset | None]:
    """(the images the run trains on, the images the kept epoch is chosen on).

    `best-validation` holds out the training split's last `examples` images (the same ones for
    every seed, so runs of one setting select on one set); `best-test` uses the test split's first.
    """
    if keep == "last":
        return train, None
    if keep == "best-test":
        return train, test.take(examples)
    if examples >= len(train):
        raise ConfigError(
            f"--keep best-validation holds out {examples} of the {len(train)} training images, "
            "leaving none to train on; lower --keep-examples or raise --limit-train"
        )
    cut = len(train) - examples
    kept = dataclasses.replace(train, images=train.images[:cut], labels=train.labels[:cut])
    held_out = dataclasses.replace(
        train, name=f"{train.name} (held out)", images=train.images[cut:], labels=train.labels[cut:]
    )
    return kept, held_out


@dataclass
class KeptEpoch:
    """The best epoch so far: its number (1-based), score and a copy of its state."""

    epoch: int
    score: float
    model: dict[str, torch.Tensor]
    method: dict[str, torch.Tensor]

    @classmethod
    def copy_of(
        cls, epoch: int, score: float, model: torch.nn.Module, method: dict[str, torch.Tensor]
    ) -> KeptEpoch:
        def cloned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return {name: t.detach().clone() for name, t in state.items()}

        return cls(epoch, score, cloned(model.state_dict()), cloned(method))

    def tensors(self) -> dict[str, torch.Tensor]:
        """Its state as checkpoint tensors, beside the method's own."""
        tensors = {f"{KEPT_PREFIX}model/{name}": t for name, t in self.model.items()}
        tensors.update({f"{KEPT_PREFIX}method/{name}": t for name, t in self.method.items()})
        return tensors

    def summary(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "score": self.score}

    @classmethod
    def split_from(
        cls, extra: dict[str, torch.Tensor], summary: dict[str, Any] | None, where: str
    ) -> tuple[KeptEpoch | None, dict[str, torch.Tensor]]:
        """(the kept epoch, the method's own tensors) from a checkpoint's extra tensors."""
        own = {k: v for k, v in extra.items() if not k.startswith(KEPT_PREFIX)}
        if summary is None:
            return None, own
        parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "method": {}}
        for name, tensor in extra.items():
            if name.startswith(KEPT_PREFIX):
                part, key = name[len(KEPT_PREFIX) :].split("/", 1)
                parts[part][key] = tensor
        if not parts["model"]:
            raise CheckpointError(
                f"{where} names a kept epoch ({summary['epoch']}) but holds none of its weights; "
                "the file is damaged: train again into a new --run-dir"
            )
        return cls(summary["epoch"], summary["score"], parts["model"], parts["method"]), own
