"""The sparsity mechanisms methods share: unstructured weight masks and structured unit gates.

An unstructured method produces scores (`name → tensor`); `select` turns them into
`WeightMasks`, which the trainer applies to the weights and their gradients. A structured one
scores the channels of Torch-Pruning dependency groups (`masks.channels`: `channel_groups`,
`select_channels`, `channel_weight_masks`), whose masks cover every slice of a channel. ANP-VS
puts beta-Bernoulli gates on channels and units (`insert_gates`); `export_gated` removes the
pruned units of either kind physically. `MaskedNetwork` runs a network with masks that a method
learns straight-through (HYDRA's scores, HARP's rates).
"""

from advprune.masks.export import export_gated
from advprune.masks.gated import find_gates, fold_gates, insert_gates, remove_gates
from advprune.masks.gates import BetaBernoulliGate
from advprune.masks.layers import PRUNABLE, layer_of, prunable_layers, prunable_parameters
from advprune.masks.masked_network import MaskedNetwork
from advprune.masks.selection import (
    OFFICIAL,
    ORDERS,
    SCHEMES,
    SEEDED,
    SelectionRule,
    check_sparsity,
    lowest_entries,
    order_scores,
    pruned_count,
    random_scores,
    select,
    select_global,
    select_layerwise,
    select_per_row,
)
from advprune.masks.weight_masks import WeightMasks

__all__ = [
    "OFFICIAL",
    "ORDERS",
    "PRUNABLE",
    "SCHEMES",
    "SEEDED",
    "BetaBernoulliGate",
    "MaskedNetwork",
    "SelectionRule",
    "WeightMasks",
    "check_sparsity",
    "export_gated",
    "find_gates",
    "fold_gates",
    "insert_gates",
    "layer_of",
    "lowest_entries",
    "order_scores",
    "prunable_layers",
    "prunable_parameters",
    "pruned_count",
    "random_scores",
    "remove_gates",
    "select",
    "select_global",
    "select_layerwise",
    "select_per_row",
]
