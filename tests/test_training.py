import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
import yaml

from advprune.core.errors import ConfigError
from advprune.data import ImageDataset, get_spec
from advprune.masks import WeightMasks
from advprune.models import create_model
from advprune.models.serialization import load_model
from advprune.training import TrainConfig, objectives, train
from advprune.training import trainer as trainer_module
from advprune.training.method import MaskedTraining
from advprune.training.schedule import learning_rate
from conftest import TINY_TRAINING


def tiny_config(**overrides) -> TrainConfig:
    """The conftest run, two SGD epochs, with the epoch monitor on."""
    values = {**TINY_TRAINING, "epochs": 2, "optimizer": "sgd", "lr": 0.05, "limit_train": 256}
    values.update(limit_test=128, monitor_examples=64, seed=3)
    return TrainConfig.from_dict({**values, **overrides})


def read_metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def test_config_round_trips_through_yaml(tmp_path):
    config = tiny_config(milestones=[0.3, 0.6], precision="bf16")
    config.save(tmp_path / "config.yaml")
    assert TrainConfig.load(tmp_path / "config.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective": "fancy"}, "unknown objective 'fancy'"),
        ({"eps": -0.1}, r"ε = -0.1 is outside \[0, 1\]"),
        ({"eps": float("nan")}, r"ε = nan is outside \[0, 1\]"),
        ({"eps": 8}, r"ε is in \[0, 1\] pixels; for 8/255 pass 0.0314 or --eps 8/255"),
        ({"epochs": 0}, "epochs must be ≥ 1"),
        ({"limit_train": 0}, "limit_train must be ≥ 1"),
        ({"monitor_clean_examples": 0}, "monitor_clean_examples must be ≥ 1"),
        ({"milestones": [1.5]}, "milestones are fractions"),
        ({"precision": "fp8"}, "unknown precision"),
    ],
)
def test_impossible_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(**overrides)


def test_unknown_config_key_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"epochz": 3}))
    with pytest.raises(ConfigError, match=r"unknown setting .epochz. in .*; did you mean epochs"):
        TrainConfig.load(tmp_path / "c.yaml")


def test_schedules():
    assert learning_rate(0.1, "step", 0.49, [0.5, 0.75], 0.1) == pytest.approx(0.1)
    assert learning_rate(0.1, "step", 0.5, [0.5, 0.75], 0.1) == pytest.approx(0.01)
    assert learning_rate(0.1, "step", 0.8, [0.5, 0.75], 0.1) == pytest.approx(0.001)
    assert learning_rate(0.1, "cosine", 0.0, [], 0.1) == pytest.approx(0.1)
    assert learning_rate(0.1, "cosine", 0.5, [], 0.1) == pytest.approx(0.05)
    assert learning_rate(0.1, "constant", 0.9, [], 0.1) == 0.1


def half_masks() -> WeightMasks:
    """Prune a random half of every weight of lenet300-100, as a pruning method would."""
    model = create_model("lenet300-100", 10, 1, image_size=28)
    generator = torch.Generator().manual_seed(0)
    return WeightMasks(
        {
            name: torch.rand(p.shape, generator=generator) < 0.5
            for name, p in model.named_parameters()
            if name.endswith("weight")
        }
    )


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "masked"])
def test_resume_after_interruption_equals_an_uninterrupted_run(tmp_path, monkeypatch, pruned):
    config = tiny_config()
    masks = half_masks() if pruned else None

    def method(masks: WeightMasks | None) -> MaskedTraining | None:
        return MaskedTraining(masks, {"name": "half"}) if pruned else None

    train(config, str(tmp_path / "whole"), progress=False, log=lambda _: None, method=method(masks))

    real_save = trainer_module.save_training_state
    saves = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        raise KeyboardInterrupt  # the process dies right after the epoch-1 checkpoint

    monkeypatch.setattr(trainer_module, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(
            config,
            str(tmp_path / "resumed"),
            progress=False,
            log=lambda _: None,
            method=method(masks),
        )
    monkeypatch.setattr(trainer_module, "save_training_state", real_save)
    assert saves == [1] and not (tmp_path / "resumed" / "model.safetensors").exists()
    assert len(read_metrics(tmp_path / "resumed")) == 1

    # Resuming takes the masks from the checkpoint, not from the caller.
    train(
        config,
        str(tmp_path / "resumed"),
        resume=True,
        progress=False,
        log=lambda _: None,
        method=method(None),
    )
    assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "whole")
    whole, _ = load_model(tmp_path / "whole" / "model.safetensors")
    resumed, _ = load_model(tmp_path / "resumed" / "model.safetensors")
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    if pruned:
        parameters = dict(resumed.named_parameters())
        for name, keep in masks.items():
            assert torch.count_nonzero(parameters[name][~keep]) == 0, name
            assert torch.count_nonzero(parameters[name][keep]) == int(keep.sum()), name
        saved, _ = WeightMasks.load(tmp_path / "resumed" / "masks.safetensors")
        assert all(torch.equal(saved[name], masks[name]) for name in masks)


