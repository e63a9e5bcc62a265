"""The model zoo: plain `nn.Module`s registered by name, built by `create_model`.

Networks register themselves at their definition (`@register_model`, models/registry.py);
importing this package imports them all. `create_model("lenet5-caffe", 10, 1, image_size=28)`
returns `nn.Sequential(normalize=Normalize(mean, std), body=<network>)`, so attacks always work
on [0, 1] pixels; `vgg16-bn` and `resnet18`, the adversarial-pruning benchmark's networks, come
back bare, without normalisation, as the benchmark defines and feeds them. A network outside the
zoo is named by import path, `create_model("mypkg.nets:MyCNN", num_classes=10)`, and any user
`nn.Module` that takes [0, 1] images works with advprune just as well.
"""

from advprune.models import lenet, preact_resnet, resnet, vgg, wide_resnet  # noqa: F401
from advprune.models.factory import architecture, create_model, input_shape
from advprune.models.few_channel_conv import speed_up_input_gradients
from advprune.models.layout import in_trained_layout, input_memory_format
from advprune.models.normalization import Normalize, with_normalization
from advprune.models.registry import (
    MODELS,
    ModelEntry,
    check_model_name,
    list_models,
    model_entry,
    register_model,
)

__all__ = [
    "MODELS",
    "ModelEntry",
    "Normalize",
    "architecture",
    "check_model_name",
    "create_model",
    "in_trained_layout",
    "input_memory_format",
    "input_shape",
    "list_models",
    "model_entry",
    "register_model",
    "speed_up_input_gradients",
    "with_normalization",
]
