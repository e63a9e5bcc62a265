"""The layer types the rest of advprune acts on, named once."""

from torch import nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
PRUNABLE = (*CONVS, nn.Linear)  # what pruning and gates act on: conv and linear layers
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
