"""VGG-16 with batch norm, CIFAR variant (13 conv layers, 2 dense layers), as in ANP-VS and MAD."""

from torch import nn

VGG16_LAYERS = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def vgg16(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> nn.Sequential:
    """conv → BN → ReLU blocks; global average pooling makes it work for 32×32 and 64×64 inputs."""
    layers: list[nn.Module] = []
    channels = in_channels
    for layer in VGG16_LAYERS:
        if layer == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [
                nn.Conv2d(channels, layer, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(layer),
                nn.ReLU(inplace=True),
            ]
            channels = layer
    return nn.Sequential(
        *layers,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )
