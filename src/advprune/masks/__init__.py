"""Unstructured weight masks: the one sparsity mechanism every unstructured method shares.

A method produces scores (`name → tensor`); `select` turns them into `WeightMasks`, which the
trainer applies to the weights and their gradients.
"""

from advprune.masks.layers import PRUNABLE, layer_of, prunable_layers, prunable_parameters
from advprune.masks.selection import (
    ORDERS,
    SCHEMES,
    check_sparsity,
    order_scores,
    random_scores,
    select,
    select_global,
    select_layerwise,
    select_per_row,
)
from advprune.masks.weight_masks import WeightMasks

__all__ = [
    "ORDERS",
    "PRUNABLE",
    "SCHEMES",
    "WeightMasks",
    "check_sparsity",
    "layer_of",
    "order_scores",
    "prunable_layers",
    "prunable_parameters",
    "random_scores",
    "select",
    "select_global",
    "select_layerwise",
    "select_per_row",
]
