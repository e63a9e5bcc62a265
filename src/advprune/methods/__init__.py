"""Pruning methods, one file each on the base of its kind (`advprune.methods.kinds`), found
through the registry in `advprune.methods.base`.

Importing this package registers the built-in methods; `method_names()` lists every registered
one (plugins included) and `get_method(name)` returns its class.
"""

from advprune.methods import (  # noqa: F401  (they register)
    anpvs,
    flyingbird,
    harp,
    hydra,
    mad,
    mad_obd,
    magnitude,
    radmm,
    random,
    robustbird,
    twinrep,
)
from advprune.methods.base import (
    INITIALIZATION,
    TRAINED,
    MethodSettings,
    PhaseSettings,
    PruneContext,
    PruneSettings,
    PruningMethod,
    create_method,
    get_method,
    method_names,
    phase_overrides,
    register_method,
)
from advprune.methods.kinds import (
    DynamicMaskMethod,
    FixedMaskMethod,
    GateLearningMethod,
    MaskFindingMethod,
    MaskLearningMethod,
    ScoredMethod,
    train_mask_phase,
)
from advprune.methods.mad import compute_saliency, load_saliency, mad_masks, save_saliency
from advprune.methods.magnitude import magnitude_scores

__all__ = [
    "INITIALIZATION",
    "TRAINED",
    "DynamicMaskMethod",
    "FixedMaskMethod",
    "GateLearningMethod",
    "MaskFindingMethod",
    "MaskLearningMethod",
    "MethodSettings",
    "PhaseSettings",
    "PruneContext",
    "PruneSettings",
    "PruningMethod",
    "ScoredMethod",
    "compute_saliency",
    "create_method",
    "get_method",
    "load_saliency",
    "mad_masks",
    "magnitude_scores",
    "method_names",
    "phase_overrides",
    "register_method",
    "save_saliency",
    "train_mask_phase",
]
