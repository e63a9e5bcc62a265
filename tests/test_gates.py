"""Beta-Bernoulli gates: the distribution's formulas, insertion into any network, export."""

import copy

import pytest
import torch
from torch import nn

from advprune.masks.export import export_gated, layer_shapes
from advprune.masks.gated import find_gates, fold_gates, insert_gates, remove_gates
from advprune.masks.gates import BetaBernoulliGate, kumaraswamy_beta_kl, kumaraswamy_mean
from advprune.methods.anpvs import ANPVSSettings, ANPVSTraining
from advprune.models import create_model
from advprune.models.serialization import load_model, save_model
from advprune.training import TrainConfig
from advprune.training.method import StepContext


def kumaraswamy_samples(a: float, b: float, count: int, seed: int = 0) -> torch.Tensor:
    u = torch.rand(count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (1 - u.pow(1 / b)).pow(1 / a)


@pytest.mark.parametrize(("a", "b", "prior"), [(0.5, 0.8, 0.3), (1.5, 2.5, 0.7), (3.0, 1.0, 1.2)])
def test_kl_closed_form_matches_a_monte_carlo_estimate(a, b, prior):
    pi = kumaraswamy_samples(a, b, 400_000)
    log_q = torch.log(torch.tensor(a * b)) + (a - 1) * pi.log() + (b - 1) * torch.log1p(-(pi**a))
    log_p = torch.log(torch.tensor(prior)) + (prior - 1) * pi.log()
    samples = log_q - log_p
    estimate = samples.mean().item()
    standard_error = (samples.std() / len(samples) ** 0.5).item()
    closed = kumaraswamy_beta_kl(
        torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), prior
    ).item()
    assert abs(closed - estimate) < 5 * standard_error + 1e-3, (closed, estimate)


@pytest.mark.parametrize(("a", "b"), [(0.31, 1.0), (2.13, 1.0), (0.8, 3.0), (5.0, 0.5)])
def test_expected_pi_matches_the_sample_mean(a, b):
    pi = kumaraswamy_samples(a, b, 400_000, seed=1)
    expected = kumaraswamy_mean(torch.tensor(a, dtype=torch.float64), torch.tensor(b))
    assert expected.item() == pytest.approx(pi.mean().item(), abs=5 * pi.std().item() / 632)


def test_the_gate_samples_its_own_posterior_and_is_deterministic_in_eval():
    gate = BetaBernoulliGate(3, kind="inputs", layers=["x"])
    with torch.no_grad():
        gate.a_raw.copy_(torch.tensor([2.0, -1.0, -10.0]))
    torch.manual_seed(0)
    with torch.no_grad():
        pi = torch.stack([gate.sample_pi() for _ in range(4000)])
        assert torch.allclose(pi.mean(0), gate.expected_pi(), atol=0.03)
        # One π per pass, then one relaxed Bernoulli(π) gate per example.
        torch.manual_seed(1)
        pass_pi = gate.sample_pi()
        torch.manual_seed(1)
        z = gate.sample_gates(20_000)
    assert ((z < 0.01) | (z > 0.99)).float().mean() > 0.75  # temperature 0.1: nearly binary
    assert torch.allclose((z > 0.5).float().mean(0), pass_pi, atol=0.02)  # P(z > ½) = π
    assert gate.keep().tolist() == [True, True, False]  # E[π] of a = softplus(−10): ~5e-5
    assert gate.scale()[2] == 0 and gate.scale()[0] == gate.expected_pi()[0]


def randomise_gates(model: nn.Module, seed: int = 0) -> None:
    """Gates with E[π] spread over (0.3, 0.95) and about 40 % of the units pruned."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gate in find_gates(model):
            gate.a_raw.copy_(torch.rand(gate.units, generator=generator) * 4)
            gate.a_raw[torch.rand(gate.units, generator=generator) < 0.4] = -10


def test_resnet18_gates_follow_its_residual_groups_and_come_out_cleanly():
    torch.manual_seed(0)
    model = create_model("resnet18", 10, 3)
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    reference = model(x)
    keys = list(model.state_dict())
    gates = insert_gates(model, torch.zeros(2, 3, 32, 32))
    channel_gates = [gate for gate in gates if gate.kind == "channels"]
    grouped = {name: gate for gate in channel_gates for name in gate.layers}
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(grouped) == sorted(convs)  # every conv is gated exactly once
    # Stage 1: the stem and both blocks' second convs add into one stream; later stages add
    # their shortcut conv too. Inner convs (conv1 of each block) are on their own.
    stage1 = ["conv1", "layer1.0.conv2", "layer1.1.conv2"]
    stage2 = ["layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"]
    assert grouped[stage1[0]].layers == stage1 and grouped[stage2[0]].layers == stage2
    inner = [f"layer{stage}.{block}.conv1" for stage in range(1, 5) for block in range(2)]
    assert all(len(grouped[name].layers) == 1 for name in inner)
    for gate in channel_gates:
        widths = {model.get_submodule(name).out_channels for name in gate.layers}
        assert widths == {gate.units} and len(gate.norms) == len(gate.layers)
    assert len(channel_gates) == 4 + 8  # 4 residual streams, 8 inner convs
    assert model(x).shape == (2, 10)
    training_copy = copy.deepcopy(model).train()  # its BN statistics move; the model's must not
    assert training_copy(torch.rand(4, 3, 32, 32)).shape == (4, 10)
    remove_gates(model)
    assert list(model.state_dict()) == keys and not find_gates(model)
    model.eval()
    assert torch.equal(model(x), reference)


class TinyResidual(nn.Module):
    """A network of our own, not from the zoo: BN, an identity and a projection shortcut."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
        )
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.project = nn.Conv2d(8, 16, 1, stride=2)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        out = torch.relu(out + self.branch(out))
        out = torch.relu(self.down(out) + self.project(out))
        return self.head(torch.flatten(nn.functional.max_pool2d(out, 2), 1))


