"""HYDRA (Sehwag et al., NeurIPS 2020): let the adversarial loss choose the weights to keep.

Each conv/linear weight w gets an importance score s, initialised "scaled" (mad.md, HYDRA in
brief): s = √(6 / fan_in) · w / max|w| per layer, so the first mask is layer-wise magnitude
pruning. With the weights frozen, the forward pass uses w ⊙ m(s), m = 1 on the top-k |s| of each
layer and 0 elsewhere, and the gradient reaches s straight through the top-k (as if m were |s|:
the official code's GetSubnet, after Ramanujan et al., 2020). Only the scores learn, on the run's
adversarial objective. Then |s| becomes fixed `WeightMasks` through the shared layer-wise
`select`, and the surviving weights are fine-tuned under them (`MaskedTraining`). Biases are
never pruned, as in the official code.

The model is never reparametrised: `ScoredNetwork` evaluates it with `functional_call`, so its
state dict (what checkpoints and model files hold) keeps the model's own keys, and the scores are
the method's state, checkpointed by `ScoreTraining`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from advprune.core.distributed import average_gradients
from advprune.core.errors import CheckpointError
from advprune.masks import WeightMasks, check_sparsity, prunable_parameters, select
from advprune.training.method import TrainingMethod

SCHEME = "layerwise"  # HYDRA's k is the same fraction in every layer


def scaled_scores(model: nn.Module) -> dict[str, Tensor]:
    """s = √(6 / fan_in) · w / max|w| for each conv/linear weight (the official scaled init).

    √(6 / fan_in) is the Kaiming-uniform bound the scores would otherwise start from; dividing by
    max|w| keeps their ordering that of |w|, so score training starts from magnitude pruning.
    """
    scores = {}
    for name, weight in prunable_parameters(model, include_bias=False).items():
        weight = weight.detach().float()
        peak = weight.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
        scores[name] = math.sqrt(6 / weight[0].numel()) * weight / peak
    return scores


def pruned_count(size: int, sparsity: float) -> int:
    """How many of `size` entries a layer loses: the count `select` prunes, round(sparsity·n)."""
    return round(sparsity * size)


def top_k_mask(scores: Tensor, pruned: int) -> Tensor:
    """1.0 for every entry of `scores` but the `pruned` of lowest |s|, which get 0.0."""
    lowest = scores.detach().abs().flatten().argsort(stable=True)[:pruned]
    mask = torch.ones(scores.numel(), dtype=scores.dtype, device=scores.device)
    mask[lowest] = 0
    return mask.view_as(scores)


def straight_through(hard_mask: Tensor, scores: Tensor) -> Tensor:
    """`hard_mask` in the forward pass; in the backward pass, the gradient of |s| (GetSubnet)."""
    magnitude = scores.abs()
    return hard_mask + (magnitude - magnitude.detach())


class ScoredNetwork(nn.Module):
    """`network` with each scored weight w used as w ⊙ top-k(|s|): the subnetwork being learnt.

    The network's tensors are untouched; `state_dict` and `load_state_dict` are the network's own,
    so checkpoints and model files keep its keys. The hard masks change only when the scores do
    (`update_masks` after each optimizer step), not on every forward of an attack.
    """

    def __init__(self, network: nn.Module, scores: dict[str, Tensor], sparsity: float) -> None:
        super().__init__()
        self.network = network
        self.scores = scores  # a plain dict: the method's tensors, not the network's
        self.pruned = {name: pruned_count(s.numel(), sparsity) for name, s in scores.items()}
        self.masks: dict[str, Tensor] = {}
        self.update_masks()

    @torch.no_grad()
    def update_masks(self) -> None:
        self.masks = {name: top_k_mask(s, self.pruned[name]) for name, s in self.scores.items()}

    def forward(self, x: Tensor) -> Tensor:
        weights = dict(self.network.named_parameters())
        masked = {
            name: weights[name] * straight_through(self.masks[name], scores)
            for name, scores in self.scores.items()
        }
        return functional_call(self.network, masked, (x,))

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.network.state_dict(*args, **kwargs)

    def load_state_dict(self, state: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.network.load_state_dict(state, strict=strict, assign=assign)


def hydra_masks(scores: dict[str, Tensor], sparsity: float, *, seed: int = 0) -> WeightMasks:
    """The fixed masks fine-tuning keeps: the `sparsity` fraction of lowest |s| of each layer."""
    magnitudes = {name: s.detach().abs() for name, s in scores.items()}
    return select(magnitudes, sparsity, scheme=SCHEME, seed=seed)


class ScoreTraining(TrainingMethod):
    """HYDRA's pruning phase: the trainer's optimizer and schedule update the scores only.

    The model's parameters are frozen (`requires_grad` off, never in the optimizer); BN running
    statistics, if any, follow the masked network as in the official code. At the end the final
    masks are saved as `masks.safetensors` and applied to the weights, so the phase's
    model.safetensors is the pruned network before fine-tuning.
    """

    name = "hydra-scores"

    def __init__(self, sparsity: float, *, seed: int = 0) -> None:
        check_sparsity(sparsity)
        self.sparsity = sparsity
        self.seed = seed
        self.scores: dict[str, nn.Parameter] = {}
        self.network: ScoredNetwork | None = None

    def prepare(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        self.scores = {name: nn.Parameter(s) for name, s in scaled_scores(model).items()}
        self.network = ScoredNetwork(model, self.scores, self.sparsity)
        return self.network

    def weight_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return list(self.scores.values())

    def before_update(self, model: nn.Module) -> None:
        """The scores are the method's tensors, not DDP's: average their gradients over ranks."""
        average_gradients(list(self.scores.values()))

    def after_update(self, model: nn.Module) -> None:
        self.network.update_masks()

    def state_dict(self) -> dict[str, Tensor]:
        return {name: s.detach() for name, s in self.scores.items()}

    def load_state_dict(self, state: dict[str, Tensor], model: nn.Module) -> None:
        """Copy the saved scores into the ones the optimizer holds (their identity must stay)."""
        shapes = {name: tuple(s.shape) for name, s in self.scores.items()}
        saved = {name: tuple(t.shape) for name, t in state.items()}
        if saved != shapes:
            raise CheckpointError(
                "the checkpoint's HYDRA scores do not fit this model; it was written for another "
                "architecture — start the pruning run again in a new --run-dir"
            )
        with torch.no_grad():
            for name, score in self.scores.items():
                score.copy_(state[name])
        self.network.update_masks()

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "sparsity": self.sparsity, "scheme": SCHEME, "seed": self.seed}

    def finish(self, model: nn.Module, run_path: Path) -> None:
        masks = hydra_masks(self.scores, self.sparsity, seed=self.seed)
        masks.save(Path(run_path) / "masks.safetensors", self.metadata())
        masks.apply(self.network.network)
