"""Wide ResNets (Zagoruyko & Komodakis, 2016), pre-activation blocks: WRN-28-10 and WRN-34-10."""

import torch
from torch import nn

from advprune.models.registry import register_model


class WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(activated))))
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        stages, in_planes = [], widths[0]
        for index, planes in enumerate(widths[1:]):
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(WideBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn(self.layers(self.conv1(x))))
        return self.linear(torch.flatten(self.pool(out), 1))


@register_model("wrn28-10", description="Wide ResNet 28-10, pre-activation (36.5 M params)")
def wrn28_10(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    return WideResNet(28, 10, num_classes, in_channels)


@register_model("wrn34-10", description="Wide ResNet 34-10, pre-activation (46.2 M params)")
def wrn34_10(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> WideResNet:
    return WideResNet(34, 10, num_classes, in_channels)