def build(name: str) -> nn.Module:
    if name == "tiny-residual":
        return TinyResidual()
    return create_model(name, 10, 1, image_size=28)


@pytest.mark.parametrize("round_to", [1, 8, 16])
@pytest.mark.parametrize(
    ("name", "channels", "size"), [("lenet5-caffe", 1, 28), ("tiny-residual", 3, 16)]
)
def test_the_exported_network_computes_what_the_gated_one_does(
    tmp_path, name, channels, size, round_to
):
    torch.manual_seed(0)
    model = build(name)
    example = torch.zeros(1, channels, size, size)
    insert_gates(model, example.expand(2, -1, -1, -1))
    randomise_gates(model)
    model.train()
    model(torch.rand(8, channels, size, size))  # BN running statistics of a gated network
    model.eval()
    x = torch.rand(16, channels, size, size)
    with torch.no_grad():  # logits that vary by ~1 between inputs: 1e-4 is a tight tolerance
        logits = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        logits.weight.div_(model(x).std(0).mean())
    exported = export_gated(model, example, round_to)
    with torch.no_grad():
        gated_out, exported_out = model(x), exported(x)
    assert (gated_out - exported_out).abs().max() < 1e-4
    assert not find_gates(exported)
    # A conv keeps its gate's units, rounded up to a multiple of round_to (padding) but never
    # above its original width.
    for gate in find_gates(model):
        if gate.kind == "channels" and len(gate.layers) == 1:
            kept, width = int(gate.keep().sum()), gate.units
            expected = min(width, -(-max(kept, 1) // round_to) * round_to)
            assert exported.get_submodule(gate.layers[0]).out_channels == expected, gate.layers
    params = sum(p.numel() for p in exported.parameters())
    folded = sum(p.numel() for p in fold_gates(model, example).parameters())
    assert params < 0.7 * folded if round_to == 1 else params <= folded  # tiny-residual: 8 wide

    if name == "tiny-residual":
        return
    architecture = {
        "name": name,
        "num_classes": 10,
        "in_channels": channels,
        "image_size": size,
        "mean": [0.0] * channels,
        "std": [1.0] * channels,
        "layer_shapes": layer_shapes(exported),
    }
    save_model(tmp_path / "model.safetensors", exported, {"architecture": architecture})
    loaded, _ = load_model(tmp_path / "model.safetensors")
    assert not any(isinstance(m, BetaBernoulliGate) for m in loaded.modules())
    with torch.no_grad():
        assert torch.equal(loaded(x), exported_out)


def test_a_dense_models_weights_load_into_its_gated_version():
    dense = create_model("lenet5-caffe", 10, 1, image_size=28)
    gated = create_model("lenet5-caffe", 10, 1, image_size=28)
    insert_gates(gated, torch.zeros(2, 1, 28, 28))
    base_keys = {k for k in gated.state_dict() if ".gate." not in k}
    assert base_keys == set(dense.state_dict())
    gated.load_state_dict(dense.state_dict(), strict=False)
    remove_gates(gated)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(gated.eval()(x), dense.eval()(x))


def test_gates_prune_pure_noise_inputs_and_keep_the_signal():
    """The first layer sees 7 signal inputs (the label is their majority bit) and 7 inputs of
    pure noise. ANP-VS from a trained network prunes exactly the noise inputs."""
    torch.manual_seed(0)
    signal = noise = 7

    def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
        bits = torch.randint(0, 2, (size, signal))
        x = torch.rand(size, signal + noise)
        x[:, :signal] = 0.25 + 0.5 * bits + 0.1 * (torch.rand(size, signal) - 0.5)
        return x, (bits.sum(1) > signal // 2).long()

    model = nn.Sequential(nn.Linear(signal + noise, 32), nn.ReLU(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):  # ANP-VS starts from a trained network
        x, y = batch(128)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    train = TrainConfig(eps=0.05, attack_steps=2, optimizer="adam", lr=1e-2).validate()
    config = ANPVSSettings(beta=2.0, gate_lr=0.1, dense_gate_init=2.0)
    method = ANPVSTraining(config, train, (signal + noise,))
    method.prepare(model)
    optimizer = torch.optim.Adam(method.weight_parameters(model), lr=1e-2)
    steps = 175
    for step in range(steps):
        x, y = batch(128)
        context = StepContext(None, 0, step, steps, 1e-2, examples=1000)
        method.step(model, x, y, optimizer, context)
    inputs = method.gates[0]
    assert inputs.layers == ["0"] and inputs.units == signal + noise
    assert inputs.keep().tolist() == [True] * signal + [False] * noise, inputs.expected_pi()
    x, y = batch(2000)
    assert (model.eval()(x).argmax(1) == y).float().mean() > 0.8
