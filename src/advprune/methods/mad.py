"""MAD, Masking Adversarial Damage (Lee, Kim & Ro, CVPR 2022), as published: `--method mad`.

For each training batch (official code: compute_saliency.py; docs/fidelity.md has the lines):
1. x̃ = PGD(x) on the trained model in eval mode;
2. soft masks m on every conv/linear weight and bias, effective weight w · softplus(m), start at
   softplus(m) = 1 and take `mask_steps` Adam steps on CE(f(x̃), y), clamping softplus(m) into
   [1e-4, 1] after each;
3. with those masks, K-FAC factors A and G of each layer (`advprune.methods.kfac`), W = [weight |
   bias] as an out × in matrix, Δw = W ⊙ (1 − softplus(M)) the part the mask took away;
4. the saliency s_ij = ½ G_ii Δw_ij (Δw_i A)_j, the (i, j) term of ½ Δwᵀ (G ⊗ A) Δw (signed).
The saliency is averaged over all training batches; the lowest are pruned by the official scheme
("mad": global over the conv layers, the classifier per output row, biases scored), and the network
is fine-tuned with MART (β 0.5) under the fixed mask, SGD lr 0.1, wd 2e-4, ×0.1 at 50 % and 75 %.

Every weight whose mask stayed at 1 scores exactly 0 and the signed cross terms go below it, so
"lowest first" removes the weights the mask optimisation wanted to keep first; on Fashion-MNIST
the one-shot pruned network falls to chance (docs/reproductions.md). That is the published method,
and `mad` reproduces it; advprune's own ranking, ½ G_ii A_jj W̃_ij² at the mask-optimised point, is
the method `mad-obd` (methods/mad_obd.py), reported beside it.

The masked network is evaluated with `torch.func.functional_call`, so the user's module is never
modified: any model whose prunable layers are Linear or Conv2d works, and its parameters, their
`.grad` and every module's train/eval mode are as before the call.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm.auto import tqdm

from advprune.attacks import pgd
from advprune.core import distributed
from advprune.core.config import group, setting
from advprune.core.distributed import all_reduce_sum
from advprune.core.errors import CheckpointError, ConfigError
from advprune.core.tensor_files import load_tensors, save_tensors
from advprune.data import BatchLoader
from advprune.masks import (
    OFFICIAL,
    WeightMasks,
    layer_of,
    prunable_layers,
    prunable_parameters,
    select,
)
from advprune.methods.base import (
    MethodSettings,
    PhaseSettings,
    PruneContext,
    PruneSettings,
    register_method,
)
from advprune.methods.kfac import (
    at_least_float32,
    check_supported,
    input_diagonal_sum,
    input_product_sum,
    kronecker_statistics,
)
from advprune.methods.kinds import ScoredMethod
from advprune.models import input_memory_format

MASK_FLOOR = 1e-4  # softplus(m) is clamped into [MASK_FLOOR, 1]
LOGIT_MIN = math.log(math.expm1(MASK_FLOOR))
LOGIT_MAX = math.log(math.expm1(1.0))  # softplus(LOGIT_MAX) = 1: the mask's starting point
FILE_KIND = "mad-saliency"
SALIENCY_FORMS = ("removal", "paper")

Batches = BatchLoader | Iterable[tuple[Tensor, Tensor]]


def masked_forward(model: nn.Module, mask_logits: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
    """f(x) with each masked parameter w replaced by w · softplus(m), the model left untouched.

    All parameters enter detached, so the only leaves gradients can reach are the masks.
    """
    frozen = {name: parameter.detach() for name, parameter in model.named_parameters()}

    def forward(x: Tensor) -> Tensor:
        masked = {
            name: _strided_like(frozen[name], frozen[name] * F.softplus(m))
            for name, m in mask_logits.items()
        }
        return functional_call(model, {**frozen, **masked}, (x,))

    return forward


def _strided_like(parameter: Tensor, value: Tensor) -> Tensor:
    """`value` with `parameter`'s strides. A product of two channels_last (20, 1, 5, 5) weights
    comes out with NCHW strides (the size-1 dimension's stride is free), and a convolution given
    such a weight computes, and hands on, NCHW activations."""
    if value.stride() == parameter.stride():
        return value
    return torch.empty_like(parameter).copy_(value)


def optimise_masks(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    parameters: dict[str, Tensor],
    *,
    steps: int,
    lr: float,
) -> dict[str, Tensor]:
    """Mask logits m (one per entry of `parameters`) after `steps` Adam steps on CE(f(x), y).

    A fresh Adam state per batch and the clamp of softplus(m) into [1e-4, 1] follow the official
    code; masks can only shrink weights, never grow them. Adam and the clamp act on each entry
    alone, so all masks live in one flat tensor: one softplus, one Adam update and one clamp per
    step instead of one per tensor, with the same numbers.
    """
    frozen = {name: parameter.detach() for name, parameter in model.named_parameters()}
    masked = [frozen[name] for name in parameters]
    weights = torch.cat([_memory_order(tensor) for tensor in masked])
    flat_logits = torch.full(
        weights.shape, LOGIT_MAX, dtype=torch.float32, device=weights.device, requires_grad=True
    )
    optimizer = torch.optim.Adam([flat_logits], lr=lr)
    for _ in range(steps):
        effective = _shaped_like(masked, weights * F.softplus(flat_logits))
        masked_now = dict(zip(parameters, effective, strict=True))
        outputs = functional_call(model, {**frozen, **masked_now}, (x,))
        loss = F.cross_entropy(outputs.float(), y)
        (flat_logits.grad,) = torch.autograd.grad(loss, [flat_logits])
        optimizer.step()
        with torch.no_grad():
            flat_logits.clamp_(LOGIT_MIN, LOGIT_MAX)
    logits = _shaped_like(masked, flat_logits.detach())
    return {name: tensor.clone() for name, tensor in zip(parameters, logits, strict=True)}


def _dense(tensor: Tensor) -> bool:
    """Contiguous or channels_last: its elements fill one block of storage, in some order."""
    return tensor.is_contiguous() or (
        tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last)
    )


def _memory_order(tensor: Tensor) -> Tensor:
    """The elements of `tensor` as a flat tensor in the order they sit in memory."""
    if _dense(tensor):
        return tensor.as_strided((tensor.numel(),), (1,))
    return tensor.reshape(-1)


def _shaped_like(tensors: list[Tensor], flat: Tensor) -> list[Tensor]:
    """Views of consecutive pieces of `flat` with the shape and memory layout of each tensor, so
    a channels_last weight stays channels_last (the inverse of `_memory_order`)."""
    views, offset = [], 0
    for tensor in tensors:
        piece = flat[offset : offset + tensor.numel()]
        dense = _dense(tensor)
        views.append(
            piece.as_strided(tensor.shape, tensor.stride()) if dense else piece.view(tensor.shape)
        )
        offset += tensor.numel()
    return views


def removed_fraction(mask_logits: Tensor) -> Tensor:
    """1 − softplus(m), exactly 0 where the mask stayed at 1 on any device's softplus rounding."""
    return torch.where(mask_logits >= LOGIT_MAX, 0.0, 1 - F.softplus(mask_logits))


def damage_saliency(delta: Tensor, input_covariance: Tensor, gradient_diagonal: Tensor) -> Tensor:
    """S = ½ · diag(G)[:, None] · Δw ⊙ (Δw A) for a layer's out × in matrix Δw (MAD's saliency).

    `input_covariance` is (groups, in, in); output row i uses the A of its group. Entry (i, j) is
    the (i, j) term of ½ Δw_i A Δw_iᵀ · G_ii, so S sums to ½ Δwᵀ (diag(G) ⊗ A) Δw.
    """
    groups, width = input_covariance.shape[0], delta.shape[1]
    product = (delta.reshape(groups, -1, width) @ input_covariance).reshape(delta.shape)
    return damage_from_product(delta, product, gradient_diagonal)


def damage_from_product(delta: Tensor, delta_times_a: Tensor, gradient_diagonal: Tensor) -> Tensor:
    """`damage_saliency` given Δw A itself (`kfac.input_product_sum` forms it without A)."""
    return 0.5 * gradient_diagonal[:, None] * delta * delta_times_a


def removal_saliency(
    remaining: Tensor, input_covariance: Tensor, gradient_diagonal: Tensor
) -> Tensor:
    """S = ½ · diag(G)[:, None] · diag(A)[None] · W̃² for a layer's out × in matrix W̃.

    Entry (i, j) is ½ δᵀ (G ⊗ A) δ for δ removing W̃_ij alone: ½ G_ii A_jj W̃_ij² ≥ 0.
    `input_covariance` is (groups, in, in); output row i uses the A of its group.
    """
    input_diagonal = input_covariance.diagonal(dim1=1, dim2=2)
    return removal_from_diagonal(remaining, input_diagonal, gradient_diagonal)


def removal_from_diagonal(
    remaining: Tensor, input_diagonal: Tensor, gradient_diagonal: Tensor
) -> Tensor:
    """`removal_saliency` given diag(A) alone, (groups, in) (`kfac.input_diagonal_sum`)."""
    groups = input_diagonal.shape[0]
    per_row = input_diagonal.repeat_interleave(remaining.shape[0] // groups, dim=0)
    return 0.5 * gradient_diagonal[:, None] * per_row * remaining.square()


def removed_part(layer_name: str, layer: nn.Module, logits: dict[str, Tensor]) -> dict[str, Tensor]:
    """Δw of the layer's weight and bias: w ⊙ (1 − softplus(m)), zero for a tensor without mask."""
    return _masked_part(layer_name, layer, logits, removed=True)


def remaining_part(
    layer_name: str, layer: nn.Module, logits: dict[str, Tensor]
) -> dict[str, Tensor]:
    """W̃ of the layer's weight and bias: w ⊙ softplus(m), w itself for a tensor without mask."""
    return _masked_part(layer_name, layer, logits, removed=False)


def _masked_part(
    layer_name: str, layer: nn.Module, logits: dict[str, Tensor], *, removed: bool
) -> dict[str, Tensor]:
    prefix = f"{layer_name}." if layer_name else ""
    parts = {}
    for kind in ("weight", "bias"):
        tensor = getattr(layer, kind)
        if tensor is not None:
            tensor = at_least_float32(tensor.detach())
            name = prefix + kind
            fraction = removed_fraction(logits[name]) if name in logits else torch.zeros(())
            parts[name] = tensor * (fraction if removed else 1 - fraction)
    return parts


def as_matrix(tensors: Iterable[Tensor]) -> Tensor:
    """A layer's [weight | bias] as its out × in matrix: weight flattened per row, bias last."""
    return torch.cat([tensor.reshape(tensor.shape[0], -1) for tensor in tensors], dim=1)


def batch_saliency(
    model: nn.Module,
    x_adv: Tensor,
    y: Tensor,
    parameters: dict[str, Tensor],
    *,
    mask_steps: int,
    mask_lr: float,
    form: str = "paper",
) -> dict[str, Tensor]:
    """The saliency of each entry of `parameters` on one adversarial batch (steps 2–4)."""
    logits = optimise_masks(model, x_adv, y, parameters, steps=mask_steps, lr=mask_lr)
    return masked_saliency(model, x_adv, y, parameters, logits, form=form)


def masked_saliency(
    model: nn.Module,
    x_adv: Tensor,
    y: Tensor,
    parameters: dict[str, Tensor],
    logits: dict[str, Tensor],
    *,
    form: str = "paper",
) -> dict[str, Tensor]:
    """Steps 3–4 for optimised mask `logits`: one K-FAC pass of the masked network, the saliency.

    Only what the saliency reads is taken from the pass: diag(G), and Δw A ("paper") or diag(A)
    ("removal"), never A itself; the numbers are those of `damage_saliency` and
    `removal_saliency` on the full factors, up to float rounding.
    """
    layers = {layer_of(name): model.get_submodule(layer_of(name)) for name in parameters}
    part_of = remaining_part if form == "removal" else removed_part
    parts = {name: part_of(name, layer, logits) for name, layer in layers.items()}
    matrices = {name: as_matrix(layer_parts.values()) for name, layer_parts in parts.items()}
    input_statistics = {
        name: input_diagonal_sum if form == "removal" else input_product_sum(matrices[name])
        for name in layers
    }
    statistics = kronecker_statistics(
        layers, masked_forward(model, logits), x_adv, y, input_statistics, full_gradient=False
    )
    score = removal_from_diagonal if form == "removal" else damage_from_product
    saliency = {}
    for layer_name, layer_parts in parts.items():
        matrix = matrices[layer_name]
        if layer_name in statistics:
            entry = statistics[layer_name]
            scores = score(matrix, entry.input_statistic, entry.gradient_diagonal)
        else:  # never reached by the forward pass: removing it cannot change the loss
            scores = torch.zeros_like(matrix)
        widths = [tensor[0].numel() for tensor in layer_parts.values()]
        for (name, tensor), part in zip(
            layer_parts.items(), scores.split(widths, dim=1), strict=True
        ):
            if name in parameters:
                saliency[name] = part.reshape(tensor.shape)
    return saliency


def _batch_iterator(batches: Batches, fraction: float) -> tuple[Iterable, int | None]:
    """The first `fraction` of the batches (rounded up) and how many that is, when known."""
    if not 0 < fraction <= 1:
        raise ConfigError(
            f"saliency_fraction must be in (0, 1], got {fraction}; e.g. 0.25 uses the first "
            "quarter of the training batches"
        )
    source = batches.epoch(0) if isinstance(batches, BatchLoader) else batches
    if not hasattr(batches, "__len__"):
        if fraction < 1:
            raise ConfigError(
                "saliency_fraction < 1 needs batches of known length; pass a BatchLoader or a list"
            )
        return source, None
    count = math.ceil(fraction * len(batches))
    return islice(source, count), count


def _check_pass(model: nn.Module, mask_steps: int, mask_lr: float, form: str) -> None:
    if mask_steps < 1 or mask_lr <= 0:
        raise ConfigError(
            f"mask optimisation needs mask_steps ≥ 1 and mask_lr > 0, got {mask_steps} and "
            f"{mask_lr}; MAD uses 20 steps of lr 0.1"
        )
    if form not in SALIENCY_FORMS:
        raise ConfigError(
            f"unknown saliency form {form!r}; choose one of {', '.join(SALIENCY_FORMS)}"
        )
    check_supported(prunable_layers(model))


def compute_saliency(
    model: nn.Module,
    batches: Batches,
    *,
    eps: float,
    attack_steps: int = 10,
    attack_step_size: float | None = None,
    mask_steps: int = 20,
    mask_lr: float = 0.1,
    saliency_fraction: float = 1.0,
    include_bias: bool = True,
    form: str = "paper",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Tensor]:
    """MAD's adversarial saliency of every conv/linear weight (and bias), averaged over batches.

    `batches` is a `BatchLoader` (its epoch 0 is used) or any iterable of (x in [0, 1], y);
    `saliency_fraction` keeps only its first fraction. x̃ is L∞ PGD with `attack_steps` steps
    of `attack_step_size` (default 2.5·eps/steps) from a random start drawn from `seed`, so the
    result does not depend on the global RNG. `form` is the official "paper" form (module
    docstring) or "removal", `mad-obd`'s. Returns `name → tensor` shaped like each parameter,
    on the model's device, in the model's layer order (the classifier last).

    Under torchrun, pass each rank its shard of the batches: the sums are all-reduced, so every
    rank returns the mean over all ranks' batches.
    """
    _check_pass(model, mask_steps, mask_lr, form)
    parameters = prunable_parameters(model, include_bias=include_bias)
    device = next(iter(parameters.values())).device
    source, count = _batch_iterator(batches, saliency_fraction)
    layout = input_memory_format(model)  # channels_last: 1.6× faster mask steps on a CPU
    generator = torch.Generator(device).manual_seed(seed)
    totals = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in parameters.items()}
    used = 0
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        for x, y in tqdm(source, total=count, desc="MAD saliency", disable=not progress):
            x, y = x.to(device).contiguous(memory_format=layout), y.to(device)
            x_adv = pgd(
                model, x, y, eps, alpha=attack_step_size, steps=attack_steps, generator=generator
            )
            scores = batch_saliency(
                model, x_adv, y, parameters, mask_steps=mask_steps, mask_lr=mask_lr, form=form
            )
            for name, score in scores.items():
                totals[name] += score
            used += 1
    finally:
        for module, training in modes.items():
            module.train(training)
    # Under torchrun each rank scored its own shard: the mean is over every rank's batches.
    used = int(all_reduce_sum(torch.tensor(float(used), device=device)).item())
    if used == 0:
        raise ConfigError("no batches to compute the saliency on; check the dataset and its limit")
    return {name: all_reduce_sum(total) / used for name, total in totals.items()}


def save_saliency(
    path: str | os.PathLike, scores: dict[str, Tensor], metadata: dict[str, Any] | None = None
) -> Path:
    """One safetensors file, so pruning at 90/95/99 % reuses a single saliency pass."""
    header = {**(metadata or {}), "kind": FILE_KIND, "order": list(scores)}
    return save_tensors(path, scores, header)


def load_saliency(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Scores (in the model's layer order, which the "mad" scheme needs) and their metadata."""
    tensors, metadata = load_tensors(path, what="saliency file")
    if metadata.get("kind") != FILE_KIND:
        raise CheckpointError(
            f"{path} is not a MAD saliency file (kind {metadata.get('kind')!r}); pass the file "
            "written by save_saliency"
        )
    return {name: tensors[name] for name in metadata["order"]}, metadata


def mad_masks(
    saliency: dict[str, Tensor],
    sparsity: float,
    *,
    scheme: str = "mad",
    order: str = "lowest",
    seed: int = 0,
    classifier: str | None = None,
) -> WeightMasks:
    """Prune the lowest-saliency `sparsity` fraction as the official code does: `scheme` "mad"
    (global across all layers but `classifier`, default the last, which is pruned per output
    row), int(p·n) entries, ties by position. "global" and "layerwise" are the alternatives;
    `order` "largest" and "random" are the paper's ablations.

    With the "paper" saliency form, expect damage before fine-tuning: entries are signed, the most
    negative go first, then every weight whose mask ended at 1 (saliency exactly 0).
    """
    return select(
        saliency,
        sparsity,
        scheme=scheme,
        order=order,
        seed=seed,
        classifier=classifier,
        rule=OFFICIAL,
    )


@dataclass
class MADSettings(MethodSettings):
    """MAD's own settings; the defaults are the official code's (docs/fidelity.md)."""

    saliency_fraction: float = setting(
        1.0, "share of the training batches the saliency is averaged over (official: all)"
    )
    saliency_batch_size: int = setting(128, "batch size of the saliency pass")
    mask_steps: int = setting(20, "Adam steps of the mask optimisation per batch")
    mask_lr: float = setting(0.1, "Adam learning rate of the masks")
    finetune: PhaseSettings = group(
        PhaseSettings,
        "MAD's fine-tuning (official: MART β 0.5, SGD 0.1, wd 2e-4, ×0.1 at 50/75 %, 60 epochs)",
        objective="mart",
        beta=0.5,
        epochs=60,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=2e-4,
        schedule="step",
        milestones=[0.5, 0.75],
        gamma=0.1,
    )

    def validate(self) -> MADSettings:
        super().validate()
        if not 0 < self.saliency_fraction <= 1 or not math.isfinite(self.saliency_fraction):
            raise ConfigError(f"saliency_fraction must be in (0, 1], got {self.saliency_fraction}")
        if self.mask_steps < 1 or not self.mask_lr > 0 or self.saliency_batch_size < 1:
            raise ConfigError(
                "mask_steps and saliency_batch_size must be ≥ 1 and mask_lr > 0; MAD uses 20 "
                "steps of lr 0.1"
            )
        return self


@register_method("mad", description="MAD (Lee et al., CVPR 2022) as published: signed saliency")
class MAD(ScoredMethod):
    """Example: `advprune prune --method mad --from runs/at --sparsity 0.9 --run-dir runs/mad90`.

    The saliency pass is cached (`--cache-dir`), keyed by the source weights and every setting
    it depends on, so pruning one model at 90, 95 and 99 % costs one pass.
    """

    reference = "Lee, Kim & Ro, CVPR 2022; ByungKwanLee/Masking-Adversarial-Damage"
    origin = "published"
    Settings = MADSettings
    default_scheme = "mad"
    channel_scheme = "global"  # saliency sums estimate the loss damage: comparable across layers
    scores_bias = True
    rule = OFFICIAL  # int(p·n) pruned, ties by position: compute_saliency.py's sort
    form = "paper"
    caches_pass = True

    def resolved(self, prune: PruneSettings) -> dict[str, Any]:
        return {**super().resolved(prune), "saliency_form": self.form}

    def scores(self, context: PruneContext) -> dict[str, Tensor]:
        settings, source = self.settings, context.source
        ddp = distributed.current()
        key_settings = {
            "source": context.source_key,
            "form": self.form,
            "eps": source.eps,
            "attack_steps": source.attack_steps,
            "attack_step_size": source.attack_step_size,
            "include_bias": self.include_bias(context.settings),
            "seed": context.settings.seed,
            "examples": len(context.data.train),
            "world_size": ddp.world_size,
            **{k: v for k, v in settings.to_flat().items() if not k.startswith("finetune_")},
        }
        key = hashlib.sha256(json.dumps(key_settings, sort_keys=True).encode()).hexdigest()[:16]
        cache = context.cache_dir / f"mad-saliency-{key}.safetensors" if context.cache_dir else None
        if distributed.broadcast_from_main(cache is not None and cache.exists()):
            context.log(f"reusing the MAD saliency in {cache}")
            return load_saliency(cache)[0]
        scores = self._compute(context)
        if cache is not None and ddp.is_main:
            save_saliency(cache, scores, key_settings)
        return scores

    def _compute(self, context: PruneContext) -> dict[str, Tensor]:
        ddp = distributed.current()
        # The official pass reads the training set shuffled and augmented, as in training.
        loader = BatchLoader(
            context.data.train,
            context.data.spec,
            self.settings.saliency_batch_size,
            shuffle=True,
            augment=True,
            device=context.device,
            seed=context.settings.seed,
            rank=ddp.rank,
            world_size=ddp.world_size,
        )
        source = context.source
        return compute_saliency(
            context.model,
            loader,
            eps=source.eps,
            attack_steps=source.attack_steps,
            attack_step_size=source.attack_step_size,
            mask_steps=self.settings.mask_steps,
            mask_lr=self.settings.mask_lr,
            saliency_fraction=self.settings.saliency_fraction,
            include_bias=self.include_bias(context.settings),
            form=self.form,
            seed=context.settings.seed,
            progress=context.progress,
        )
