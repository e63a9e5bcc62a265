"""Structured pruning: whole channels, one shared mechanism for every scored method.

The unit is a **channel group**: Torch-Pruning's DependencyGraph couples every slice that must go
when one channel goes — the producing layer's filter (weight row and bias), the batch norm after
it, the input columns of every layer that reads it (several columns per channel after a flatten),
and, in a residual network, every conv whose output is added to it (the stem and each block's
second conv and shortcut of a stage share one group). Every conv and every linear layer but the
one that produces the output roots a group; the network's input channels are not pruned.

A method gives a score per channel of each group (`channel_scores` in methods/base.py: by default
its weight scores summed over the channel's slices); `select_channels` keeps the highest; the
channel keep-masks become `WeightMasks` over every slice of every group (`channel_weight_masks`),
so fine-tuning under `MaskedTraining` holds the whole channel at zero — its filter, its batch
norm's γ and β (the channel then outputs exactly 0 after BN) and the columns that read it — and
`advprune export` removes it physically (masks/export.py). The same expansion is differentiable
(`parameter_masks`), which is how HYDRA's and HARP's straight-through channel scores act.

Channel sparsity is the fraction of the prunable groups' channels removed, each group counted
once (the adversarial-pruning benchmark's definition of structured sparsity). A group that a
grouped (e.g. depthwise) conv makes or reads cannot be pruned: such a conv ties its channel k to
its input channel k, so one channel cannot go alone. Those groups keep every channel, are named
once in the run's log (`unprunable_groups`) and count in neither side of the fraction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch_pruning
from torch import Tensor, nn

from advprune.core.errors import ConfigError
from advprune.masks.gated import dependency_graph
from advprune.masks.selection import (
    SEEDED,
    SelectionRule,
    check_sparsity,
    order_scores,
    pruned_count,
    select_global,
)
from advprune.masks.weight_masks import WeightMasks
from advprune.models.features import trace_layer_chains
from advprune.models.layer_types import CONVS, NORMS, PRUNABLE

STRUCTURES = ("weights", "channels")
CHANNEL_SCHEMES = ("global", "layerwise")
PRODUCER, NORM, CONSUMER = "producer", "norm", "consumer"


@dataclass(frozen=True)
class ChannelSlice:
    """Where a group's channels sit in one parameter: positions `index` along `dim`, position i
    belonging to the group's channel `channel[i]` (a flatten maps one channel to many columns)."""

    parameter: str
    dim: int
    index: Tensor
    channel: Tensor
    role: str  # PRODUCER (filter rows and biases), NORM (γ, β) or CONSUMER (input columns)
    shape: tuple[int, ...]  # the parameter's


@dataclass
class ChannelGroup:
    """The channels one pruning decision covers: `size` channels, rooted at layer `name`."""

    name: str
    size: int
    slices: list[ChannelSlice] = field(default_factory=list)

    def layers(self, role: str) -> list[str]:
        """The layers (conv/linear/BN names) holding slices of `role`, in group order."""
        names = [s.parameter.rpartition(".")[0] for s in self.slices if s.role == role]
        return list(dict.fromkeys(names))


def output_layer(model: nn.Module, example: Tensor) -> str:
    """The layer that produces the network's output: its output units are never pruned."""
    chains = trace_layer_chains(model, example)
    name = next((name for name, chain in chains.items() if chain.is_output), None)
    if name is None:
        raise ConfigError(
            "cannot find the conv/linear layer that produces the model's output; structured "
            "pruning needs one"
        )
    return name


def unprunable_reason(group: torch_pruning.Group, names: Mapping[nn.Module, str]) -> str | None:
    """Why the group cannot be pruned — a grouped (e.g. depthwise) conv makes or reads its
    channels (module docstring) — or None."""
    for item in group:
        module = item.dep.target.module
        if isinstance(module, CONVS) and module.groups != 1:
            size = len(group[0].idxs)
            return f"{size} channels: the grouped conv {names[module]} ties each to its input"
    return None


def _slices(
    graph: torch_pruning.DependencyGraph, group: torch_pruning.Group, names: dict
) -> list[ChannelSlice]:
    """The parameter slices of a Torch-Pruning group without grouped convs."""
    slices = []
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        index = torch.as_tensor(item.idxs, dtype=torch.long)
        channel = torch.as_tensor(item.root_idxs, dtype=torch.long)
        if isinstance(module, NORMS):
            kinds = [("weight", 0, NORM), ("bias", 0, NORM)] if module.affine else []
        elif isinstance(module, PRUNABLE) and graph.is_out_channel_pruning_fn(handler):
            kinds = [("weight", 0, PRODUCER), ("bias", 0, PRODUCER)]
        elif isinstance(module, PRUNABLE) and graph.is_in_channel_pruning_fn(handler):
            kinds = [("weight", 1, CONSUMER)]
        else:
            continue  # reshapes, element-wise operations: no parameters
        for kind, dim, role in kinds:
            tensor = getattr(module, kind, None)
            if tensor is not None:
                prefix = f"{names[module]}." if names[module] else ""
                slices.append(
                    ChannelSlice(prefix + kind, dim, index, channel, role, tuple(tensor.shape))
                )
    return slices


