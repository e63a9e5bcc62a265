"""Physical removal of pruned units: a gated network becomes a smaller plain network.

After `fold_gates`, a pruned channel or unit is one whose every reader has zero input weights
for it. `remove_unread_units` removes such units with Torch-Pruning's DependencyGraph, which also
removes them from every layer they are coupled to (batch norms, residual additions, the columns
of a linear layer after a flatten), until no unread unit is left. A flattened position is removed
with its channel only: where the gates pruned some positions of a kept channel, those columns stay
as zeros (a plain network has no layer that drops single positions).

With `round_to` r > 1 a layer keeps its width a multiple of r where it can: it keeps some unread
units as padding (their incoming weights zeroed, so they compute 0 and pin nothing upstream).
The outputs are unchanged; CPU and GPU kernels are vectorised over 8 or 16 channels, and on the
AVX2 development CPU LeNet-5-Caffe's first layer is 2× faster with 16 channels than with 14
(docs/benchmarks.md). Which r is fastest depends on the device and the widths, so `advprune export`
measures it (pipelines/export.py); without a measurement r is 8. Torch-Pruning's `round_to` serves
the same purpose.

`export_gated` checks that the result computes what the gated model computes. A plain network
whose pruned channels are zeroed in every slice (a structured scored run, masks/channels.py)
exports the same way: folding it is a copy, and its pruned channels are already unread.
`channel_sparsity` measures, on either, the benchmark's structured sparsity.
"""

from __future__ import annotations

import math

import torch
import torch_pruning
from torch import Tensor, nn

from advprune.core.errors import CheckpointError
from advprune.masks.channels import output_layer, unprunable_reason
from advprune.masks.gated import dependency_graph, fold_gates
from advprune.models.features import trace_layer_chains
from advprune.models.layer_types import CONVS, NORMS, PRUNABLE

ROUND_TO = 8  # the width multiple when none is measured (SIMD lanes, tensor cores)
EXPORT_TOLERANCE = 1e-4  # max |exported − gated| on random inputs, relative to the logits' scale


def _unread_units(
    graph: torch_pruning.DependencyGraph, group: torch_pruning.Group, round_to: int
) -> tuple[list[int], list[int]]:
    """Root indices of `group` that every conv/linear reader ignores (all-zero input weights):
    (those to remove, those kept as padding so that the width stays a multiple of `round_to`)."""
    size = len(group[0].idxs)
    read = torch.zeros(size, dtype=torch.bool)
    has_reader = False
    for item in group:
        layer = item.dep.target.module
        if not graph.is_in_channel_pruning_fn(item.dep.handler) or not isinstance(layer, PRUNABLE):
            continue
        if isinstance(layer, CONVS) and layer.groups != 1:
            return [], []
        has_reader = True
        weight = layer.weight.detach()
        columns = weight.transpose(0, 1).reshape(weight.shape[1], -1)[item.idxs]
        used = columns.ne(0).any(dim=1).cpu()
        read[torch.as_tensor(item.root_idxs)[used]] = True
    if not has_reader:
        return [], []
    unread = (~read).nonzero().flatten().tolist()
    needed = max(1, size - len(unread))  # no zero-width layers
    kept = min(size, math.ceil(needed / round_to) * round_to)
    return unread[: size - kept], unread[size - kept :]


def _silence(
    graph: torch_pruning.DependencyGraph, group: torch_pruning.Group, units: list[int]
) -> bool:
    """Zero the incoming weights and bias of the group's `units` (root indices) in the layers that
    produce them; True if any was non-zero. Unread units compute nothing anyone uses, and zeroed
    they no longer read, so the units upstream that only they read can go."""
    changed = False
    for item in group:
        layer = item.dep.target.module
        if not graph.is_out_channel_pruning_fn(item.dep.handler) or not isinstance(layer, PRUNABLE):
            continue
        rows = [idx for idx, root in zip(item.idxs, item.root_idxs, strict=True) if root in units]
        for tensor in (layer.weight, layer.bias):
            if tensor is not None and tensor[rows].ne(0).any():
                tensor[rows] = 0
                changed = True
    return changed


