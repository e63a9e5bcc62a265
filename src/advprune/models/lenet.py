"""The LeNets of the pruning literature: LeNet-300-100 and LeNet-5-Caffe (ANP-VS's MNIST model),
and LeNet-5-Caffe with BatchNorm, the small stand-in for the BN networks of MAD, HYDRA and HARP."""

from torch import nn

from advprune.models.registry import register_model


@register_model("lenet300-100", description="fully connected 784-300-100-10, for 28×28 images")
def lenet300_100(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28
) -> nn.Sequential:
    """Fully connected 784-300-100-10 (for 28×28 grey images)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 300),
        nn.ReLU(inplace=True),
        nn.Linear(300, 100),
        nn.ReLU(inplace=True),
        nn.Linear(100, num_classes),
    )


@register_model(
    "lenet5-caffe", description="conv 20-50, dense 500 (ANP-VS's MNIST network, 431,080 params)"
)
def lenet5_caffe(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28
) -> nn.Sequential:
    """conv 20@5×5 → pool → conv 50@5×5 → pool → dense 500 → logits (431,080 parameters on MNIST).

    ReLU after each conv as in ANP-VS, whose vulnerability is measured at conv1-ReLU, conv2-ReLU
    and dense3-ReLU.
    """
    return _lenet5(num_classes, in_channels, image_size, batch_norm=False)


@register_model(
    "lenet5-caffe-bn",
    description="LeNet-5-Caffe with BatchNorm after each conv (the demo's MAD/HYDRA/HARP network)",
)
def lenet5_caffe_bn(
    num_classes: int = 10, in_channels: int = 1, image_size: int = 28
) -> nn.Sequential:
    """LeNet-5-Caffe with a BatchNorm after each conv, before its ReLU (431,220 parameters).

    MAD, HYDRA and HARP were published on VGG-16-bn and ResNet-18, whose BatchNorm rescales a
    layer after most of its weights are gone; MAD's signed saliency in particular needs it (on the
    plain LeNet-5-Caffe it kills conv2: docs/reproductions.md). This is the smallest network of
    that kind, for runs at the demo's scale.
    """
    return _lenet5(num_classes, in_channels, image_size, batch_norm=True)


def _lenet5(
    num_classes: int, in_channels: int, image_size: int, *, batch_norm: bool
) -> nn.Sequential:
    spatial = ((image_size - 4) // 2 - 4) // 2

    def conv(inputs: int, outputs: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(inputs, outputs, kernel_size=5)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(outputs))
        return [*layers, nn.ReLU(inplace=True), nn.MaxPool2d(2)]

    return nn.Sequential(
        *conv(in_channels, 20),
        *conv(20, 50),
        nn.Flatten(),
        nn.Linear(50 * spatial * spatial, 500),
        nn.ReLU(inplace=True),
        nn.Linear(500, num_classes),
    )
