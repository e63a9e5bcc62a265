"""The networks of the papers we reproduce, checked against transcriptions of their official code.

`BenchmarkVGG16` and `BenchmarkResNet18` transcribe pralab/AdversarialPruningBenchmark's
models/base_vgg16.py (`vgg16_bn`) and models/base_resnet18.py (`resnet18`); a method enters that
benchmark as a state dict that loads `strict=True` into them. `ANPVS_VGG16` transcribes the layer
sequence of divyam3897/ANP_VS's src/model/vgg.py (`VGG.__call__`, mode 'base').
"""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from advprune.core.errors import ConfigError
from advprune.masks.export import export_gated
from advprune.masks.gated import find_gates, insert_gates
from advprune.models import create_model
from advprune.models.plain import plain_state_dict
from advprune.models.vgg import BaseModeDropout

# ------------------------------------------------------- transcriptions of the benchmark's code


class BenchmarkVGG16(nn.Module):
    """base_vgg16.py: `VGG(make_layers(cfgs["16"], nn.Conv2d, batch_norm=True), 512, nn.Linear)`."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
        layers, in_channels = [], 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1, bias=False)
                layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 2 * 2, 256),
            nn.ReLU(True),
            nn.Linear(256, 256),
            nn.ReLU(True),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


class BenchmarkBasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(
                    in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False
                ),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class BenchmarkResNet18(nn.Module):
    """base_resnet18.py: `ResNet(nn.Conv2d, nn.Linear, BasicBlock, [2, 2, 2, 2])`."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, 2, stride=1)
        self.layer2 = self._make_layer(128, 2, stride=2)
        self.layer3 = self._make_layer(256, 2, stride=2)
        self.layer4 = self._make_layer(512, 2, stride=2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(BenchmarkBasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


BENCHMARK = {"vgg16-bn": BenchmarkVGG16, "resnet18": BenchmarkResNet18}
LAYERS = (nn.Conv2d, nn.Linear)
BENCHMARK_PARAMETERS = {"vgg16-bn": 15_311_818, "resnet18": 11_173_962}  # its README, C = 10


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters, so that eval mode depends on every buffer."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model.eval()


def zero_most_weights(model: nn.Module, fraction: float = 0.9) -> None:
    """A pruned model as advprune leaves one: the smallest weights of each layer plain zeros."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LAYERS):
                magnitude = module.weight.abs().flatten()
                cut = magnitude.kthvalue(int(fraction * magnitude.numel())).values
                module.weight[module.weight.abs() <= cut] = 0


def zero_weights(model: nn.Module) -> int:
    return sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, LAYERS))


# ------------------------------------------------------------------------ the benchmark's nets


@pytest.mark.parametrize("name", sorted(BENCHMARK))
def test_our_network_loads_strictly_into_the_benchmarks_and_computes_the_same(name):
    torch.manual_seed(0)
    ours = trained_looking(create_model(name, num_classes=10))
    theirs = BENCHMARK[name]().eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert list(theirs.state_dict()) == list(ours.state_dict())  # same names, same order
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in ours.parameters()) == BENCHMARK_PARAMETERS[name]
    assert sum(p.numel() for p in theirs.parameters()) == BENCHMARK_PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(BENCHMARK))
def test_a_pruned_models_plain_state_dict_loads_strictly_into_the_benchmark(name, tmp_path):
    torch.manual_seed(1)
    ours = trained_looking(create_model(name, num_classes=10)).to(memory_format=torch.channels_last)
    zero_most_weights(ours)
    save_file(plain_state_dict(ours), tmp_path / "plain.safetensors")
    theirs = BENCHMARK[name]()
    theirs.load_state_dict(load_file(tmp_path / "plain.safetensors"), strict=True)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs.eval()(x), atol=1e-5, rtol=1e-4)
    assert zero_weights(theirs) == zero_weights(ours) > 0.89 * BENCHMARK_PARAMETERS[name]


def test_plain_state_dict_drops_an_identity_normalisation_and_refuses_a_real_one():
    identity = create_model("lenet5-caffe", 10, 1, image_size=28)
    assert list(plain_state_dict(identity)) == list(identity.body.state_dict())
    normalised = create_model("lenet5-caffe", 10, 1, image_size=28, mean=[0.29], std=[0.35])
    with pytest.raises(ConfigError, match=r"normalises its inputs \(mean \[0.29\], std \[0.35\]\)"):
        plain_state_dict(normalised)
    gated = create_model("lenet5-caffe", 10, 1, image_size=28)
    insert_gates(gated, torch.zeros(2, 1, 28, 28))
    with pytest.raises(ConfigError, match=r"hooks or a parametrisation.*advprune export"):
        plain_state_dict(gated)


def test_vgg16_bn_gates_sit_before_each_bn_and_on_each_dense_input():
    model = create_model("vgg16-bn")
    gates = insert_gates(model, torch.zeros(2, 3, 32, 32))
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    channel_gates = {gate.layers[0]: gate.norms for gate in gates if gate.kind == "channels"}
    assert channel_gates == {f"features.{i}": [f"features.{i + 1}"] for i in convs}
    inputs = [gate.layers for gate in gates if gate.kind == "inputs"]
    assert inputs == [["classifier.0"], ["classifier.2"], ["classifier.4"]]


@pytest.mark.parametrize("name", sorted(BENCHMARK))
def test_a_bare_benchmark_network_exports_to_a_smaller_one_with_the_same_names(name):
    """Gates and export need no normalisation wrapper (resnet18's residual groups: test_gates)."""
    torch.manual_seed(0)
    model = trained_looking(create_model(name))
    keys = set(model.state_dict())
    insert_gates(model, torch.zeros(2, 3, 32, 32))
    with torch.no_grad():
        for gate in find_gates(model):  # prune the second half of every gate's units
            gate.a_raw[gate.units // 2 :] = -10
    exported = export_gated(model, torch.zeros(1, 3, 32, 32), round_to=1)  # checks the outputs
    assert set(exported.state_dict()) == keys
    head = exported.classifier[4] if name == "vgg16-bn" else exported.linear
    assert head.in_features == (128 if name == "vgg16-bn" else 256)


# ---------------------------------------------------------------------------- ANP-VS's VGG-16


def conv(n_in: int, n_out: int) -> tuple:
    return ("conv", n_in, n_out, 3, "same", "bias")  # layers.py Conv: W 3×3, b, padding 'SAME'


BN, RELU, POOL = ("bn", 1e-3, 0.01), ("relu",), ("pool", 2)  # TF BN: ε 1e-3, decay 0.99


def dropout(p: float) -> tuple:
    return ("dropout", p)


# src/model/vgg.py, VGG.__call__ (mode 'base'): apply_block l = conv l → bn l → relu, then
# dropout p_list[l] or, where p is None, a 2×2 max-pool; flatten; dropout 0.5 (base mode only);
# dense14 512 → 512; bn14; relu; dropout 0.5 (base mode only); dense15 512 → n_classes.
ANPVS_VGG16 = [
    conv(3, 64), BN, RELU, dropout(0.3),
    conv(64, 64), BN, RELU, POOL,
    conv(64, 128), BN, RELU, dropout(0.4),
    conv(128, 128), BN, RELU, POOL,
    conv(128, 256), BN, RELU, dropout(0.4),
    conv(256, 256), BN, RELU, dropout(0.4),
    conv(256, 256), BN, RELU, POOL,
    conv(256, 512), BN, RELU, dropout(0.4),
    conv(512, 512), BN, RELU, dropout(0.4),
    conv(512, 512), BN, RELU, POOL,
    conv(512, 512), BN, RELU, dropout(0.4),
    conv(512, 512), BN, RELU, dropout(0.4),
    conv(512, 512), BN, RELU, POOL,
    ("flatten",), ("base-mode dropout", 0.5),
    ("dense", 512, 512), BN, RELU, ("base-mode dropout", 0.5),
    ("dense", 512, 10),
]  # fmt: skip


def describe(module: nn.Module) -> tuple:
    """A leaf module in the transcription's vocabulary."""
    if isinstance(module, nn.Conv2d):
        padding = "same" if module.padding == (1, 1) else module.padding
        bias = "bias" if module.bias is not None else "no bias"
        return (
            "conv",
            module.in_channels,
            module.out_channels,
            module.kernel_size[0],
            padding,
            bias,
        )
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return ("bn", module.eps, module.momentum)
    if isinstance(module, BaseModeDropout):
        return ("base-mode dropout", module.p)
    simple = {nn.ReLU: RELU, nn.Flatten: ("flatten",)}
    if type(module) in simple:
        return simple[type(module)]
    if isinstance(module, nn.Dropout):
        return ("dropout", module.p)
    if isinstance(module, nn.MaxPool2d):
        return ("pool", module.kernel_size)
    if isinstance(module, nn.Linear):
        return ("dense", module.in_features, module.out_features)
    raise AssertionError(f"unexpected layer {module}")


def test_anpvs_vgg16_is_the_official_layer_sequence():
    model = create_model("vgg16-anpvs", num_classes=10)
    network = model.body  # ANP-VS normalises its inputs: the dataset's mean/std come first
    leaves = [m for m in network.modules() if not list(m.children())]
    assert [describe(m) for m in leaves] == ANPVS_VGG16


def test_anpvs_vgg16_gates_sit_where_the_official_beta_bernoulli_dropout_does():
    """src/model/vgg.py: bbd l on conv l's output before bn l (13), bbd14 on dense14's input,
    bbd15 on dense15's input; none on the logits."""
    model = create_model("vgg16-anpvs", num_classes=10)
    gates = insert_gates(model, torch.zeros(2, 3, 32, 32))
    channel_gates = [gate for gate in gates if gate.kind == "channels"]
    assert len(channel_gates) == 13
    for gate in channel_gates:
        (layer,), (norm,) = gate.layers, gate.norms
        index = int(layer.rsplit(".", 1)[1])
        assert norm == f"body.features.{index + 1}"
    inputs = [(gate.layers, gate.units) for gate in gates if gate.kind == "inputs"]
    assert inputs == [(["body.classifier.2"], 512), (["body.classifier.6"], 512)]


# ------------------------------------------------------------------------------- MAD's VGG-16

# ByungKwanLee/Masking-Adversarial-Damage, models/vgg.py: make_layers(defaultcfg[16], True) —
# conv 3×3 (no bias, padding 1) → BN → ReLU, max-pools where cfg says 'M' (four) —, then in
# forward an AvgPool2d(2) and classifier = nn.Linear(cfg[-1], num_classes).
MAD_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


def mad_vgg16_layers(num_classes: int = 10) -> list[tuple]:
    layers, channels = [], 3
    for value in MAD_CFG:
        if value == "M":
            layers.append(("pool", 2))
        else:
            layers += [("conv", channels, value, 3, "same", "no bias"), ("bn",), RELU]
            channels = value
    return [*layers, ("avgpool", 2), ("dense", 512, num_classes)]


def test_mad_vgg16_is_the_official_layer_sequence():
    model = create_model("vgg16-mad", num_classes=10)
    leaves = [m for m in model.body.modules() if not list(m.children())]
    described = []
    for leaf in leaves:
        if isinstance(leaf, nn.AvgPool2d):
            described.append(("avgpool", leaf.kernel_size))
        elif isinstance(leaf, nn.BatchNorm2d):
            described.append(("bn",))
        else:
            described.append(describe(leaf))
    assert described == mad_vgg16_layers()
    assert sum(p.numel() for p in model.body.parameters()) == 14_724_042
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
