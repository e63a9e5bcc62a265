"""VGG-16 with batch norm for 32×32 images, as the two lines of work we reproduce define it.

- `vgg16-bn`: the adversarial-pruning benchmark's (pralab/AdversarialPruningBenchmark,
  models/base_vgg16.py, the network its HYDRA and HARP checkpoints load into): 13 bias-free
  conv-BN-ReLU layers, max-pooling after the 2nd, 4th, 7th and 10th (four pools, none after the
  last conv), adaptive 2×2 average pooling, classifier Linear 2048 → 256, ReLU, Linear 256 → 256,
  ReLU, Linear 256 → C (no dropout, no BN); 15,311,818 parameters for C = 10. Module names and
  indices are the benchmark's (`features.N`, `avgpool`, `classifier.N`), so a state dict loads
  `strict=True` into its network. No input normalisation: the benchmark feeds [0, 1] images.
- `vgg16-mad`: MAD's (ByungKwanLee/Masking-Adversarial-Damage, models/vgg.py, the network its
  published checkpoints — and the benchmark's MAD rows — use): the same 13 bias-free conv-BN-ReLU
  layers and four pools, then a 2×2 average pool (4×4 on 64×64 inputs) and one Linear 512 → C;
  14,724,042 parameters for C = 10, input normalisation inside as in its `forward`.
- `vgg16-anpvs`: ANP-VS's (divyam3897/ANP_VS, src/model/vgg.py): 13 blocks conv 3×3 with bias →
  BN → ReLU, each followed by dropout 0.3 / 0.4 or a max-pool (five pools), then flatten, dense
  512 → 512 → BN → ReLU, dense 512 → C; in the network trained without gates (mode "base") a
  dropout 0.5 precedes each dense layer. `insert_gates` puts the gates where the official code
  applies its Beta-Bernoulli dropout: after each conv, before its BN, and on each dense input.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advprune.models.registry import register_model

# models/base_vgg16.py, cfgs["16"]: numbers are conv widths, "M" a 2×2 max-pool.
BENCHMARK_LAYERS = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip
# src/model/vgg.py: n_units (the 13 conv widths) and p_list (after each block: dropout p, or
# a max-pool where p is None, written "M" here).
ANPVS_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
ANPVS_AFTER = (0.3, "M", 0.4, "M", 0.4, 0.4, "M", 0.4, 0.4, "M", 0.4, 0.4, "M")
ANPVS_DENSE = 512
# The official batch norm (src/model/layers.py, BatchNorm): TF's ε = 1e-3 and moving-average
# decay 0.99, i.e. PyTorch momentum 0.01.
TF_BATCH_NORM = {"eps": 1e-3, "momentum": 0.01}


def _conv_bn_relu_layers(in_channels: int) -> tuple[list[nn.Module], int]:
    """The 13 bias-free conv-BN-ReLU layers and four max-pools that MAD and the benchmark share."""
    layers: list[nn.Module] = []
    channels = in_channels
    for layer in BENCHMARK_LAYERS:
        if layer == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        conv = nn.Conv2d(channels, layer, kernel_size=3, padding=1, bias=False)
        layers += [conv, nn.BatchNorm2d(layer), nn.ReLU(inplace=True)]
        channels = layer
    return layers, channels


class MADVGG(nn.Module):
    """MAD's VGG-16: `feature`, a fixed average pool, `classifier` (one Linear 512 → C)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        layers, channels = _conv_bn_relu_layers(in_channels)
        self.feature = nn.Sequential(*layers)
        # After four pools: 2×2 on 32×32 inputs (AvgPool2d(2)), 4×4 on Tiny-ImageNet's 64×64.
        self.pool = nn.AvgPool2d(max(1, image_size // 16))
        self.classifier = nn.Linear(channels, num_classes)
        self._initialize()

    @torch.no_grad()
    def _initialize(self) -> None:
        """models/vgg.py `_initialize_weights`: conv N(0, 2/(k²·in)), BN 1/0, linear N(0, 0.01)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.kernel_size[0] * module.kernel_size[1] * module.in_channels
                module.weight.normal_(0, math.sqrt(2.0 / fan_in))
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.01)
                module.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.feature(x)), 1))


class BenchmarkVGG(nn.Module):
    """The benchmark's VGG: `features`, `avgpool` (2×2), `classifier` (2048 → 256 → 256 → C)."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers, channels = _conv_bn_relu_layers(in_channels)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 2 * 2, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, num_classes),
        )
        self._initialize()

    @torch.no_grad()
    def _initialize(self) -> None:
        """base_vgg16.py's `initialize_weights(model, "kaiming_normal")`, which `vgg16_bn` calls."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                module.weight.normal_(0, 0.01)
                module.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class BaseModeDropout(nn.Dropout):
    """A dropout the official ANP-VS code applies only to the network trained without gates
    (src/model/vgg.py, lines 61 and 68: `if mode == 'base'`); with its Beta-Bernoulli gates on
    the same inputs it skips them, so a gated run should set p = 0 on these modules."""


class ANPVSVGG(nn.Module):
    """ANP-VS's VGG-16: `features` (13 conv blocks) and `classifier` (two dense layers)."""

    # Layers whose output *before* their batch norm is also a vulnerability feature: the official
    # `temp_x` holds dense14's output before BN (src/model/vgg.py:63) as well as after BN-ReLU
    # (:66), 15 features with the 13 conv-BN-ReLU outputs (:49).
    pre_norm_features = ("classifier.2",)

    def __init__(self, num_classes: int, in_channels: int, image_size: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width, after in zip(ANPVS_WIDTHS, ANPVS_AFTER, strict=True):
            layers += [
                nn.Conv2d(channels, width, kernel_size=3, padding=1),
                nn.BatchNorm2d(width, **TF_BATCH_NORM),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2) if after == "M" else nn.Dropout(after),
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        spatial = image_size // 2 ** ANPVS_AFTER.count("M")
        self.classifier = nn.Sequential(
            nn.Flatten(),
            BaseModeDropout(0.5),
            nn.Linear(channels * spatial * spatial, ANPVS_DENSE),
            nn.BatchNorm1d(ANPVS_DENSE, **TF_BATCH_NORM),
            nn.ReLU(inplace=True),
            BaseModeDropout(0.5),
            nn.Linear(ANPVS_DENSE, num_classes),
        )
        self._initialize()

    @torch.no_grad()
    def _initialize(self) -> None:
        """TF 1's default for `tf.get_variable` without an initializer (src/model/layers.py,
        Conv and Dense): Glorot-uniform, the biases too (a 1-D shape n: bound √(3/n))."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                bound = math.sqrt(3 / module.bias.numel())
                module.bias.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model(
    "vgg16-bn",
    description="VGG-16-BN as the adversarial-pruning benchmark, head 2048-256-256 (15.3 M params, "
    "no normalisation)",
    normalize=False,
)
def vgg16_bn(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> BenchmarkVGG:
    return BenchmarkVGG(num_classes, in_channels)


@register_model(
    "vgg16-mad",
    description="VGG-16-BN of MAD's official code: four pools, one Linear 512 → C (14.7 M params)",
)
def vgg16_mad(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> MADVGG:
    return MADVGG(num_classes, in_channels, image_size)


@register_model(
    "vgg16-anpvs",
    description="VGG-16 of ANP-VS's official code: conv bias, dropout, dense 512 (15.0 M params)",
)
def vgg16_anpvs(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ANPVSVGG:
    return ANPVSVGG(num_classes, in_channels, image_size)
