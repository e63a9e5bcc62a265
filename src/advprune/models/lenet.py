"""The LeNets of the pruning literature: LeNet-300-100 and LeNet-5-Caffe (ANP-VS's MNIST model)."""

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
    spatial = ((image_size - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, kernel_size=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, kernel_size=5),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * spatial * spatial, 500),
        nn.ReLU(inplace=True),
        nn.Linear(500, num_classes),
    )
