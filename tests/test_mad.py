import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advprune.attacks import pgd
from advprune.core.errors import CheckpointError, ConfigError
from advprune.masks import layer_of, prunable_parameters
from advprune.methods import compute_saliency, load_saliency, mad_masks, save_saliency
from advprune.methods.kfac import (
    input_covariance_sum,
    input_diagonal_sum,
    input_product_sum,
    kfac_factors,
)
from advprune.methods.mad import (
    as_matrix,
    batch_saliency,
    damage_saliency,
    masked_forward,
    optimise_masks,
    remaining_part,
    removal_saliency,
    removed_part,
)


def random_psd(size: int, generator: torch.Generator, groups: int = 1) -> torch.Tensor:
    root = torch.randn(groups, size, 2 * size, generator=generator, dtype=torch.float64)
    return root @ root.mT / size


def official_per_row_saliency(delta, input_covariance, gradient_covariance):
    """The official code's loop: an (in × in) block per output row, keep its diagonal."""
    groups = input_covariance.shape[0]
    rows_per_group = delta.shape[0] // groups
    saliency = torch.empty_like(delta)
    for i in range(delta.shape[0]):
        a = input_covariance[i // rows_per_group]
        block = (0.5 * gradient_covariance[i, i] * delta[i].view(-1, 1)) @ (
            delta[i].view(1, -1) @ a
        )
        saliency[i] = block.diag()
    return saliency


@pytest.mark.parametrize("groups", [1, 3])
def test_matrix_form_equals_the_per_row_loop(groups):
    generator = torch.Generator().manual_seed(0)
    delta = torch.randn(12, 17, generator=generator, dtype=torch.float64)
    input_covariance = random_psd(17, generator, groups)
    gradient_covariance = random_psd(12, generator)[0]
    ours = damage_saliency(delta, input_covariance, gradient_covariance.diagonal())
    reference = official_per_row_saliency(delta, input_covariance, gradient_covariance)
    torch.testing.assert_close(ours, reference)


def test_kronecker_factors_of_one_example_give_the_exact_quadratic_form():
    torch.manual_seed(0)
    layer = nn.Linear(5, 3).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    y = torch.tensor([2])
    factors = kfac_factors({"layer": layer}, layer, x, y)["layer"]
    output = layer(x)
    (gradient,) = torch.autograd.grad(F.cross_entropy(output, y), output)
    a = torch.cat([x[0], torch.ones(1, dtype=x.dtype)])
    delta = torch.randn(3, 6, dtype=torch.float64)

    input_covariance, gradient_covariance = factors.input_covariance[0], factors.gradient_covariance
    torch.testing.assert_close(input_covariance, torch.outer(a, a))
    torch.testing.assert_close(gradient_covariance, torch.outer(gradient[0], gradient[0]))
    quadratic = 0.5 * delta.flatten() @ torch.kron(gradient_covariance, input_covariance)
    quadratic = quadratic @ delta.flatten()
    torch.testing.assert_close(quadratic, 0.5 * (gradient[0] @ delta @ a) ** 2)

    diagonal = torch.diag(gradient_covariance.diagonal())
    diagonal_form = 0.5 * delta.flatten() @ torch.kron(diagonal, input_covariance) @ delta.flatten()
    saliency = damage_saliency(delta, factors.input_covariance, gradient_covariance.diagonal())
    torch.testing.assert_close(saliency.sum(), diagonal_form)


@pytest.mark.parametrize("groups", [1, 3])
def test_removal_saliency_is_the_kronecker_diagonal_times_the_squared_weight(groups):
    generator = torch.Generator().manual_seed(0)
    remaining = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    input_covariance = random_psd(5, generator, groups)
    gradient_covariance = random_psd(6, generator)[0]
    ours = removal_saliency(remaining, input_covariance, gradient_covariance.diagonal())
    for i in range(6):
        hessian = torch.kron(gradient_covariance, input_covariance[i // (6 // groups)])
        for j in range(5):
            step = torch.zeros(6, 5, dtype=torch.float64)
            step[i, j] = -remaining[i, j]  # remove weight (i, j) alone
            damage = 0.5 * step.flatten() @ hessian @ step.flatten()
            # Row i's block of G ⊗ A is G_ii · A of its group: the damage needs only the diagonal.
            torch.testing.assert_close(ours[i, j], damage)


def naive_conv_factors(conv, head, x, y):
    """A and G by looping over every output position, patches cut from a padded input by hand."""
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw), (ph, pw) = conv.stride, conv.dilation, conv.padding
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = F.pad(x, (pw, pw, ph, ph), mode=mode)
    output = conv(x)
    loss = F.cross_entropy(head(output.clone()), y, reduction="sum")  # head's ReLU is in place
    (gradient,) = torch.autograd.grad(loss, output)
    channels = conv.in_channels // conv.groups
    groups_a = torch.zeros(conv.groups, channels * kh * kw + 1, channels * kh * kw + 1).double()
    gradient_covariance = torch.zeros(conv.out_channels, conv.out_channels).double()
    rows = 0
    for n in range(x.shape[0]):
        for i in range(output.shape[2]):
            for j in range(output.shape[3]):
                rows += 1
                window = padded[n, :, i * sh : i * sh + dh * (kh - 1) + 1 : dh]
                window = window[:, :, j * sw : j * sw + dw * (kw - 1) + 1 : dw]
                for group in range(conv.groups):
                    patch = window[group * channels : (group + 1) * channels].flatten()
                    patch = torch.cat([patch, torch.ones(1).double()])
                    groups_a[group] += torch.outer(patch, patch)
                g = gradient[n, :, i, j]
                gradient_covariance += torch.outer(g, g)
    return groups_a / rows, gradient_covariance / x.shape[0]


@pytest.mark.parametrize(
    "conv",
    [
        dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding=1),
        dict(
            in_channels=4,
            out_channels=6,
            kernel_size=(3, 2),
            padding=2,
            dilation=2,
            groups=2,
            padding_mode="reflect",
        ),
    ],
)
def test_conv_factors_from_unfold_match_a_loop_over_positions(conv):
    torch.manual_seed(0)
    layer = nn.Conv2d(**conv).double()
    x = torch.randn(2, conv["in_channels"], 7, 7, dtype=torch.float64)
    y = torch.tensor([0, 3])
    width = layer(x[:1]).numel()
    head = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(width, 5)).double()
    factors = kfac_factors({"conv": layer}, lambda t: head(layer(t)), x, y)["conv"]
    input_covariance, gradient_covariance = naive_conv_factors(layer, head, x, y)
    torch.testing.assert_close(factors.input_covariance, input_covariance)
    torch.testing.assert_close(factors.gradient_covariance, gradient_covariance)


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(2, 3, kernel_size=3, stride=2, padding=1),
        nn.Conv2d(4, 6, (3, 2), padding=2, dilation=2, groups=2, padding_mode="reflect"),
        nn.Conv2d(3, 4, 3, padding="same", bias=False),
        nn.Linear(5, 4),
    ],
    ids=["strided", "grouped-reflect", "same-no-bias", "linear"],
)
def test_input_product_and_diagonal_equal_those_of_the_covariance(layer):
    """M A and diag(A), computed without A, are M times and the diagonal of the covariance."""
    torch.manual_seed(0)
    layer = layer.double()
    shape = (2, 3, 5) if isinstance(layer, nn.Linear) else (2, layer.in_channels, 7, 7)
    x = torch.randn(*shape, dtype=torch.float64)
    output = layer(x)
    covariance = input_covariance_sum(layer, x, output)
    groups, width = covariance.shape[0], covariance.shape[1]
    matrix = torch.randn(output.shape[1 if x.dim() == 4 else -1], width, dtype=torch.float64)
    expected = (matrix.reshape(groups, -1, width) @ covariance).reshape(matrix.shape)
    torch.testing.assert_close(input_product_sum(matrix)(layer, x, output), expected)
    diagonal = input_diagonal_sum(layer, x, output)
    torch.testing.assert_close(diagonal, covariance.diagonal(dim1=1, dim2=2))


