"""A user's own images in class folders, end to end: `--dataset imagefolder` trains, prunes,
evaluates and reports on PNGs written by the test, and a run made through the Python API with
`run_dir=` is evaluated by `advprune eval`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import advprune
from advprune.cli import main
from advprune.core.tensor_files import read_metadata
from advprune.data import load_dataset
from dataset_files import write_image_folder

TINY = ["--epochs", "1", "--batch-size", "16", "--attack-steps", "1", "--monitor-examples", "0"]
EVAL = ["--attacks", "clean,pgd", "--pgd-steps", "2", "--sanity-examples", "0"]
EVAL += ["--indicator-examples", "0", "--latency-repeats", "0"]
API_TRAINING = dict(eps=0.03, epochs=3, batch_size=8, attack_steps=1, optimizer="adam", lr=0.01)
API_TRAINING.update(allow_chance=True)  # the first of three short epochs may end at chance


class TinyCNN(nn.Module):
    """A user's network, rebuilt by `advprune eval` from its import path."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 12 * 12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("data") / "images", size=12)


def cli(*argv: str) -> int:
    return main(["--quiet", *argv])


def test_imagefolder_trains_prunes_evaluates_and_reports(images, tmp_path, capsys):
    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    train = ["train", "--dataset", "imagefolder", "--data-dir", str(images), "--eps", "8/255"]
    assert cli(*train, "--model", "lenet300-100", "--run-dir", str(dense), *TINY) == 0
    config = yaml.safe_load((dense / "config.yaml").read_text())
    assert (config["dataset"], config["data_dir"]) == ("imagefolder", str(images))
    metadata = read_metadata(dense / "model.safetensors")
    assert metadata["class_names"] == ["cat", "dog", "emu"]
    assert metadata["architecture"]["in_channels"] == 3
    assert metadata["architecture"]["image_size"] == 12
    prune = ["prune", "--from", str(dense), "--method", "magnitude", "--sparsity", "0.5"]
    assert cli(*prune, "--finetune-epochs", "1", "--run-dir", str(pruned)) == 0
    assert cli("eval", str(pruned), *EVAL) == 0
    results = json.loads((pruned / "results.json").read_text())
    assert results["dataset"] == "imagefolder"
    assert results["attacks"]["clean"]["examples"] == 24  # the whole test folder: 3 × 8
    assert cli("report", str(tmp_path), "--out", str(tmp_path / "report")) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "imagefolder" in report and "pruned" in report


def test_imagefolder_without_eps_or_folder_is_refused_before_any_file(images, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--dataset", "imagefolder", "--data-dir", str(images), "--run-dir",
               str(run)) == 2  # fmt: skip
    assert "pass --eps" in capsys.readouterr().err
    assert cli("train", "--dataset", "imagefolder", "--eps", "0.1", "--run-dir", str(run)) == 2
    assert "pass --data-dir DIR" in capsys.readouterr().err
    assert cli("train", "--dataset", "custom", "--eps", "0.1", "--run-dir", str(run)) == 2
    assert "--dataset imagefolder --data-dir DIR" in capsys.readouterr().err
    assert not run.exists()


def test_train_help_lists_no_dataset_the_parser_refuses(capsys):
    assert cli("train", "--help") == 0
    listed = " ".join(capsys.readouterr().out.split())
    assert "imagefolder" in listed and "custom" not in listed


def test_an_api_run_on_an_image_folder_is_evaluated_by_the_cli(images, tmp_path):
    train = load_dataset("imagefolder", "train", data_dir=images)
    run = tmp_path / "api"
    advprune.adversarial_train(
        TinyCNN(),
        train,
        run_dir=run,
        **API_TRAINING,
    )
    assert cli("eval", str(run), *EVAL) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["dataset"] == "imagefolder"
    assert results["attacks"]["clean"]["examples"] == 24


def test_an_api_run_on_tensors_says_what_eval_needs(images, tmp_path, capsys):
    train = load_dataset("imagefolder", "train", data_dir=images)
    run = tmp_path / "tensors"
    advprune.adversarial_train(
        TinyCNN(),
        (train.images, train.labels),
        run_dir=run,
        **API_TRAINING,
    )
    assert cli("eval", str(run), *EVAL) == 2
    err = capsys.readouterr().err
    assert "in-memory tensors" in err and "advprune.evaluate" in err and "--dataset" in err
    assert not (run / "results.json").exists()
    assert cli("eval", str(run), "--dataset", "imagefolder", "--data-dir", str(images), *EVAL) == 0
    assert json.loads((run / "results.json").read_text())["dataset"] == "imagefolder"


def test_eval_refuses_a_folder_whose_classes_or_images_differ(images, tmp_path, capsys):
    run = tmp_path / "run"
    train = ["train", "--dataset", "imagefolder", "--data-dir", str(images), "--eps", "0.03"]
    assert cli(*train, "--model", "lenet300-100", "--run-dir", str(run), *TINY) == 0
    renamed = write_image_folder(tmp_path / "renamed", ("ant", "bee", "cow"), size=12)
    assert cli("eval", str(run), "--data-dir", str(renamed), *EVAL) == 2
    assert "differ from those" in capsys.readouterr().err
    small = write_image_folder(tmp_path / "small", size=10)
    assert cli("eval", str(run), "--data-dir", str(small), *EVAL) == 2
    assert "network takes (3, 12, 12)" in capsys.readouterr().err
    assert not (run / "results.json").exists()
