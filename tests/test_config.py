"""The config base: flat and nested keys, unknown keys, coercion, YAML round trip, resume check."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from advprune.core.config import Config, group, parse_number, setting
from advprune.core.errors import ConfigError


@dataclass
class Phase(Config):
    lr: float | None = setting(None, "learning rate")
    epochs: int | None = setting(None, "epochs")
    objective: str | None = setting(None, "objective", choices=("pgd-at", "trades"))


@dataclass
class Settings(Config):
    EXECUTION_KEYS = frozenset({"device"})
    device: str = setting("auto", "where it runs")
    eps: float = setting(0.1, "radius")
    milestones: list[float] = setting(help="decay points", factory=lambda: [0.5])
    finetune: Phase = group(Phase, epochs=60, objective="trades")


def test_flat_and_nested_keys_build_the_same_config():
    flat = Settings.from_dict({"finetune_lr": 0.01, "finetune_epochs": 3})
    nested = Settings.from_dict({"finetune": {"lr": 0.01, "epochs": 3}})
    assert flat == nested
    assert flat.finetune == Phase(lr=0.01, epochs=3, objective="trades")  # the owner's default
    assert flat.to_flat()["finetune_lr"] == 0.01


def test_unknown_keys_name_the_source_and_the_nearest_key():
    with pytest.raises(ConfigError, match=r"'finetune_lrr' in my\.yaml; did you mean finetune_lr"):
        Settings.from_dict({"finetune_lrr": 1}, source="my.yaml")
    with pytest.raises(ConfigError, match="did you mean eps"):
        Settings.from_dict({"epss": 1})


def test_choices_and_types_are_checked():
    with pytest.raises(ConfigError, match="choose one of pgd-at, trades; did you mean trades"):
        Settings.from_dict({"finetune_objective": "trade"})
    with pytest.raises(ConfigError, match="eps must be float"):
        Settings.from_dict({"eps": [1]})
    assert Settings.from_dict({"eps": "8/255"}).eps == pytest.approx(8 / 255)
    assert Settings.from_dict({"eps": 1}).eps == 1.0


def test_yaml_round_trip(tmp_path):
    config = Settings.from_dict({"finetune_lr": 0.01, "milestones": [0.3, 0.6]})
    config.save(tmp_path / "settings.yaml")
    assert Settings.load(tmp_path / "settings.yaml") == config


def test_execution_keys_do_not_count_as_changes():
    saved = Settings.from_dict({"device": "cpu"})
    assert Settings.from_dict({"device": "cuda"}).changed(saved) == []
    other = Settings.from_dict({"finetune_lr": 0.5})
    assert other.changed(saved) == ["finetune_lr"]
    with pytest.raises(ConfigError, match=r"started with finetune_lr=None, not 0\.5"):
        other.check_resume(saved, "the run in x")


def test_replace_validates():
    config = Settings()
    assert config.replace(finetune_epochs=3).finetune.epochs == 3
    with pytest.raises(ConfigError, match="unknown objective"):
        config.replace(finetune_objective="nope")


@pytest.mark.parametrize("text", ["abc", "1/0", ""])
def test_parse_number_refuses_what_is_not_a_number(text):
    with pytest.raises(ConfigError, match="is not a number"):
        parse_number(text)