def test_a_run_directory_is_not_overwritten_without_resume(tmp_path):
    config = tiny_config(epochs=1, objective="standard")
    train(config, str(tmp_path), progress=False, log=lambda _: None)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(config, str(tmp_path), progress=False, log=lambda _: None)
    other = dataclasses.replace(config, lr=0.01)
    with pytest.raises(ConfigError, match=r"was started with lr=0\.05, not 0\.01"):
        train(other, str(tmp_path), resume=True, progress=False, log=lambda _: None)


@pytest.mark.parametrize("objective", ["standard", "pgd-at", "trades", "mart", "fast-at"])
def test_each_objective_trains_and_leaves_a_loadable_model(tmp_path, objective):
    config = tiny_config(objective=objective, epochs=1, limit_train=1280, optimizer="adam", lr=1e-3)
    model = train(config, str(tmp_path), progress=False, log=lambda _: None)
    record = read_metrics(tmp_path)[0]
    assert math.isfinite(record["train_loss"])
    assert record["test_clean_accuracy"] > 0.3  # three times chance (0.1) after 20 steps
    loaded, metadata = load_model(tmp_path / "model.safetensors")
    assert metadata["config"]["objective"] == objective
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), model.cpu()(x))


def test_mart_matches_its_reference_formula(monkeypatch):
    """MART as Wang et al.'s code writes it: top-2 argsort for the strongest wrong class."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    x, y = torch.rand(8, 1, 3, 4), torch.randint(0, 5, (8,))
    x_adv = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    monkeypatch.setattr(objectives, "_adversarial", lambda *args, **kwargs: x_adv)
    out = objectives.mart(model, x, y, objectives.AttackSettings(0.1, 1), beta=5.0)

    adv_probs = F.softmax(model(x_adv), dim=1)
    top2 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    loss_adv = F.cross_entropy(model(x_adv), y) + F.nll_loss(
        torch.log(1.0001 - adv_probs + 1e-12), new_y
    )
    nat_probs = F.softmax(model(x), dim=1)
    true_probs = nat_probs.gather(1, y[:, None]).squeeze(1)
    kl = F.kl_div(torch.log(adv_probs + 1e-12), nat_probs, reduction="none").sum(1)
    reference = loss_adv + 5.0 * (kl * (1.0000001 - true_probs)).mean()
    assert out.loss.item() == pytest.approx(reference.item(), rel=1e-5)


@pytest.mark.parametrize(
    "flags",
    [{"precision": "bf16", "channels_last": True}, {"compile": True}],
    ids=["bf16-channels-last", "compile"],
)
def test_speed_flags_train_the_same_model(tmp_path, flags):
    """The speed flags change how, not what: the model still learns and saves plain weights."""
    config = tiny_config(
        objective="pgd-at",
        epochs=1,
        limit_train=1280,
        optimizer="adam",
        lr=1e-3,
        model="lenet5-caffe",
        **flags,
    )
    train(config, str(tmp_path), progress=False, log=lambda _: None)
    record = read_metrics(tmp_path)[0]
    assert record["test_clean_accuracy"] > 0.3
    loaded, _ = load_model(tmp_path / "model.safetensors")
    assert not any(k.startswith("_orig_mod") for k in loaded.state_dict())


def test_the_monitor_classifies_only_its_first_clean_examples():
    """Labels that the model gets right on the first 40 test images and wrong on the rest: the
    monitor reads 100 % with 40 clean examples, as it would not if it read the whole split."""
    torch.manual_seed(0)
    model = create_model("lenet300-100", num_classes=10, in_channels=1, image_size=28).eval()
    images = torch.rand(100, 1, 28, 28)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    labels = torch.cat([predicted[:40], (predicted[40:] + 1) % 10])
    test = ImageDataset("fashion-mnist", images, labels, 10)
    data = trainer_module.TrainingData(get_spec("fashion-mnist"), test, test)
    config = tiny_config(monitor_clean_examples=40, monitor_examples=0)
    record = trainer_module.monitor(model, data, config, torch.device("cpu"), epoch=0)
    assert record["test_clean_accuracy"] == 1.0
    wider = trainer_module.monitor(
        model, data, dataclasses.replace(config, monitor_clean_examples=50), torch.device("cpu"), 0
    )
    assert wider["test_clean_accuracy"] == pytest.approx(0.8)