def _graph_groups(
    model: nn.Module, example: Tensor
) -> tuple[torch_pruning.DependencyGraph, list[torch_pruning.Group], dict[nn.Module, str]]:
    """Torch-Pruning's graph of `model`, its groups (the output layer's units left out) and the
    modules' names."""
    output = model.get_submodule(output_layer(model, example))
    graph = dependency_graph(model, example)
    names = {module: name for name, module in model.named_modules()}
    groups = graph.get_all_groups(ignored_layers=[output], root_module_types=PRUNABLE)
    return graph, list(groups), names


def channel_groups(model: nn.Module, example: Tensor) -> list[ChannelGroup]:
    """Every prunable channel group of `model` (traced on `example`, one input batch), in graph
    order; a group made or read by a grouped conv is left out (`unprunable_groups`)."""
    graph, found, names = _graph_groups(model, example)
    groups = []
    for group in found:
        if unprunable_reason(group, names) is not None:
            continue
        slices = _slices(graph, group, names)
        if any(s.role == PRODUCER for s in slices):
            root = names[group[0].dep.target.module]
            groups.append(ChannelGroup(root, len(group[0].idxs), slices))
    if not groups:
        raise ConfigError("the model has no conv or hidden linear layer whose channels can go")
    return groups


def unprunable_groups(model: nn.Module, example: Tensor) -> dict[str, str]:
    """Root layer → why its channel group keeps every channel, for the groups `channel_groups`
    leaves out: "8 channels: the grouped conv dw ties each to its input"."""
    _, found, names = _graph_groups(model, example)
    reasons = {}
    for group in found:
        why = unprunable_reason(group, names)
        if why is not None:
            reasons[names[group[0].dep.target.module]] = why
    return reasons


def removed_channels(groups: list[ChannelGroup], masks: Mapping[str, Tensor]) -> tuple[int, int]:
    """(channels removed, channels in all) over `groups` under weight keep-masks: a channel is
    removed when every weight producing it is masked. The channel sparsity of any method's
    channel masks (selected, learnt by HYDRA or HARP), as export measures it."""
    removed = total = 0
    for group in groups:
        kept = torch.zeros(group.size)
        for part in group.slices:
            if part.role == PRODUCER and part.parameter in masks:
                mask = masks[part.parameter].detach().float().cpu()
                kept.index_add_(0, part.channel, _summed(mask, part.dim, part.index))
        removed += int((kept == 0).sum())
        total += group.size
    return removed, total


def describe_channel_pruning(
    method: str, removed: int, total: int, unprunable: Mapping[str, str]
) -> str:
    """The one sparsity figure a channel run prints (channel sparsity, docs/methods.md), and
    the groups that keep every channel, with why."""
    line = (
        f"{method}: pruned {removed / total:.2%} of the prunable channels ({removed} of {total}; "
        "channel sparsity)"
    )
    if unprunable:
        kept = "; ".join(f"{root} ({why})" for root, why in unprunable.items())
        line += f"; not prunable, every channel kept: {kept}"
    return line


def _summed(values: Tensor, dim: int, index: Tensor) -> Tensor:
    """`values` summed over every dimension but `dim`, at positions `index` along it."""
    other = [d for d in range(values.dim()) if d != dim]
    per_position = values.sum(dim=other) if other else values
    return per_position[index.to(values.device)]


def group_sums(
    scores: Mapping[str, Tensor], groups: list[ChannelGroup], roles: tuple[str, ...] | None = None
) -> dict[str, Tensor]:
    """Per group, each channel's total of the entry `scores` (by parameter name) over its slices
    of `roles` (default all): e.g. MAD's saliency of everything a channel's removal removes."""
    totals = {}
    for group in groups:
        device = next(iter(scores.values())).device
        total = torch.zeros(group.size, dtype=torch.float32, device=device)
        for part in group.slices:
            if part.parameter in scores and (roles is None or part.role in roles):
                values = _summed(scores[part.parameter].detach().float(), part.dim, part.index)
                total.index_add_(0, part.channel.to(device), values)
        totals[group.name] = total
    return totals