@pytest.mark.parametrize("form", ["removal", "paper"])
def test_batch_saliency_equals_the_formula_on_the_full_factors(form):
    torch.manual_seed(0)
    model = Residual().double().eval()
    x, y = synthetic_batches(1)[0]
    x = x.double()
    parameters = prunable_parameters(model, include_bias=True)
    ours = batch_saliency(model, x, y, parameters, mask_steps=3, mask_lr=0.1, form=form)
    logits = optimise_masks(model, x, y, parameters, steps=3, lr=0.1)
    layers = {layer_of(name): model.get_submodule(layer_of(name)) for name in parameters}
    factors = kfac_factors(layers, masked_forward(model, logits), x, y)
    part_of, score = (
        (remaining_part, removal_saliency) if form == "removal" else (removed_part, damage_saliency)
    )
    for layer_name, layer in layers.items():
        parts = part_of(layer_name, layer, logits)
        layer_factors = factors[layer_name]
        expected = score(
            as_matrix(parts.values()),
            layer_factors.input_covariance,
            layer_factors.gradient_covariance.diagonal(),
        )
        widths = [tensor[0].numel() for tensor in parts.values()]
        for (name, tensor), part in zip(parts.items(), expected.split(widths, 1), strict=True):
            torch.testing.assert_close(ours[name], part.reshape(tensor.shape))


