"""The names a reader knows a network's layers by, for figures and tables.

A layer of an `nn.Sequential` is named by its position (body.0, body.3), which says nothing to a
reader; such layers are called conv1, conv2, …, fc1, fc2, … by kind, counted in network order.
A layer with a name of its own (ResNet's layer1.0.conv1) keeps it, without the zoo's `body.`.
"""

from __future__ import annotations

from torch import nn

from advprune.models.layer_types import PRUNABLE


def display_names(model: nn.Module) -> dict[str, str]:
    """Module name → display name of every conv and linear layer, in network order (the order
    the modules are defined in).

    Example:
        display_names(create_model("lenet5-caffe", 10, 1, image_size=28))
        # {"body.0": "conv1", "body.3": "conv2", "body.7": "fc1", "body.9": "fc2"}
    """
    counts = {"conv": 0, "fc": 0}
    names = {}
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE):
            continue
        kind = "fc" if isinstance(module, nn.Linear) else "conv"
        counts[kind] += 1
        own = name.removeprefix("body.")
        names[name] = f"{kind}{counts[kind]}" if own.rpartition(".")[2].isdigit() else own
    return names
