"""What unstructured pruning acts on: the weights (and biases) of conv and linear layers."""

from __future__ import annotations

from torch import nn

from advprune.models.layer_types import PRUNABLE


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Conv and linear layers by qualified name ("body.0"), in registration order.

    Registration order matters: schemes that treat "the final classifier" specially take the last
    layer of this order (the official MAD code does the same).
    """
    return {name: module for name, module in model.named_modules() if isinstance(module, PRUNABLE)}


def prunable_parameters(model: nn.Module, *, include_bias: bool) -> dict[str, nn.Parameter]:
    """Parameters of `prunable_layers` by qualified name ("body.0.weight", "body.0.bias").

    MAD masks biases as well (every weight and bias tensor gets a mask); magnitude pruning, like
    HYDRA and the LWM baseline, prunes weights only — hence the explicit choice.
    """
    parameters = {}
    for layer_name, layer in prunable_layers(model).items():
        prefix = f"{layer_name}." if layer_name else ""
        parameters[prefix + "weight"] = layer.weight
        if include_bias and layer.bias is not None:
            parameters[prefix + "bias"] = layer.bias
    return parameters


def layer_of(parameter_name: str) -> str:
    """The layer a parameter belongs to: "body.0.weight" → "body.0" ("" for a bare layer)."""
    return parameter_name.rpartition(".")[0]