def test_channels_last_weights_keep_their_layout_in_the_mask_optimisation():
    torch.manual_seed(0)
    model = Residual().eval()
    x, y = synthetic_batches(1)[0]
    parameters = prunable_parameters(model, include_bias=True)
    reference = optimise_masks(model, x, y, parameters, steps=3, lr=0.1)
    model = model.to(memory_format=torch.channels_last)
    parameters = prunable_parameters(model, include_bias=True)
    logits = optimise_masks(model, x, y, parameters, steps=3, lr=0.1)
    for name, tensor in logits.items():
        assert tensor.stride() == parameters[name].stride()
        torch.testing.assert_close(tensor, reference[name], atol=1e-5, rtol=0)


def test_a_channels_last_model_gets_channels_last_batches_and_the_same_saliency():
    torch.manual_seed(0)
    model = Residual().eval()
    reference = quick_saliency(model, synthetic_batches(2))
    model = model.to(memory_format=torch.channels_last)
    layouts = []
    model.branch.register_forward_pre_hook(
        lambda _, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    saliency = quick_saliency(model, synthetic_batches(2))
    assert layouts and all(layouts)  # the PGD, every mask step and the K-FAC pass
    for name, score in saliency.items():
        torch.testing.assert_close(score, reference[name], atol=1e-6, rtol=1e-3)


class Residual(nn.Module):
    """Not a Sequential: functional ops, an in-place ReLU after a conv, BN, a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.branch = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        h = self.relu(self.norm(self.stem(x)))
        h = h + self.relu(self.branch(h))
        return self.head(F.adaptive_avg_pool2d(h, 4).flatten(1))


def synthetic_batches(count: int, size: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        (
            torch.rand(size, 1, 8, 8, generator=generator),
            torch.randint(0, 10, (size,), generator=generator),
        )
        for _ in range(count)
    ]


def quick_saliency(model, batches, **options):
    settings = dict(eps=0.1, attack_steps=2, mask_steps=3, progress=False)
    return compute_saliency(model, batches, **{**settings, **options})


@pytest.mark.parametrize("form", ["removal", "paper"])
def test_saliency_leaves_parameters_gradients_buffers_and_modes_unchanged(form):
    torch.manual_seed(0)
    model = Residual().train()
    model.norm.eval()
    x, y = synthetic_batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    state = copy.deepcopy(model.state_dict())
    gradients = {n: p.grad.clone() for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}

    saliency = quick_saliency(model, synthetic_batches(2), form=form)

    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(gradients[n], p.grad) for n, p in model.named_parameters())
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert list(saliency) == [
        "stem.weight",
        "stem.bias",
        "branch.weight",
        "head.weight",
        "head.bias",
    ]
    for name, score in saliency.items():
        assert score.shape == model.get_parameter(name).shape
        assert torch.isfinite(score).all()
        assert not score.requires_grad  # no graph kept alive across batches


def test_each_output_row_carries_a_nonnegative_damage():
    # Paper form: row i sums to ½ G_ii Δw_i A Δw_iᵀ ≥ 0 (A is a covariance); entries may be < 0.
    saliency = quick_saliency(Residual().eval(), synthetic_batches(2), mask_steps=5, form="paper")
    for layer in ("stem", "head"):
        rows = torch.cat(
            [saliency[f"{layer}.weight"].flatten(1), saliency[f"{layer}.bias"][:, None]], dim=1
        )
        assert (rows.sum(1) >= -1e-12).all()
        assert rows.abs().sum() > 0


def test_saliency_fraction_uses_the_first_batches_and_bias_is_optional():
    torch.manual_seed(0)
    model = Residual().eval()
    batches = synthetic_batches(4)
    half = quick_saliency(model, batches, saliency_fraction=0.5)
    first_two = quick_saliency(model, batches[:2])
    assert all(torch.equal(half[n], first_two[n]) for n in half)
    weights_only = quick_saliency(model, batches[:1], include_bias=False)
    assert list(weights_only) == ["stem.weight", "branch.weight", "head.weight"]


def test_bad_options_are_config_errors():
    model = Residual().eval()
    with pytest.raises(ConfigError, match="saliency_fraction"):
        quick_saliency(model, synthetic_batches(1), saliency_fraction=0)
    with pytest.raises(ConfigError, match="known length"):
        quick_saliency(model, iter(synthetic_batches(2)), saliency_fraction=0.5)
    with pytest.raises(ConfigError, match="mask_steps"):
        quick_saliency(model, synthetic_batches(1), mask_steps=0)
    with pytest.raises(ConfigError, match="Conv1d"):
        quick_saliency(nn.Sequential(nn.Conv1d(1, 2, 3)), synthetic_batches(1))


def test_saliency_file_round_trip_keeps_layer_order(tmp_path):
    model = nn.Sequential(*[nn.Linear(3, 3) for _ in range(11)])
    scores = {n: torch.rand(p.shape) for n, p in model.named_parameters()}
    path = save_saliency(tmp_path / "saliency.safetensors", scores, {"eps": 0.1})
    loaded, metadata = load_saliency(path)
    assert list(loaded) == list(scores)
    assert metadata["eps"] == 0.1
    assert all(torch.equal(loaded[n], scores[n]) for n in scores)
    masks = mad_masks(loaded, 0.5)
    classifier = torch.cat([masks["10.weight"], masks["10.bias"][:, None]], dim=1)
    assert ((~classifier).sum(1) == 2).all()
    with pytest.raises(CheckpointError, match="not a MAD saliency file"):
        load_saliency(masks.save(tmp_path / "masks.safetensors"))


@pytest.fixture(scope="module")
def one_thread():
    # Module fixtures run outside conftest's per-test thread limit; two threads on a shared
    # 2-core machine made the training below 20× slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fashion_cnn(one_thread):
    """A small CNN adversarially trained (PGD-3, eps 0.1) on 1024 Fashion-MNIST images."""
    from advprune.data import BatchLoader, load_dataset

    torch.manual_seed(2)
    data = load_dataset("fashion-mnist", "train", limit=1536)
    train = BatchLoader(data.take(1024), None, 64, shuffle=True, augment=False, seed=0)
    model = nn.Sequential(
        nn.AvgPool2d(2),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 3 * 3, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for epoch in range(10):
        for x, y in train.epoch(epoch):
            x_adv = pgd(model.eval(), x, y, 0.1, steps=3)
            optimizer.zero_grad()
            F.cross_entropy(model.train()(x_adv), y).backward()
            optimizer.step()
    held_out = (data.images[1024:].float() / 255, data.labels[1024:])
    return (
        model.eval(),
        BatchLoader(data.take(1024), None, 128, shuffle=False, augment=False),
        held_out,
    )


def adversarial_loss(model, x, y):
    x_adv = pgd(model, x, y, 0.1, steps=5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return F.cross_entropy(model(x_adv), y).item()


@pytest.fixture(scope="module")
def fashion_saliency(one_thread, fashion_cnn):
    model, train, _ = fashion_cnn
    return compute_saliency(model, train, eps=0.1, attack_steps=3, progress=False)


def test_one_saliency_pass_serves_every_sparsity(fashion_cnn, fashion_saliency, tmp_path):
    model, _, (x, _) = fashion_cnn
    path = save_saliency(tmp_path / "saliency.safetensors", fashion_saliency, {"eps": 0.1})
    saliency, _ = load_saliency(path)
    for sparsity in (0.9, 0.95, 0.99):
        masks = mad_masks(saliency, sparsity)
        pruned = masks.fold(copy.deepcopy(model))
        total = sum(mask.numel() for mask in masks.values())
        assert abs(masks.sparsity() * total - sparsity * total) <= len(masks["10.weight"]) + 1
        assert all((pruned.get_parameter(n)[~m] == 0).all() for n, m in masks.items())
        assert torch.isfinite(pruned(x)).all()


def test_mad_obd_pruning_raises_the_adversarial_loss_less_than_random_or_largest_first(
    one_thread, fashion_cnn
):
    """mad-obd's ranking carries signal: on this model the published signed ranking does not
    (it removes the weights whose mask stayed at 1 early; docs/reproductions.md)."""
    model, train, (x, y) = fashion_cnn
    saliency = compute_saliency(model, train, eps=0.1, attack_steps=3, form="removal")

    def loss_after(order: str) -> float:
        pruned = mad_masks(saliency, 0.5, order=order, seed=0).fold(copy.deepcopy(model))
        return adversarial_loss(pruned, x, y)

    mad = loss_after("lowest")
    assert mad < loss_after("random")
    assert mad < loss_after("largest")
