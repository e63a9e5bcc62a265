import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advprune.core.errors import CheckpointError, ConfigError
from advprune.core.tensor_files import save_tensors
from advprune.masks import (
    WeightMasks,
    prunable_layers,
    prunable_parameters,
    select,
    select_global,
    select_layerwise,
    select_per_row,
)
from advprune.methods import magnitude_scores


def magnitude_masks(model, sparsity, *, scheme="global", include_bias=False):
    """Magnitude pruning's masks: |w| through the shared selection."""
    return select(magnitude_scores(model, include_bias=include_bias), sparsity, scheme=scheme)


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 10),
    )


def random_scores_for(model: nn.Module, include_bias: bool = True) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    parameters = prunable_parameters(model, include_bias=include_bias)
    return {name: torch.randn(p.shape, generator=generator) for name, p in parameters.items()}


def pruned_count(masks: WeightMasks) -> int:
    return sum(int((~mask).sum()) for mask in masks.values())


def test_prunable_layers_and_parameters_in_registration_order():
    model = small_cnn()
    assert list(prunable_layers(model)) == ["0", "2", "6"]
    assert list(prunable_parameters(model, include_bias=True)) == [
        "0.weight",
        "0.bias",
        "2.weight",
        "6.weight",
        "6.bias",
    ]
    assert list(prunable_parameters(model, include_bias=False)) == [
        "0.weight",
        "2.weight",
        "6.weight",
    ]


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_global_selection_prunes_exactly_the_lowest_fraction(sparsity):
    scores = random_scores_for(small_cnn())
    masks = select_global(scores, sparsity)
    total = sum(s.numel() for s in scores.values())
    assert pruned_count(masks) == round(sparsity * total)
    assert masks.sparsity() == pytest.approx(round(sparsity * total) / total)
    pruned = torch.cat([scores[n][~m] for n, m in masks.items()])
    kept = torch.cat([scores[n][m] for n, m in masks.items()])
    if len(pruned) and len(kept):
        assert pruned.max() <= kept.min()


def test_layerwise_selection_prunes_the_fraction_of_each_layer():
    scores = random_scores_for(small_cnn())
    masks = select_layerwise(scores, 0.6)
    for layer, names in {
        "0": ["0.weight", "0.bias"],
        "2": ["2.weight"],
        "6": ["6.weight", "6.bias"],
    }.items():
        size = sum(scores[n].numel() for n in names)
        pruned = sum(int((~masks[n]).sum()) for n in names)
        assert abs(pruned - 0.6 * size) <= 0.5, layer
        assert masks.per_layer()[layer] == pytest.approx(pruned / size)


def test_per_row_selection_prunes_the_same_count_in_every_row_bias_included():
    scores = random_scores_for(small_cnn())
    rows = {"6.weight": scores["6.weight"], "6.bias": scores["6.bias"]}
    masks = select_per_row(rows, 0.7)
    matrix = torch.cat([masks["6.weight"], masks["6.bias"][:, None]], dim=1)
    width = matrix.shape[1]
    assert ((~matrix).sum(1) == round(0.7 * width)).all()
    score_matrix = torch.cat([rows["6.weight"], rows["6.bias"][:, None]], dim=1)
    for row in range(matrix.shape[0]):
        assert score_matrix[row][~matrix[row]].max() <= score_matrix[row][matrix[row]].min()


def test_mad_scheme_is_global_except_the_classifier_rows():
    scores = random_scores_for(small_cnn())
    masks = select(scores, 0.8, scheme="mad")
    assert list(masks) == list(scores)
    classifier = torch.cat([masks["6.weight"], masks["6.bias"][:, None]], dim=1)
    assert ((~classifier).sum(1) == round(0.8 * classifier.shape[1])).all()
    rest = {n: s for n, s in scores.items() if not n.startswith("6.")}
    expected = select_global(rest, 0.8)
    assert all(torch.equal(masks[n], expected[n]) for n in rest)


def test_ties_are_broken_reproducibly_and_not_by_position():
    scores = {"w": torch.zeros(8, 50)}
    first = select_global(scores, 0.5, seed=3)
    assert torch.equal(first["w"], select_global(scores, 0.5, seed=3)["w"])
    assert pruned_count(first) == 200
    # by position, the first four rows would go entirely
    assert (~first["w"]).sum(1).max() < 50
    assert not torch.equal(first["w"], select_global(scores, 0.5, seed=4)["w"])


def test_orders_largest_and_random():
    scores = random_scores_for(small_cnn())
    largest = select(scores, 0.3, order="largest")
    flat_pruned = torch.cat([scores[n][~m] for n, m in largest.items()])
    flat_kept = torch.cat([scores[n][m] for n, m in largest.items()])
    assert flat_pruned.min() >= flat_kept.max()
    random_a = select(scores, 0.3, order="random", seed=5)
    random_b = select(scores, 0.3, order="random", seed=5)
    random_c = select(scores, 0.3, order="random", seed=6)
    assert all(torch.equal(random_a[n], random_b[n]) for n in scores)
    assert not all(torch.equal(random_a[n], random_c[n]) for n in scores)
    assert random_a.sparsity() == pytest.approx(select(scores, 0.3).sparsity())


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_impossible_sparsity_is_a_config_error(sparsity):
    scores = random_scores_for(small_cnn())
    for selection in (select_global, select_layerwise, select_per_row, select):
        with pytest.raises(ConfigError, match=r"sparsity must be a fraction in \[0, 1\)"):
            selection(scores, sparsity)


