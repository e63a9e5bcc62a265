import sys
import textwrap

import pytest
import torch
from torch import nn

from advprune.core.errors import CheckpointError, ConfigError
from advprune.data import get_spec
from advprune.models import (
    MODELS,
    architecture,
    check_model_name,
    create_model,
    list_models,
    model_entry,
    register_model,
)
from advprune.models.serialization import load_model, save_model

SHAPES = {
    "lenet300-100": (1, 28),
    "lenet5-caffe": (1, 28),
    "lenet5-caffe-bn": (1, 28),
    "vgg16-bn": (3, 32),
    "vgg16-mad": (3, 32),
    "vgg16-anpvs": (3, 32),
    "resnet18": (3, 32),
    "preact-resnet18": (3, 32),
    "wrn28-10": (3, 32),
    "wrn34-10": (3, 32),
}
# Published parameter counts: LeNet-5-Caffe (ANP-VS), the adversarial-pruning benchmark's
# ResNet-18 and VGG16-bn, WRN-28-10 and WRN-34-10 CIFAR variants; ANP-VS's VGG-16 from the shapes
# of its official src/model/vgg.py (13 biased convs + BN, dense 512 → BN → 512 → 10).
PARAMETERS = {
    "lenet5-caffe": 431_080,
    "lenet5-caffe-bn": 431_080 + 2 * (20 + 50),  # a BatchNorm's γ and β per conv channel
    "resnet18": 11_173_962,
    "preact-resnet18": 11_172_170,  # the benchmark's models/flyingbird.py ResNet18
    "vgg16-bn": 15_311_818,
    "vgg16-mad": 14_724_042,  # MAD's models/vgg.py: four pools, one Linear 512 → 10
    "vgg16-anpvs": 14_991_946,
    "wrn28-10": 36_479_194,
    "wrn34-10": 46_160_474,
}


def arguments(name: str, num_classes: int = 10) -> dict:
    """A saved architecture for `name`; the normalising networks get a non-trivial mean/std."""
    channels, size = SHAPES[name]
    normalize = model_entry(name).normalize
    return {
        "name": name,
        "num_classes": num_classes,
        "in_channels": channels,
        "image_size": size,
        "mean": [0.5] * channels if normalize else None,
        "std": [0.25] * channels if normalize else None,
    }


def test_every_registered_model_has_a_shape_here():
    assert set(MODELS) == set(SHAPES)


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_model_maps_images_to_logits(name):
    arch = arguments(name, num_classes=7)
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


def test_the_benchmarks_networks_come_bare_and_record_no_normalisation():
    for name in ("vgg16-bn", "resnet18"):
        model = create_model(name)
        assert not any(key.startswith(("normalize.", "body.")) for key in model.state_dict())
        assert architecture(name, get_spec("cifar10"))["mean"] is None
        assert create_model(name, mean=[0.0] * 3, std=[1.0] * 3).state_dict().keys() == (
            model.state_dict().keys()
        )  # an identity normalisation is no normalisation
    assert architecture("vgg16-anpvs", get_spec("cifar10"))["mean"] == list(
        get_spec("cifar10").mean
    )


def test_unknown_model_and_bad_normalisation_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown model 'lenet6' \(known: lenet300-100, "):
        create_model("lenet6")
    with pytest.raises(ConfigError, match=r"unknown model 'vgg16'; did you mean vgg16-bn\?"):
        check_model_name("vgg16")
    with pytest.raises(ConfigError, match="one per input channel"):
        create_model("vgg16-anpvs", 10, 3, mean=[0.5], std=[0.5])
    with pytest.raises(ConfigError, match="resnet18 has no input normalisation"):
        create_model("resnet18", 10, 3, mean=[0.5] * 3, std=[0.5] * 3)
    check_model_name("mypkg.nets:MyCNN")  # an import path is checked when it is built


def test_list_models_takes_shell_wildcards_and_each_name_has_a_description():
    assert list_models() == list(MODELS)
    assert list_models("vgg16*") == ["vgg16-bn", "vgg16-mad", "vgg16-anpvs"]
    assert list_models("*net*") == [
        "lenet300-100",
        "lenet5-caffe",
        "lenet5-caffe-bn",
        "preact-resnet18",
        "resnet18",
    ]
    assert list_models("lenet?-*") == ["lenet5-caffe", "lenet5-caffe-bn"]
    assert list_models("alexnet*") == []
    for name in list_models():
        description = model_entry(name).description
        assert description and "\n" not in description and len(description) < 100
    assert not model_entry("resnet18").normalize and model_entry("lenet5-caffe").normalize


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="taken"):
        register_model("resnet18", description="again")(lambda **_: nn.Identity())
    with pytest.raises(ValueError, match="contains"):
        register_model("pkg:Net", description="an import path")(lambda **_: nn.Identity())
    with pytest.raises(TypeError):
        MODELS["new"] = MODELS["resnet18"]  # the registry is read-only outside register_model


