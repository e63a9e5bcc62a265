import pytest
import torch

from advprune.core.errors import CheckpointError, ConfigError
from advprune.models import MODELS, create_model
from advprune.models.serialization import load_model, save_model

SHAPES = {
    "lenet300-100": (1, 28),
    "lenet5-caffe": (1, 28),
    "vgg16": (3, 32),
    "resnet18": (3, 32),
    "wrn28-10": (3, 32),
    "wrn34-10": (3, 32),
}
# Published parameter counts: LeNet-5-Caffe (ANP-VS), ResNet-18 and WRN-28-10 CIFAR variants.
PARAMETERS = {"lenet5-caffe": 431_080, "resnet18": 11_173_962, "wrn28-10": 36_479_194}


def architecture(name: str, num_classes: int = 10) -> dict:
    channels, size = SHAPES[name]
    return {
        "name": name,
        "num_classes": num_classes,
        "in_channels": channels,
        "image_size": size,
        "mean": [0.5] * channels,
        "std": [0.25] * channels,
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_maps_images_to_logits(name):
    arch = architecture(name, num_classes=7)
    model = create_model(arch.pop("name"), **arch).eval()
    channels, size = SHAPES[name]
    with torch.no_grad():
        out = model(torch.rand(2, channels, size, size))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_parameter_counts_match_the_literature(name):
    channels, size = SHAPES[name]
    model = create_model(name, 10, channels, image_size=size)
    assert sum(p.numel() for p in model.parameters()) == PARAMETERS[name]


def test_normalisation_is_inside_the_model():
    model = create_model("lenet300-100", 10, 1, image_size=28, mean=[0.5], std=[0.25]).eval()
    x = torch.rand(3, 1, 28, 28)
    body_out = model.body((x - 0.5) / 0.25)
    assert torch.allclose(model(x), body_out)


def test_unknown_model_and_bad_normalisation_are_config_errors():
    with pytest.raises(ConfigError, match="unknown model 'lenet6'"):
        create_model("lenet6")
    with pytest.raises(ConfigError, match="one per input channel"):
        create_model("resnet18", 10, 3, mean=[0.5], std=[0.5])


def test_save_and_load_round_trip(tmp_path):
    arch = architecture("lenet5-caffe")
    name = arch.pop("name")
    model = create_model(name, **arch).eval()
    save_model(tmp_path / "m.safetensors", model, {"architecture": {"name": name, **arch}})
    loaded, metadata = load_model(tmp_path / "m.safetensors")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert metadata["architecture"]["name"] == "lenet5-caffe"
    assert not loaded.training


def test_loading_weights_of_another_architecture_names_the_mismatch(tmp_path):
    arch = architecture("lenet5-caffe")
    name = arch.pop("name")
    save_model(
        tmp_path / "m.safetensors",
        create_model(name, **arch),
        {"architecture": {"name": name, **arch}},
    )
    # Same metadata, but the file is rewritten with a model for 20 classes: shapes disagree.
    other = create_model(name, **{**arch, "num_classes": 20})
    from advprune.core.tensor_files import save_tensors

    save_tensors(
        tmp_path / "m.safetensors", other.state_dict(), {"architecture": {"name": name, **arch}}
    )
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_model(tmp_path / "m.safetensors")
