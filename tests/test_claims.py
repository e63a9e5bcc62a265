"""The demo's claim checks: yes, no, and "within noise" where the subsets cannot tell rows apart."""

import torch

from advprune.evaluation.statistics import pack_bits
from advprune.reproduction.claims import (
    above_chance,
    at_least,
    fewer_flops,
    less_memory,
    speedup,
    units_removed,
    verdicts,
    within,
)


def run(n: int = 1000, **accuracy: float) -> dict:
    return {"accuracy": accuracy, "examples": dict.fromkeys(accuracy, n)}


def test_within_says_yes_no_or_within_noise():
    claim = within("pruned", "dense", "pgd", 1.0)
    assert claim.line({"pruned": run(pgd=0.575), "dense": run(pgd=0.580)}).endswith("— yes")
    assert claim.line({"pruned": run(pgd=0.40), "dense": run(pgd=0.58)}).endswith("— no")
    small = {"pruned": run(32, pgd=0.50), "dense": run(32, pgd=0.60)}
    assert claim.line(small).endswith("— within noise")  # 10 pp on 32 images
    assert "on 32 and 32 images, unpaired" in claim.line(small)  # no per-example bits to pair


def test_units_and_a_missing_figure():
    pruned = {"unit_sparsity": 0.8}
    lines = verdicts([units_removed("p", 0.7, paper=0.8416)], {"p": pruned})
    assert lines[0].endswith("(paper: 84.16 %): 80.0 % — yes")
    assert units_removed("p", 0.9, paper=0.8416).line({"p": pruned}).endswith("— no")
    assert "not measured" in units_removed("p", 0.7, paper=0.8).line({"q": pruned})


def test_flops_and_memory_are_judged_against_twice_the_papers_share():
    exported = {"flops_speedup": 6.0, "memory_fraction": 0.12}
    assert fewer_flops("p", paper=10.57).line({"p": exported}).endswith("×6.00 fewer — yes")
    assert fewer_flops("p", paper=12.1).line({"p": exported}).endswith("— no")
    assert less_memory("p", paper=0.0681).line({"p": exported}).endswith("12.00 % of dense — yes")
    assert less_memory("p", paper=0.05).line({"p": exported}).endswith("— no")


def test_a_measured_speedup_is_shown_without_a_verdict():
    spread = {"batch_1": {"median": 1.21, "min": 1.1}, "batch_128": {"median": 1.73, "min": 1.66}}
    line = speedup("p", [1, 128]).line({"p": {"measured_speedup": {**spread, "device": "cpu"}}})
    assert line.endswith("batch 1 ×1.21 (min 1.10), batch 128 ×1.73 (min 1.66); paired, on cpu")
    assert "— yes" not in line and "— no" not in line


def test_at_least_says_yes_no_or_within_noise():
    claim = at_least("harp", "hydra", "pgd")
    assert claim.line({"harp": run(pgd=0.55), "hydra": run(pgd=0.50)}).endswith("— yes")
    assert claim.line({"harp": run(pgd=0.40), "hydra": run(pgd=0.50)}).endswith("— no")
    noisy = {"harp": run(32, pgd=0.45), "hydra": run(32, pgd=0.50)}
    assert claim.line(noisy).endswith("— within noise")


def test_above_chance_needs_the_whole_interval_above_it():
    claim = above_chance("hydra", "pgd")
    assert claim.line({"hydra": run(500, pgd=0.30)}).endswith("— yes")
    assert claim.line({"hydra": run(500, pgd=0.11)}).endswith("— no")  # 10 % is inside
    assert claim.line({"hydra": run(32, pgd=5 / 32)}).endswith("— no")  # 16 %, too few images


def scored(correct: torch.Tensor) -> dict:
    """A row with its per-example bits under PGD, as an evaluation writes it."""
    n = len(correct)
    return {
        "accuracy": {"pgd": correct.float().mean().item()},
        "examples": {"pgd": n},
        "per_example": {"correct": {"pgd": pack_bits(correct)}},
    }


def test_rows_on_the_same_images_are_compared_example_by_example():
    dense = torch.arange(1000) < 580  # 58.0 % on the first 1,000 test images
    pruned = dense.clone()
    pruned[:30] = False  # 3 pp lower, failing on 30 images the dense model gets right
    claim = within("pruned", "dense", "pgd", 1.0)
    line = claim.line({"pruned": scored(pruned), "dense": scored(dense)})
    # Side by side their Wilson intervals overlap (±3 pp each); paired, the 3 pp are certain.
    assert "55.00 against 58.00 on 1,000 images (-3.00 pp" in line and line.endswith("— no")
    pruned[:30], pruned[580:600] = True, True  # +2 pp: 20 wins, no losses
    pruned[:32] = False  # and 32 losses: -1.2 pp over 52 disagreements, within noise
    assert claim.line({"pruned": scored(pruned), "dense": scored(dense)}).endswith("within noise")


def test_a_shorter_subset_is_compared_on_the_images_it_shares():
    dense = torch.arange(1000) % 2 == 0  # 50 % on 1,000, 50 % on the first 500 as well
    pruned = dense[:500].clone()
    line = within("pruned", "dense", "pgd", 1.0).line(
        {"pruned": scored(pruned), "dense": scored(dense)}
    )
    assert "50.00 against 50.00 on 500 images (+0.00 pp" in line and line.endswith("— yes")