def test_save_and_load_round_trip(tmp_path):
    arch = arguments("lenet5-caffe")
    name = arch.pop("name")
    model = create_model(name, **arch).eval()
    save_model(tmp_path / "m.safetensors", model, {"architecture": {"name": name, **arch}})
    loaded, metadata = load_model(tmp_path / "m.safetensors")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), loaded(x))
    assert metadata["architecture"]["name"] == "lenet5-caffe"
    assert not loaded.training


def test_a_bare_network_round_trips_with_its_recorded_architecture(tmp_path):
    arch = architecture("resnet18", get_spec("cifar10"))
    model = create_model(**arch).eval()
    save_model(tmp_path / "m.safetensors", model, {"architecture": arch})
    loaded, _ = load_model(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 32, 32)
    assert type(loaded) is type(model) and torch.equal(model(x), loaded(x))


def test_loading_weights_of_another_architecture_names_the_mismatch(tmp_path):
    arch = arguments("lenet5-caffe")
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


# ------------------------------------------------------------ networks outside the zoo by path

USER_NETS = """
    from torch import nn


    class SmallCNN(nn.Module):
        def __init__(self, num_classes, in_channels=3):
            super().__init__()
            self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
            self.head = nn.Linear(4, num_classes)

        def forward(self, x):
            return self.head(self.conv(x).mean((2, 3)))


    def fixed():
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))


    def flexible(**sizes):
        return SmallCNN(sizes["num_classes"], sizes["in_channels"])


    class NotANetwork:
        pass


    def returns_a_number(num_classes):
        return num_classes


    instance = fixed()
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of the user's own networks, importable as `user_nets` (on sys.path)."""
    (tmp_path / "user_nets.py").write_text(textwrap.dedent(USER_NETS))
    (tmp_path / "user_nets_broken.py").write_text("import absent_dependency_of_user_nets\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "user_nets", raising=False)
    yield "user_nets"
    sys.modules.pop("user_nets", None)


def test_a_network_by_import_path_gets_the_arguments_its_signature_takes(user_module):
    model = create_model(f"{user_module}:SmallCNN", num_classes=7, in_channels=2, image_size=8)
    assert type(model.body).__name__ == "SmallCNN"  # wrapped like a zoo network
    assert model.body.conv.in_channels == 2 and model(torch.rand(2, 2, 8, 8)).shape == (2, 7)
    fixed = create_model(f"{user_module}:fixed", num_classes=7)  # takes no arguments
    assert fixed(torch.rand(2, 3, 8, 8)).shape == (2, 5)
    flexible = create_model(f"{user_module}:flexible", num_classes=4, in_channels=1)
    assert flexible(torch.rand(2, 1, 8, 8)).shape == (2, 4)


def test_a_network_by_import_path_round_trips_through_save_and_load(user_module, tmp_path):
    arch = {
        "name": f"{user_module}:SmallCNN",
        "num_classes": 3,
        "in_channels": 3,
        "image_size": 8,
        "mean": [0.5, 0.4, 0.3],
        "std": [0.2, 0.2, 0.2],
    }
    model = create_model(**arch).eval()
    save_model(tmp_path / "m.safetensors", model, {"architecture": arch})
    loaded, metadata = load_model(tmp_path / "m.safetensors")
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model(x), loaded(x)) and metadata["architecture"]["name"] == arch["name"]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no_such_module_here:Net", "cannot import module 'no_such_module_here'.*PYTHONPATH"),
        ("user_nets:Missing", "module 'user_nets' has no attribute 'Missing'"),
        ("user_nets:NotANetwork", "is the class NotANetwork, not an nn.Module class"),
        ("user_nets:instance", "is an nn.Module instance, not an nn.Module class"),
        ("user_nets:returns_a_number", "returned a value of type int, not an nn.Module"),
        ("user_nets_broken:Net", "importing 'user_nets_broken'.*failed: No module named 'absent_"),
        (":Net", "is not of the form package.module:ClassOrFactory"),
    ],
)
def test_a_bad_import_path_is_a_one_line_config_error(user_module, name, message):
    with pytest.raises(ConfigError, match=message) as caught:
        create_model(name)
    assert "\n" not in str(caught.value)
