"""Size and cost of a model: parameters, FLOPs, memory and weight sparsity."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning
from torch import nn

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


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
