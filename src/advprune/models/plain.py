"""A model's weights as the bare network has them, for the adversarial-pruning benchmark.

The benchmark (pralab/AdversarialPruningBenchmark) takes a method's result as a state dict that
loads `strict=True` into its own `vgg16_bn()` / `resnet18()`, masks multiplied into plain layers
and no normalisation layer (it feeds [0, 1] images). advprune's masks are plain zeros already, so
the export is the network's own state dict without advprune's wrapper prefixes
(`normalize.`, `body.`), in tensors `safetensors.torch.save_file` accepts.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize

from advprune.core.errors import ConfigError
from advprune.models.normalization import Normalize


def _bare_network(model: nn.Module) -> nn.Module:
    """The network inside `create_model`'s `Sequential(normalize, body)`; an identity
    normalisation is dropped, any other would change what the weights compute: refused."""
    wrapped = isinstance(model, nn.Sequential) and list(model._modules) == ["normalize", "body"]
    if not (wrapped and isinstance(model.normalize, Normalize)):
        return model
    if not model.normalize.is_identity():
        mean = [round(v, 4) for v in model.normalize.mean.flatten().tolist()]
        std = [round(v, 4) for v in model.normalize.std.flatten().tolist()]
        raise ConfigError(
            f"the model normalises its inputs (mean {mean}, std {std}), which a plain state dict "
            "would lose: the benchmark feeds [0, 1] images to networks without normalisation; "
            "train a network built without it (vgg16-bn, resnet18)"
        )
    return model.body


def _check_nothing_outside_the_weights(model: nn.Module) -> None:
    """Hooks (ANP-VS gates, torch.nn.utils.prune) or parametrisations change what a layer
    computes without being in its plain weights."""
    for name, module in model.named_modules():
        if (
            module._forward_hooks
            or module._forward_pre_hooks
            or parametrize.is_parametrized(module)
        ):
            raise ConfigError(
                f"module {name or 'model'} computes through hooks or a parametrisation (gates, "
                "masks), which a plain state dict cannot carry; fold them into the weights first "
                "(an ANP-VS run: `advprune export`, then use the exported model)"
            )


def plain_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The bare network's state dict, contiguous and detached, ready for `save_file`.

    Example: `save_file(plain_state_dict(create_model("resnet18")), "r18.safetensors")`, then
    in the benchmark `resnet18().load_state_dict(load_file("r18.safetensors"), strict=True)`.
    """
    _check_nothing_outside_the_weights(model)
    network = _bare_network(model)
    return {key: tensor.detach().contiguous() for key, tensor in network.state_dict().items()}