def test_unknown_scheme_or_order_is_a_config_error():
    scores = random_scores_for(small_cnn())
    with pytest.raises(ConfigError, match="scheme"):
        select(scores, 0.5, scheme="blockwise")
    with pytest.raises(ConfigError, match="order"):
        select(scores, 0.5, order="smallest")
    with pytest.raises(ConfigError, match="classifier"):
        select(scores, 0.5, scheme="mad", classifier="nope")


def test_magnitude_pruning_removes_the_smallest_weights():
    model = small_cnn()
    masks = magnitude_masks(model, 0.75)
    assert set(masks) == {"0.weight", "2.weight", "6.weight"}
    magnitudes = magnitude_scores(model)
    pruned = torch.cat([magnitudes[n][~m] for n, m in masks.items()])
    kept = torch.cat([magnitudes[n][m] for n, m in masks.items()])
    assert pruned.max() <= kept.min()
    layerwise = magnitude_masks(model, 0.75, scheme="layerwise", include_bias=True)
    assert all(abs(v - 0.75) < 0.02 for v in layerwise.per_layer().values())


def test_masked_weights_stay_exactly_zero_through_momentum_and_weight_decay():
    model = small_cnn()
    masks = magnitude_masks(model, 0.8, include_bias=True)
    masks.apply(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.rand(8, 1, 8, 8, generator=generator)
        y = torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        masks.mask_gradients(model)
        for name, mask in masks.items():
            assert (model.get_parameter(name).grad[~mask] == 0).all()
        optimizer.step()
        masks.apply(model)
    for name, mask in masks.items():
        parameter = model.get_parameter(name)
        assert (parameter[~mask] == 0).all()
        assert not torch.equal(parameter[mask], before[name][mask])


def test_fold_returns_the_plain_model_with_zeros():
    model = small_cnn()
    masks = magnitude_masks(model, 0.5)
    folded = masks.fold(model)
    assert folded is model
    assert all(
        type(m) in (nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.Flatten, nn.Linear, nn.Sequential)
        for m in folded.modules()
    )
    assert all((model.get_parameter(n)[~m] == 0).all() for n, m in masks.items())


def test_save_load_and_state_dict_round_trip(tmp_path):
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(11)])
    masks = magnitude_masks(model, 0.5, scheme="mad", include_bias=True)
    path = masks.save(tmp_path / "masks.safetensors", {"sparsity": 0.5})
    loaded, metadata = WeightMasks.load(path)
    assert metadata["sparsity"] == 0.5
    assert list(loaded) == list(masks)  # "10.weight" stays after "9.weight"
    assert all(loaded[n].dtype == torch.bool and torch.equal(loaded[n], masks[n]) for n in masks)
    state = masks.state_dict()
    assert all(torch.equal(WeightMasks.from_state_dict(state)[n], masks[n]) for n in masks)


def test_masks_that_do_not_fit_the_model_or_file_are_clear_errors(tmp_path):
    masks = magnitude_masks(small_cnn(), 0.5)
    other = nn.Sequential(nn.Conv2d(1, 4, 5))
    with pytest.raises(CheckpointError, match="another architecture"):
        masks.apply(other)
    not_masks = tmp_path / "other.safetensors"
    save_tensors(not_masks, {"x": torch.zeros(1)}, {"kind": "checkpoint"})
    with pytest.raises(CheckpointError, match="not a mask file"):
        WeightMasks.load(not_masks)


def test_the_official_rule_prunes_floor_counts_and_breaks_ties_by_position():
    from advprune.masks import OFFICIAL, pruned_count

    assert pruned_count(15, 0.9) == 14 and pruned_count(15, 0.9, OFFICIAL) == 13  # 13.5
    scores = {"a": torch.zeros(4, 5), "b": torch.zeros(10)}
    masks = select_global(scores, 0.5, rule=OFFICIAL)
    flat = torch.cat([masks["a"].flatten(), masks["b"]])
    assert (~flat[:15]).all() and flat[15:].all()  # the lowest flat indices go first
    rows = select_per_row({"w": torch.zeros(3, 10)}, 0.35, rule=OFFICIAL)["w"]
    assert (~rows[:, :3]).all() and rows[:, 3:].all()  # int(3.5) = 3 per row, leading columns


def sorted_keep(matrix, count, shuffle=None):
    """What each row keeps when a stable sort (of the shuffled columns) prunes its `count` lowest,
    NaN last: the selection's definition."""
    columns = torch.arange(matrix.shape[1]) if shuffle is None else shuffle
    order = columns[torch.sort(matrix[:, columns], dim=1, stable=True).indices]
    return torch.ones_like(matrix, dtype=torch.bool).scatter_(1, order[:, :count], False)


@pytest.mark.parametrize("levels", [2, 50, 10_000])  # mostly ties at the threshold, some, none
def test_selection_prunes_what_a_stable_sort_prunes(levels):
    from advprune.masks import OFFICIAL, SEEDED

    generator = torch.Generator().manual_seed(levels)
    matrix = torch.randint(levels, (6, 40), generator=generator).float()
    matrix[0, 3] = float("nan")
    for sparsity in (0.0, 0.1, 0.5, 0.9, 0.99):
        rows = select_per_row({"w": matrix}, sparsity, rule=OFFICIAL)["w"]
        assert torch.equal(rows, sorted_keep(matrix, OFFICIAL.count(40, sparsity)))
        flat = matrix.flatten()[None]
        seeded = select_global({"w": flat[0]}, sparsity, seed=5, rule=SEEDED)["w"]
        shuffle = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(5))
        expected = sorted_keep(flat, SEEDED.count(flat.shape[1], sparsity), shuffle)[0]
        assert torch.equal(seeded, expected), sparsity
