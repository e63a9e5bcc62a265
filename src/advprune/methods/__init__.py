"""Pruning methods, one per file; each turns a trained model into scores and `WeightMasks`."""

from advprune.methods.mad import compute_saliency, load_saliency, mad_masks, save_saliency
from advprune.methods.magnitude import magnitude_masks, magnitude_scores

__all__ = [
    "compute_saliency",
    "load_saliency",
    "mad_masks",
    "magnitude_masks",
    "magnitude_scores",
    "save_saliency",
]
