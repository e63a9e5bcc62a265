"""`--keep best-*`: the run ends with its best epoch on images set aside for choosing it (the
official HYDRA/HARP/MAD code's model_best, on a held-out split or, as published, the test set)."""

import json
from types import SimpleNamespace

import pytest
import torch

from advprune.core.errors import ConfigError
from advprune.core.tensor_files import load_tensors
from advprune.data import load_dataset
from advprune.methods import PruneSettings, get_method
from advprune.methods.harp import HarpTraining
from advprune.models import create_model
from advprune.models.serialization import load_model
from advprune.training import train
from advprune.training import trainer as trainer_module
from advprune.training.checkpoint import MODEL_PREFIX
from advprune.training.keep import selection_split
from advprune.training.method import TrainingMethod
from advprune.training.trainer import monitor_attack, sharded_accuracy
from conftest import prune_tiny, quiet, tiny_config

HELD_OUT = 128
# Epoch 1 at lr 1e-3, epochs 2 and 3 at 100× that: Adam at 0.1 wrecks LeNet-300-100, so the
# first epoch is the best one by a wide margin (the tests check it before relying on it).
WRECKED_AFTER_EPOCH_1 = dict(epochs=3, schedule="step", milestones=[0.34], gamma=100.0)


def metrics(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


class KeepOnlyTheSecondEpoch(TrainingMethod):
    """A method that lets only epoch 2 be kept (as HARP lets only epochs after its target)."""

    def __init__(self) -> None:
        self.epochs_ended = 0

    def may_keep(self) -> bool:
        self.epochs_ended += 1
        return self.epochs_ended == 2


def held_out_images(config):
    train_split = load_dataset("fashion-mnist", "train", limit=config.limit_train)
    test_split = load_dataset("fashion-mnist", "test", limit=config.limit_test)
    return selection_split(train_split, test_split, config.keep, config.keep_examples)[1]


def test_best_validation_trains_without_the_held_out_images(tmp_path):
    held = tiny_config(epochs=2, keep="best-validation", keep_examples=HELD_OUT)
    plain = tiny_config(epochs=2, limit_train=held.limit_train - HELD_OUT)
    train(held, str(tmp_path / "held"), progress=False, log=quiet)
    train(plain, str(tmp_path / "plain"), progress=False, log=quiet)
    # The same first 384 images, seeds and steps: the same training, whatever is kept.
    for a, b in zip(metrics(tmp_path / "held"), metrics(tmp_path / "plain"), strict=True):
        assert a["train_loss"] == b["train_loss"] and a["train_accuracy"] == b["train_accuracy"]
        assert a["keep_validation_pgd10_examples"] == HELD_OUT
        assert "keep_validation_pgd10_examples" not in b


def test_the_kept_epoch_is_the_one_the_method_allows_and_its_weights_are_saved(tmp_path):
    config = tiny_config(epochs=3, keep="best-validation", keep_examples=HELD_OUT)
    run = tmp_path / "run"
    train(config, str(run), progress=False, log=quiet, method=KeepOnlyTheSecondEpoch())
    model, metadata = load_model(run / "model.safetensors")
    assert metadata["kept"]["epoch"] == 2 and metadata["kept"]["examples"] == HELD_OUT
    history = metrics(run)
    assert metadata["kept"]["score"] == history[1]["keep_validation_pgd10_accuracy"]
    # The saved weights score what epoch 2 scored, under the same attack and starts...
    attack = monitor_attack(config.eps, config.seed, 0, "keep", torch.device("cpu"))
    score = sharded_accuracy(model, held_out_images(config), attack, torch.device("cpu"))
    assert score == history[1]["keep_validation_pgd10_accuracy"]
    # ... and they are not the last epoch's, which the checkpoint holds.
    tensors, _ = load_tensors(run / "checkpoint.safetensors")
    last = {k[len(MODEL_PREFIX) :]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}
    assert any(not torch.equal(last[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("keep", ["best-validation", "best-test"])
def test_the_best_epoch_is_kept_and_survives_an_interruption(tmp_path, monkeypatch, keep):
    config = tiny_config(**WRECKED_AFTER_EPOCH_1, keep=keep, keep_examples=HELD_OUT)
    train(config, str(tmp_path / "whole"), progress=False, log=quiet)
    _, whole_metadata = load_model(tmp_path / "whole" / "model.safetensors")
    where = "validation" if keep == "best-validation" else "test"
    scores = [r[f"keep_{where}_pgd10_accuracy"] for r in metrics(tmp_path / "whole")]
    assert whole_metadata["kept"]["epoch"] == scores.index(max(scores)) + 1 == 1
    assert max(scores[1:]) < scores[0]  # epoch 1 must be the best for the resume to tell

    real_save, saves = trainer_module.save_training_state, []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt  # dies after epoch 2, with epoch 1 kept in the checkpoint

    monkeypatch.setattr(trainer_module, "save_training_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, str(tmp_path / "resumed"), progress=False, log=quiet)
    monkeypatch.setattr(trainer_module, "save_training_state", real_save)
    train(config, str(tmp_path / "resumed"), resume=True, progress=False, log=quiet)

    whole, _ = load_model(tmp_path / "whole" / "model.safetensors")
    resumed, metadata = load_model(tmp_path / "resumed" / "model.safetensors")
    assert metadata["kept"] == whole_metadata["kept"]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_holding_out_every_training_image_is_refused_before_anything_is_written(tmp_path):
    config = tiny_config(keep="best-validation", keep_examples=512)
    with pytest.raises(ConfigError, match="lower --keep-examples"):
        train(config, str(tmp_path / "run"), progress=False, log=quiet)
    assert not (tmp_path / "run").exists()


def test_a_pruning_run_keeps_its_best_fine_tuning_epoch_and_its_name_says_so(tmp_path, tiny_run):
    run = tmp_path / "pruned"
    prune_tiny(
        tiny_run("keep"), run, "magnitude", keep="best-test", keep_examples=64, finetune_epochs=2
    )
    _, metadata = load_model(run / "model.safetensors")
    assert metadata["kept"]["rule"] == "best-test" and metadata["kept"]["examples"] == 64
    assert metadata["kept"]["epoch"] in (1, 2)
    assert metadata["method"]["label"] == "magnitude [keep=best-test]"


def test_each_phase_keeps_what_the_pruning_run_asks_and_hydras_scores_their_last_epoch():
    source = tiny_config(keep="best-validation", keep_examples=HELD_OUT)
    default = SimpleNamespace(source=source, settings=PruneSettings(method="hydra"))
    asked = SimpleNamespace(source=source, settings=PruneSettings(method="hydra", keep="best-test"))
    # The source run's choice never reaches a phase; the pruning run's reaches its fine-tuning...
    assert get_method("magnitude")().phase(source, default.settings).keep == "last"
    assert get_method("hydra")().phase(source, asked.settings).keep == "best-test"
    # ... and HARP's prune phase (the official model_best), never HYDRA's score phase.
    assert get_method("harp")().mask_phase(asked).keep == "best-test"
    assert get_method("hydra")().mask_phase(asked).keep == "last"


def test_harp_lets_an_epoch_be_kept_only_once_its_target_is_reached():
    model = create_model("lenet300-100", 10, 1, image_size=28)
    harp = HarpTraining(0.1, gamma=0.01, rate_floor=0.1, initial_rate=1.0)
    harp.prepare(model)
    assert not harp.may_keep()  # every rate at 1.0, the target 0.1: L_hw > 0
    harp.frozen_gamma = 0.03  # the target was reached at an earlier epoch's end
    assert harp.may_keep()
