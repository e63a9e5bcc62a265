"""ResNet-18, CIFAR variant, exactly as the adversarial-pruning benchmark defines it.

pralab/AdversarialPruningBenchmark, models/base_resnet18.py (itself kuangliu/pytorch-cifar's
resnet.py, which MAD's and HYDRA's code also use): 3×3 stem of stride 1 without max-pooling,
four stages `layer1`..`layer4` of two basic blocks (64, 128, 256, 512 channels), each block with
`conv1/bn1/conv2/bn2/shortcut` (the shortcut a 1×1 conv + BN where the shape changes, else
empty), average pooling of the 4×4 map and a `linear` head: 11,173,962 parameters for 10
classes, state-dict keys identical to the benchmark's, so a checkpoint loads `strict=True` into
its network. No input normalisation: the benchmark feeds [0, 1] images.

Two stateless differences, which change neither keys nor outputs: the ReLUs are `nn.ReLU`
modules (the benchmark calls `F.relu`) so that `models.features` sees the post-activation
features ANP-VS's vulnerability is measured on, and the pooling is global, which equals the
benchmark's `avg_pool2d(·, 4)` on 32×32 inputs and stays defined on other sizes.
"""

import torch
from torch import nn

from advprune.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU (He et al., 2016)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` basic blocks; the first changes the width and applies the stride."""
    rest = (BasicBlock(planes, planes, 1) for _ in range(blocks - 1))
    return nn.Sequential(BasicBlock(in_planes, planes, stride), *rest)


class ResNet(nn.Module):
    """Stem, four stages of `BasicBlock`s (stages 2–4 halve the map), global pool, head."""

    def __init__(self, blocks: tuple[int, int, int, int], num_classes: int, in_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _stage(64, 64, blocks[0], stride=1)
        self.layer2 = _stage(64, 128, blocks[1], stride=2)
        self.layer3 = _stage(128, 256, blocks[2], stride=2)
        self.layer4 = _stage(256, 512, blocks[3], stride=2)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


@register_model(
    "resnet18",
    description="ResNet-18, CIFAR variant, as the adversarial-pruning benchmark (11.2 M params, "
    "no normalisation)",
    normalize=False,
)
def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, in_channels)