def filter_norms(model: nn.Module, groups: list[ChannelGroup], p: int = 1) -> dict[str, Tensor]:
    """‖filter‖_p of each channel: the L_p norm of every weight that produces it (its rows in
    each coupled conv/linear; Li et al., 2017, rank filters by L1); biases and BN not counted."""
    parameters = dict(model.named_parameters())
    weights = {
        part.parameter: parameters[part.parameter]
        for group in groups
        for part in group.slices
        if part.role == PRODUCER and part.parameter.endswith("weight")
    }
    return producer_norms(weights, groups, p)


def producer_norms(
    tensors: Mapping[str, Tensor], groups: list[ChannelGroup], p: int = 2
) -> dict[str, Tensor]:
    """The L_p norm of each channel's producing rows in `tensors` (weights by parameter name, or
    tensors shaped like them: ADMM's W + U, TwinRep's reparameterised weights)."""
    powers = {name: t.detach().float().abs().pow(p) for name, t in tensors.items()}
    sums = group_sums(powers, groups, roles=(PRODUCER,))
    return {name: total.pow(1 / p) for name, total in sums.items()}


def parameter_masks(
    groups: list[ChannelGroup],
    masks: Mapping[str, Tensor],
    roles: tuple[str, ...] = (PRODUCER, NORM, CONSUMER),
) -> dict[str, Tensor]:
    """Per-parameter multipliers from per-channel `masks` (group name → [size]): every slice of
    `roles` of a channel gets the channel's value, a parameter cut by several groups (a conv's
    rows by one, its columns by another) their product; each broadcasts against its parameter.
    Differentiable in `masks`: straight-through channel scores pass their gradient through here
    (HARP's masks only the readers' columns: `roles=(CONSUMER,)`)."""
    result: dict[str, Tensor] = {}
    for group in groups:
        values = masks[group.name]
        for part in group.slices:
            if part.role not in roles:
                continue
            length = part.shape[part.dim]
            factor = torch.ones(length, dtype=values.dtype, device=values.device)
            index, channel = part.index.to(values.device), part.channel.to(values.device)
            shape = [1] * len(part.shape)
            shape[part.dim] = length
            factor = factor.index_put((index,), values[channel]).view(shape)
            previous = result.get(part.parameter)
            result[part.parameter] = factor if previous is None else previous * factor
    return result


def channel_weight_masks(
    model: nn.Module, groups: list[ChannelGroup], keep: Mapping[str, Tensor]
) -> WeightMasks:
    """`WeightMasks` over every slice of every group from per-channel keep-masks (True = kept),
    in the model's parameter order."""
    floats = {name: mask.float() for name, mask in keep.items()}
    factors = parameter_masks(groups, floats)
    return WeightMasks(
        {
            name: factors[name].expand(parameter.shape).cpu()
            for name, parameter in model.named_parameters()
            if name in factors
        }
    )


def _keep_one(keep: Tensor, scores: Tensor) -> Tensor:
    """A group never loses every channel (the network would be cut in two): keep its best one."""
    if not keep.any():
        keep = keep.clone()
        keep[scores.argmax()] = True
    return keep


def select_channels(
    scores: Mapping[str, Tensor],
    sparsity: float,
    *,
    scheme: str = "layerwise",
    order: str = "lowest",
    seed: int = 0,
    rule: SelectionRule = SEEDED,
) -> dict[str, Tensor]:
    """Keep-masks (group name → bool [size]) removing the `sparsity` fraction of lowest-scoring
    channels: within each group ("layerwise", `rule`'s count of each: round(sparsity · size) by
    default) or over all groups together ("global"); ties as `rule` says (seeded by default); a
    group keeps at least one channel."""
    check_sparsity(sparsity)
    if scheme not in CHANNEL_SCHEMES:
        raise ConfigError(
            f"--scheme {scheme} ranks weights; channels are ranked by one of "
            f"{', '.join(CHANNEL_SCHEMES)}"
        )
    ranked = order_scores({name: s.detach().float() for name, s in scores.items()}, order, seed)
    if scheme == "global":
        keep = dict(select_global(ranked, sparsity, seed=seed, rule=rule))
    else:
        keep = {
            n: select_global({n: s}, sparsity, seed=seed, rule=rule)[n] for n, s in ranked.items()
        }
    return {name: _keep_one(keep[name], ranked[name]) for name in ranked}


def top_channels(scores: Tensor, kept: int) -> Tensor:
    """1.0 for the `kept` channels of highest score, 0.0 elsewhere (at least one kept)."""
    kept = min(scores.numel(), max(1, kept))
    mask = torch.zeros_like(scores)
    mask[scores.detach().argsort(descending=True, stable=True)[:kept]] = 1
    return mask


def kept_channels(size: int, sparsity: float) -> int:
    """How many of a group's `size` channels a fixed sparsity keeps (at least one)."""
    return max(1, size - pruned_count(size, sparsity))
