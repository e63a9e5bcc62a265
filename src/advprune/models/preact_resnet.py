"""Pre-activation ResNet-18, as Robust Bird, Flying Bird and the adversarial-pruning benchmark
define it.

VITA-Group/Sparsity-Win-Robust-Generalization, models/preactivate_resnet.py and
Robust-Bird/models/preact_resnet.py (He et al., "Identity Mappings in Deep Residual Networks",
2016), and pralab/AdversarialPruningBenchmark, models/flyingbird.py and models/robustbird.py:
a 3×3 stem without BN, four stages `layer1`..`layer4` of two `PreActBlock`s (BN → ReLU → conv,
twice; the shortcut a bare 1×1 conv taken after the first BN-ReLU where the shape changes), a
final `bn`, ReLU, average pooling and a `linear` head — 11,172,170 parameters for 10 classes.
Its state-dict keys and shapes are the benchmark's, so a checkpoint loads `strict=True` there.

The benchmark's network normalises its input with CIFAR-10's statistics inside `forward`
(`transforms.Normalize`, no state), and so does this one, for 3-channel inputs: the same
function of [0, 1] images, hence registered with `normalize=False` (no dataset statistics are
put in front). The official training code keeps the same statistics as buffers
(`NormalizeByChannelMeanStd`), which is why the benchmark loads Flying Bird's checkpoints with
`strict=False`. A network of other than 3 input channels has no such statistics and takes its
input as is.
"""

import torch
from torch import nn

from advprune.models.registry import register_model

# The benchmark's and the official code's CIFAR-10 statistics (models/flyingbird.py).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class PreActBlock(nn.Module):
    """BN → ReLU → conv3×3 → BN → ReLU → conv3×3, plus the shortcut (He et al., 2016b)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return out + shortcut


class PreActResNet(nn.Module):
    """Stem conv, four stages of `PreActBlock`s, BN-ReLU, global average pool, `linear`."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int, in_channels: int):
        super().__init__()
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if in_channels == 3 else ((0.0,), (1.0,))
        # Not in the state dict: the benchmark's Normalize has no state either.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        widths, in_planes, stages = (64, 128, 256, 512), 64, []
        for index, (planes, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if index == 0 else 2
            stage = [
                PreActBlock(in_planes if i == 0 else planes, planes, stride if i == 0 else 1)
                for i in range(count)
            ]
            stages.append(nn.Sequential(*stage))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn = nn.BatchNorm2d(512)
        self.relu = nn.ReLU()
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1((x - self.mean) / self.std)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = nn.functional.adaptive_avg_pool2d(self.relu(self.bn(out)), 1)
        return self.linear(torch.flatten(out, 1))


@register_model(
    "preact-resnet18",
    description="pre-activation ResNet-18 of Robust/Flying Bird and their benchmark rows (11.2 M)",
    normalize=False,
)
def preact_resnet18(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32
) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)
