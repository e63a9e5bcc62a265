"""`preact-resnet18` against a transcription of the adversarial-pruning benchmark's network.

`BenchmarkPreActResNet18` transcribes pralab/AdversarialPruningBenchmark models/flyingbird.py
(`ResNet18` = `PreActResNet(PreActBlock, [2, 2, 2, 2])`, the same class as models/robustbird.py
and the official Sparsity-Win-Robust-Generalization models/preactivate_resnet.py): a checkpoint
of ours is a submission there only if it loads `strict=True` and computes the same function.
"""

import torch
import torch.nn.functional as F
from torch import nn

from advprune.models import create_model


class BenchmarkPreActBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class BenchmarkPreActResNet18(nn.Module):
    """Its `transforms.Normalize` with CIFAR-10's statistics is stateless: written inline."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.bn = nn.BatchNorm2d(512)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, stride):
        layers = []
        for s in [stride, 1]:
            layers.append(BenchmarkPreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
        std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
        out = self.conv1((x - mean) / std)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = self.avgpool(F.relu(self.bn(out)))
        return self.linear(out.view(out.size(0), -1))


def test_preact_resnet18_loads_strictly_into_the_benchmarks_network_and_computes_the_same():
    torch.manual_seed(0)
    ours = create_model("preact-resnet18", 10, 3).eval()
    theirs = BenchmarkPreActResNet18().eval()
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())  # same keys, same order
    assert {k: v.shape for k, v in state.items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    theirs.load_state_dict(state, strict=True)
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x))
    assert sum(p.numel() for p in ours.parameters()) == 11_172_170


def test_preact_resnet18_on_one_channel_takes_its_input_as_is():
    model = create_model("preact-resnet18", 10, 1, image_size=28).eval()
    assert model.conv1.in_channels == 1
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