@torch.no_grad()
def remove_unread_units(
    model: nn.Module, example: Tensor, output_layer: str, round_to: int = 1
) -> int:
    """Remove, in place, every unit no layer reads (keeping widths a multiple of `round_to`
    where they can be); returns how many were removed."""
    if round_to < 1:
        raise ValueError(f"round_to must be ≥ 1, got {round_to}")
    ignored = [model.get_submodule(output_layer)]
    removed = 0
    while True:
        graph = dependency_graph(model, example)
        for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
            unread, padding = _unread_units(graph, group, round_to)
            if padding and _silence(graph, group, padding):
                break  # upstream units may now be unread: look again
            if unread:
                root = group[0].dep
                graph.get_pruning_group(root.target.module, root.handler, unread).prune()
                removed += len(unread)
                break
        else:
            return removed


@torch.no_grad()
def channel_sparsity(model: nn.Module, example: Tensor) -> dict:
    """The fraction of channels removed (`channel_sparsity`) over the prunable channel groups of
    a folded or masked network — every conv and hidden linear layer, coupled layers once, groups
    of grouped convs left out (masks/channels.py) — and the groups' widths before and after:
    {"channel_sparsity", "channels": {"total", "kept", "per_group": {root layer: [kept, total]},
    "unprunable": {root layer: why}}}. A channel is removed when no layer reads
    it; the padding `--round-to` keeps is still removed."""
    ignored = [model.get_submodule(output_layer(model, example))]
    graph = dependency_graph(model, example)
    names = {module: name for name, module in model.named_modules()}
    per_group, unprunable = {}, {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
        size, root = len(group[0].idxs), names[group[0].dep.target.module]
        why = unprunable_reason(group, names)
        if why is not None:
            unprunable[root] = why
            continue
        unread, _ = _unread_units(graph, group, 1)
        per_group[root] = [size - len(unread), size]
    total = sum(size for _, size in per_group.values())
    kept = sum(kept for kept, _ in per_group.values())
    channels = {"total": total, "kept": kept, "per_group": per_group, "unprunable": unprunable}
    return {"channel_sparsity": 1 - kept / total if total else 0.0, "channels": channels}


def max_output_difference(first: nn.Module, second: nn.Module, example: Tensor) -> float:
    """max |first(x) − second(x)| over random inputs shaped like `example` in [0, 1]."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((8, *example.shape[1:]), generator=generator).to(example.device)
    with torch.no_grad():
        return (first.eval()(x) - second.eval()(x)).abs().max().item()


def export_gated(model: nn.Module, example: Tensor, round_to: int = ROUND_TO) -> nn.Module:
    """The plain, smaller network that computes what the gated `model` computes in eval mode,
    its widths multiples of `round_to` where the pruned widths allow."""
    chains = trace_layer_chains(model, example)
    output = next((name for name, chain in chains.items() if chain.is_output), None)
    if output is None:
        raise CheckpointError(
            "cannot find the layer that produces the model's output; export needs one"
        )
    exported = fold_gates(model, example)
    remove_unread_units(exported, example, output, round_to)
    difference = max_output_difference(model, exported, example)
    with torch.no_grad():
        scale = max(1.0, model.eval()(example).abs().max().item())
    if difference > EXPORT_TOLERANCE * scale:
        raise CheckpointError(
            f"the exported network's outputs differ from the gated network's by {difference:.2e}; "
            "the model has an operation the exporter does not follow — export is only exact for "
            "networks of conv/linear/batch-norm layers joined by elementwise operations"
        )
    return exported


def layer_shapes(model: nn.Module) -> dict[str, list[int]]:
    """Weight shape of every conv/linear layer and width of every batch norm, by name."""
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE):
            shapes[name] = list(module.weight.shape)
        elif isinstance(module, NORMS):
            shapes[name] = [module.num_features]
    return shapes
