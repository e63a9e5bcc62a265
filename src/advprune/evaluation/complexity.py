"""Size and cost of a model: parameters, FLOPs, memory and weight sparsity."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch_pruning
from torch import nn

from advprune.masks.export import export_gated
from advprune.masks.gated import find_gates, gate_summary, remove_gates
from advprune.models.layer_types import PRUNABLE


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero entries over all conv and linear weight tensors."""
    weights = [m.weight for m in model.modules() if isinstance(m, PRUNABLE)]
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    return zeros / total if total else 0.0


def model_complexity(model: nn.Module, input_shape: Sequence[int]) -> dict[str, float | int]:
    """Parameters, MACs and FLOPs (= 2·MACs) of one forward pass on one input, and memory in bytes.

    MACs are counted by torch-pruning's `count_ops_and_params` on a dense forward pass, so zeroed
    weights still count: only physically removed channels make a network cheaper.
    """
    device = next(model.parameters()).device
    example = torch.zeros(1, *input_shape, device=device)
    macs, params = torch_pruning.utils.count_ops_and_params(model, example)
    tensors = [*model.parameters(), *model.buffers()]
    return {
        "params": int(params),
        "nonzero_params": int(sum(int((p != 0).sum()) for p in model.parameters())),
        "macs": int(macs),
        "flops": int(2 * macs),
        "memory_bytes": int(sum(t.numel() * t.element_size() for t in tensors)),
        "sparsity": weight_sparsity(model),
    }


def gated_complexity(
    model: nn.Module, input_shape: Sequence[int], exported: nn.Module | None = None
) -> dict:
    """What a gated model's pruning amounts to: units removed, weights removed, size and cost.

    `unit_sparsity` is the fraction of gated units removed (the paper's "sparsity"), `sparsity`
    the fraction of conv/linear weights that are zero or removed in the exported network.
    `complexity` holds the dense network (gates taken out), the gated one and the exported one;
    `memory_fraction` and `flops_speedup` compare exported to dense, as Table 1 of the paper does.
    """
    device = next(model.parameters()).device
    if exported is None:
        exported = export_gated(model, torch.zeros(1, *input_shape, device=device))
    dense = remove_gates(copy.deepcopy(model.eval()))
    sizes = {
        "dense": model_complexity(dense, input_shape),
        "gated": model_complexity(model, input_shape),
        "exported": model_complexity(exported, input_shape),
    }
    dense_weights = sum(m.weight.numel() for m in dense.modules() if isinstance(m, PRUNABLE))
    kept_weights = sum(
        int((m.weight != 0).sum()) for m in exported.modules() if isinstance(m, PRUNABLE)
    )
    return {
        **gate_summary(find_gates(model)),
        "sparsity": 1 - kept_weights / dense_weights,
        "complexity": sizes,
        "memory_fraction": sizes["exported"]["memory_bytes"] / sizes["dense"]["memory_bytes"],
        "flops_speedup": sizes["dense"]["flops"] / sizes["exported"]["flops"],
    }
