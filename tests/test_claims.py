"""The demo's claim checks: yes, no, and "within noise" where the subsets cannot tell rows apart."""

import torch

from advprune.evaluation.statistics import pack_bits
from advprune.reproduction.claims import same_order, speedup, units_removed, verdicts, within


def run(n: int = 1000, **accuracy: float) -> dict:
    return {"accuracy": accuracy, "examples": dict.fromkeys(accuracy, n)}


def test_within_says_yes_no_or_within_noise():
    claim = within("pruned", "dense", "pgd", 1.0)
    assert claim.line({"pruned": run(pgd=0.575), "dense": run(pgd=0.580)}).endswith("— yes")
    assert claim.line({"pruned": run(pgd=0.40), "dense": run(pgd=0.58)}).endswith("— no")
    small = {"pruned": run(32, pgd=0.50), "dense": run(32, pgd=0.60)}
    assert claim.line(small).endswith("— within noise")  # 10 pp on 32 images
    assert "on 32 and 32 images, unpaired" in claim.line(small)  # no per-example bits to pair


def test_units_speedup_and_a_missing_figure():
    pruned = {"unit_sparsity": 0.8, "measured_speedup": {"batch_128": {"median": 1.4, "min": 1}}}
    lines = verdicts([units_removed("p", 0.7), speedup("p", 128, 1.5)], {"p": pruned})
    assert lines[0].endswith("80.0 % — yes") and lines[1].endswith("— no")
    assert "not measured" in speedup("p", 1, 1.5).line({"p": pruned})
    edge = {"measured_speedup": {"batch_128": {"median": 1.4962, "min": 1.35}}}
    assert "×1.496 (paired" in speedup("p", 128, 1.5).line({"p": edge})  # not "×1.50 … no"


def test_same_order_agrees_or_flips_within_or_beyond_noise():
    claim = same_order(["a", "b"], ["pgd", "autoattack"])
    agree = {"a": run(pgd=0.5, autoattack=0.4), "b": run(pgd=0.3, autoattack=0.2)}
    assert claim.line(agree).endswith("— yes")
    noisy = {"a": run(32, pgd=0.5, autoattack=0.40), "b": run(32, pgd=0.45, autoattack=0.44)}
    assert claim.line(noisy).endswith("— within noise")
    flipped = {"a": run(pgd=0.6, autoattack=0.2), "b": run(pgd=0.3, autoattack=0.5)}
    assert claim.line(flipped).endswith("— no")


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
