"""`mad-obd`: advprune's own ranking on MAD's saliency pass — not the published MAD.

Same pass as MAD (PGD examples, optimised soft masks, K-FAC factors of each layer), but each
weight is scored by the damage of removing it alone at the mask-optimised point W̃ = W ⊙
softplus(M): s_ij = ½ G_ii A_jj W̃_ij², the diagonal of ½ δᵀ (G ⊗ A) δ for δ = −W̃_ij e_ij, as
Optimal Brain Damage does with a diagonal Hessian. Its defaults prune by one global ranking with
biases unscored and fine-tune as the source run trained, so that it and magnitude pruning differ
only in the score. On
Fashion-MNIST the ablation "diagonal at w, no mask" does as well (docs/reproductions.md), so the
mask optimisation is not what makes it work.
"""

from __future__ import annotations

from dataclasses import dataclass

from advprune.core.config import group, setting
from advprune.masks import SEEDED
from advprune.methods.base import PhaseSettings, register_method
from advprune.methods.mad import MAD, MADSettings


@dataclass
class MadOBDSettings(MADSettings):
    """MAD's pass settings on the first quarter of the training batches: its ranking agrees with
    the whole set's at Spearman 0.974 (LeNet-5-Caffe, the demo's 47 Fashion-MNIST batches) for
    0.86–0.89× a PGD-AT epoch (benchmarks/mad_saliency.py, docs/benchmarks.md; 35 % until the
    first-layer input gradient made the epoch's PGD cheaper); fine-tuning as the source run
    trained, as magnitude pruning does, so that the two differ only in the score."""

    saliency_fraction: float = setting(
        0.25, "share of the training batches the saliency is averaged over (MAD's: all)"
    )
    finetune: PhaseSettings = group(
        PhaseSettings, "fine-tuning (default: the source run's)", epochs=10
    )


@register_method(
    "mad-obd", description="advprune's own: MAD's pass, ranked by ½·G_ii·A_jj·W̃² (OBD-style)"
)
class MadOBD(MAD):
    """Example: `advprune prune --method mad-obd --from runs/at --sparsity 0.99 --run-dir r`."""

    reference = None  # ours, not a paper's: no departures to record
    origin = "advprune's own"
    Settings = MadOBDSettings
    default_scheme = "global"
    scores_bias = False
    rule = SEEDED
    form = "removal"
