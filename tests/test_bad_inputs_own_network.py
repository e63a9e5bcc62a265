"""Bad input, round three (issue 34): the user's own network and data, through the CLI (each
command a real `python -m advprune` process, bad_input_harness.py) and the Python API.

Every command that builds a model — train, prune, eval, a step of reproduce — and every API
function checks the network and the data on one batch before it writes anything
(`models.input_check`): a refused command is one line naming the problem and the fix, exit 2
(an `AdvpruneError` from the API), and leaves its folder as it found it.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import advprune
from advprune.core.errors import AdvpruneError, ConfigError, DataError
from advprune.core.run_dir import LOCK_NAME, RunDir
from advprune.core.tensor_files import load_tensors
from advprune.data import get_spec
from advprune.models.serialization import load_model
from advprune.training import TrainConfig, train
from bad_input_harness import (
    TRAIN,
    Command,
    Outcome,
    assert_left_as_found,
    assert_one_line_error,
    run_commands,
)
from conftest import quiet, tiny_config, train_tiny

# The networks a researcher brings, right and wrong.
MY_NETS = """
import torch
from torch import nn


class MyCNN(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten()
        )
        self.classifier = nn.Linear(8 * 7 * 7, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


class TupleNet(MyCNN):
    def forward(self, x):
        features = self.features(x)
        return self.classifier(features), features


class RGBNet(MyCNN):
    def __init__(self, num_classes=10):
        super().__init__(num_classes, in_channels=3)


class FiveNet(MyCNN):
    def __init__(self, in_channels=1):
        super().__init__(5, in_channels)


class NeedsWidth(MyCNN):
    def __init__(self, width, num_classes=10, in_channels=1):
        super().__init__(num_classes, in_channels)
"""
# The same module after its author changed MyCNN to return its features too.
NOW_A_TUPLE = MY_NETS.replace(
    "        return self.classifier(self.features(x))\n",
    "        return self.classifier(self.features(x)), x\n",
    1,
)
BROKEN = 'raise RuntimeError("boom at import")\n'

MODULES = "modules"
ON_PATH = {"PYTHONPATH": MODULES}
NO_NETWORK = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
MAGNITUDE = ["prune", "--method", "magnitude", "--finetune-epochs", "1"]
EVAL = ["--attacks", "clean,pgd", "--pgd-steps", "2", "--limit-test", "64"]
EVAL += ["--latency-repeats", "0", "--indicator-examples", "0"]
LEARNS = ["--limit-train", "1024", "--epochs", "2"]


def train_args(*extra: str, run_dir: str = "run") -> list[str]:
    """The harness's tiny training with `extra` flags, into `run_dir`."""
    return [*TRAIN[:-1], run_dir, *extra]


@dataclass
class Runs:
    """Finished runs, trained once for the module, that cases copy into their folders."""

    root: Path
    dense: Path  # the tiny PGD-AT run (conftest)
    custom: Path  # MyCNN
    chance: Path  # a run that learnt nothing (lr 1e-9)


Setup = Callable[[Path, Runs], None]


@dataclass
class Case:
    """`args` run in the case's folder after `setup(folder, runs)`."""

    id: str
    args: list[str]
    message: str  # in the one stderr line of a refused command (code 2), else in stdout
    code: int = 2
    setup: Setup | None = None
    written: tuple[str, ...] = ()  # globs of the files the command may write
    env: dict[str, str] = field(default_factory=dict)
    then: list[list[str]] = field(default_factory=list)  # next commands; each must succeed


def modules(contents: str = MY_NETS) -> Setup:
    def setup(folder: Path, runs: Runs) -> None:
        (folder / MODULES).mkdir()
        (folder / MODULES / "mynets.py").write_text(contents)
        (folder / MODULES / "broken.py").write_text(BROKEN)

    return setup


def copied(*names: str, without_model: bool = False) -> Setup:
    def setup(folder: Path, runs: Runs) -> None:
        for name in names:
            shutil.copytree(getattr(runs, name), folder / name)
            if without_model:  # stopped after its last checkpoint
                (folder / name / "model.safetensors").unlink()

    return setup


def all_of(*setups: Setup) -> Setup:
    def setup(folder: Path, runs: Runs) -> None:
        for each in setups:
            each(folder, runs)

    return setup


def notes(folder: Path, runs: Runs) -> None:
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("prune the dense run")


def recipe(train: dict) -> Setup:
    def setup(folder: Path, runs: Runs) -> None:
        steps = [{"name": "dense", "train": {}, "evaluate": False}]
        (folder / "my.yaml").write_text(yaml.safe_dump({"train": train, "steps": steps}))

    return setup


TINY = {"epochs": 1, "limit_train": 64, "limit_test": 64, "batch_size": 64, "attack_steps": 1}
TINY |= {"monitor_examples": 0}

CASES = [
    # 1: a forward that returns (logits, features), in every command that builds the network
    Case(
        "train-forward-returns-a-tuple",
        train_args("--model", "mynets:TupleNet"),
        "TupleNet.forward returns a tuple; return the logits (or pass --output-index 0",
        setup=modules(),
        env=ON_PATH,
        then=[  # trained enough to leave chance: eval refuses to vouch for a model at chance
            train_args("--model", "mynets:TupleNet", "--output-index", "0", *LEARNS),
            ["eval", "run", *EVAL, "--sanity-examples", "0"],
        ],
    ),
    Case(
        "eval-network-now-returns-a-tuple",
        ["eval", "custom", *EVAL],
        "MyCNN.forward returns a tuple; return the logits (or pass --output-index 0",
        setup=all_of(modules(NOW_A_TUPLE), copied("custom")),
        env=ON_PATH,
    ),
    Case(
        "prune-network-now-returns-a-tuple",
        [*MAGNITUDE, "--from", "custom", "--run-dir", "run"],
        "MyCNN.forward returns a tuple; return the logits (or pass --output-index 0",
        setup=all_of(modules(NOW_A_TUPLE), copied("custom")),
        env={**ON_PATH, "XDG_CACHE_HOME": "xdg"},
    ),
    Case(
        "reproduce-step-forward-returns-a-tuple",
        ["reproduce", "./my.yaml"],
        # inside reproduce the hint names the recipe key, as every reproduce hint does
        "TupleNet.forward returns a tuple; return the logits (or pass --set output_index=0",
        setup=all_of(modules(), recipe({**TINY, "model": "mynets:TupleNet", "eps": 0.1})),
        env=ON_PATH,
    ),
    # 2: channels, classes, constructor arguments, an import that raises, not an nn.Module
    Case(
        "three-channel-network-on-one-channel-data",
        train_args("--model", "mynets:RGBNet"),
        "RGBNet's first convolution takes 3 channels but the images have 1; build it with "
        "in_channels=1",
        setup=modules(),
        env=ON_PATH,
    ),
    Case(
        "five-outputs-for-ten-classes",
        train_args("--model", "mynets:FiveNet"),
        "FiveNet gives 5 outputs for 10 classes; build its last layer with 10 outputs",
        setup=modules(),
        env=ON_PATH,
    ),
    Case(
        "constructor-needs-an-argument",
        train_args("--model", "mynets:NeedsWidth"),
        "mynets:NeedsWidth needs the constructor argument(s) width, which advprune cannot give "
        "(it passes only num_classes, in_channels, image_size); give them defaults",
        setup=modules(),
        env=ON_PATH,
    ),
    Case(
        "import-raises",
        train_args("--model", "broken:Net"),
        "importing 'broken' for model 'broken:Net' raised RuntimeError: boom at import; fix the "
        "module",
        setup=modules(),
        env=ON_PATH,
    ),
    Case(
        "not-an-nn-module",
        train_args("--model", "os.path:join"),
        "os.path:join is not an nn.Module class but a function that needs a, which advprune "
        "cannot give",
    ),
    # 4: one normalisation rule, a flag for it, checked before any work
    Case(
        "normalize-not-a-value",
        train_args("--normalize", "0.5"),
        "--normalize '0.5' is not dataset, none or MEAN,STD; pass e.g. --normalize 0.5,0.25",
    ),
    Case(
        "normalize-a-bare-benchmark-network",
        train_args("--model", "resnet18", "--normalize", "dataset"),
        "model resnet18 takes raw [0, 1] images, as the adversarial-pruning benchmark feeds them, "
        "and has no normalisation layer; leave --normalize unset or pass none",
    ),
    Case(
        "output-index-on-a-zoo-network",
        train_args("--output-index", "0"),
        "--output-index is for a network of your own whose forward returns a tuple; "
        "lenet300-100 returns its logits: drop --output-index",
    ),
    # 11: --from a folder that is not a run, a run still training, a run that stopped
    Case(
        "from-a-folder-that-is-not-a-run",
        [*MAGNITUDE, "--from", "notes", "--run-dir", "run"],
        "--from notes is not a run directory (no model.safetensors, no checkpoint); pass the "
        "--run-dir of a finished `advprune train`",
        setup=notes,
    ),
    Case(
        "from-a-run-still-training",
        [*MAGNITUDE, "--from", "dense", "--run-dir", "run"],
        f"--from dense is still being written by process {os.getpid()} on ",
        setup=copied("dense", without_model=True),
    ),
    Case(
        "from-a-run-that-stopped",
        [*MAGNITUDE, "--from", "dense", "--run-dir", "run"],
        "--from dense has no model.safetensors: its training stopped before the end; finish it "
        "with `advprune train --resume --run-dir dense`",
        setup=copied("dense", without_model=True),
        then=[["train", "--resume", "--run-dir", "dense"]],
    ),
    # 14: --download with no network
    Case(
        "download-without-network",
        train_args("--dataset", "mnist", "--download", "--data-dir", "data"),
        "cannot download http",
        env=NO_NETWORK,
    ),
    Case(
        "download-without-network-into-the-default-cache",
        train_args("--dataset", "mnist", "--download"),
        "cannot download http",
        env={**NO_NETWORK, "HOME": "home"},  # the default cache is ~/.cache/advprune/datasets
    ),
    # 4 and "also seen": a network of one's own trains on [0, 1] pixels unless told otherwise;
    # each test figure of the epoch line says on how many images it is measured
    Case(
        "own-network-default-normalization",
        train_args("--model", "mynets:MyCNN", "--allow-chance"),
        " (on 64)",
        code=0,
        setup=modules(),
        env=ON_PATH,
        written=("run/*",),
    ),
    Case(
        "own-network-dataset-normalization",
        train_args("--model", "mynets:MyCNN", "--normalize", "dataset", "--allow-chance"),
        "trained model written to run/model.safetensors",
        code=0,
        setup=modules(),
        env=ON_PATH,
        written=("run/*",),
    ),
    Case(
        "own-network-given-normalization",
        train_args("--model", "mynets:MyCNN", "--normalize", "0.5,0.25", "--allow-chance"),
        "trained model written to run/model.safetensors",
        code=0,
        setup=modules(),
        env=ON_PATH,
        written=("run/*",),
    ),
    # "also seen": eval's first line says the security curve runs, and how to skip it
    Case(
        "eval-says-the-security-curve-runs",
        ["eval", "dense", *EVAL, "--sanity-examples", "16"],
        "; then the security curve (gradient-masking check) on 16 examples, often the longest "
        "part: --sanity-examples 0 skips it",
        code=0,
        setup=copied("dense"),
        written=("dense/*",),
    ),
]
REFUSED = [case for case in CASES if case.code == 2]
ACCEPTED = [case for case in CASES if case.code == 0]
CORRECTED = [case for case in CASES if case.then]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, dense_run) -> Runs:
    root = tmp_path_factory.mktemp("sources")
    (root / MODULES).mkdir()
    (root / MODULES / "mynets.py").write_text(MY_NETS)
    sys.path.insert(0, str(root / MODULES))
    try:
        custom = train_tiny(root / "custom", model="mynets:MyCNN", allow_chance=True)
    finally:
        sys.path.remove(str(root / MODULES))
        sys.modules.pop("mynets", None)
    chance = train_tiny(root / "chance", objective="standard", lr=1e-9, allow_chance=True)
    return Runs(root, dense_run, custom, chance)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, runs) -> dict[str, Outcome]:
    """Every case's command (the "still training" run locked by this process, as a live
    training holds it), then the commands of its `then`, stage by stage."""
    folders = {case.id: tmp_path_factory.mktemp(case.id) for case in CASES}
    logs = tmp_path_factory.mktemp("logs")
    for case in CASES:
        if case.setup is not None:
            case.setup(folders[case.id], runs)
    commands = [Command(case.id, folders[case.id], case.args, case.env) for case in CASES]
    with RunDir(folders["from-a-run-still-training"] / "dense").locked():
        outcomes = run_commands(commands, logs)
    for stage in range(max(len(case.then) for case in CASES)):
        later = [
            Command(f"{case.id}.then{stage}", folders[case.id], case.then[stage], case.env)
            for case in CORRECTED
            if len(case.then) > stage
        ]
        outcomes |= run_commands(later, logs)
    return outcomes


@pytest.mark.parametrize("case", REFUSED, ids=[case.id for case in REFUSED])
def test_bad_input_is_one_line_before_any_work_and_leaves_the_folder_as_it_was(case, outcomes):
    outcome = outcomes[case.id]
    assert_one_line_error(outcome, case.message)
    if case.id == "from-a-run-still-training":  # its lock is the live training's
        assert outcome.changed() <= {f"dense/{LOCK_NAME}"}
        return
    assert_left_as_found(outcome)


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.id for case in ACCEPTED])
def test_right_input_succeeds_and_writes_only_its_own_files(case, outcomes):
    outcome = outcomes[case.id]
    assert outcome.returncode == 0, outcome.stderr
    assert case.message in outcome.stdout, outcome.stdout
    files = {name for name in outcome.changed() if not name.endswith("/")}
    assert all(any(fnmatch.fnmatch(name, p) for p in case.written) for name in files), files


@pytest.mark.parametrize("case", CORRECTED, ids=[case.id for case in CORRECTED])
def test_the_fix_the_message_names_then_works(case, outcomes):
    for stage in range(len(case.then)):
        outcome = outcomes[f"{case.id}.then{stage}"]
        assert outcome.returncode == 0, outcome.stderr


def test_output_index_is_recorded_and_rebuilt_by_eval(outcomes):
    folder = outcomes["train-forward-returns-a-tuple"].folder
    assert TrainConfig.load(folder / "run/config.yaml").output_index == 0
    sys.path.insert(0, str(folder / MODULES))
    try:
        model, metadata = load_model(folder / "run/model.safetensors")
    finally:
        sys.path.remove(str(folder / MODULES))
        sys.modules.pop("mynets", None)
    assert metadata["architecture"]["output_index"] == 0
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert "clean" in outcomes["train-forward-returns-a-tuple.then1"].stdout


def test_one_normalization_rule_is_recorded_in_the_run(outcomes):
    """Own network: none unless asked; `dataset` puts Fashion-MNIST's statistics in front;
    MEAN,STD the values given. config.yaml says which; the model file carries the values."""
    fashion = get_spec("fashion-mnist")
    expected = {
        "own-network-default-normalization": ("none", 0.0, 1.0),
        "own-network-dataset-normalization": ("dataset", fashion.mean[0], fashion.std[0]),
        "own-network-given-normalization": ("0.5,0.25", 0.5, 0.25),
    }
    for case, (normalize, mean, std) in expected.items():
        run = outcomes[case].folder / "run"
        assert TrainConfig.load(run / "config.yaml").normalize == normalize
        tensors, metadata = load_tensors(run / "model.safetensors")
        assert metadata["architecture"]["mean"] == pytest.approx([mean])
        assert tensors["normalize.mean"].flatten().tolist() == pytest.approx([mean])
        assert tensors["normalize.std"].flatten().tolist() == pytest.approx([std])


def test_the_epoch_line_says_on_how_many_test_images(outcomes):
    stdout = outcomes["own-network-default-normalization"].stdout
    assert re.search(r"test_clean \d\.\d{4} \(on 64\)", stdout), stdout


def test_eval_says_nothing_of_a_curve_it_skips(outcomes):
    first = outcomes["train-forward-returns-a-tuple.then1"].stdout.splitlines()[0]
    assert first.startswith("evaluating run") and "security curve" not in first


def test_the_help_states_the_normalization_rule(capsys):
    from advprune.cli import main

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--normalize NORMALIZE input normalisation in front of the network: dataset" in text
    assert "none for your own network (--model pkg:Class, the Python API)" in text
    assert "--output-index OUTPUT_INDEX" in text


def test_a_chance_stop_inside_prune_names_prunes_flag(runs, tmp_path):
    """Row 12: the hint names --finetune-lr (prune has no --lr); the run started, so it is kept
    for --resume, and the message says so."""
    shutil.copytree(runs.chance, tmp_path / "chance")
    args = [*MAGNITUDE, "--from", "chance", "--run-dir", "run", "--sparsity", "0.5"]
    args += ["--finetune-lr", "1e-9", "--no-allow-chance", "--limit-train", "128"]
    (tmp_path / "logs").mkdir()
    outcome = run_commands([Command("chance", tmp_path, args)], tmp_path / "logs")["chance"]
    assert_one_line_error(outcome, "the first epoch ended at chance")
    assert "try a lower --finetune-lr" in outcome.stderr
    assert "smaller --finetune-eps" in outcome.stderr and " --lr" not in outcome.stderr
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()


# ------------------------------------------------------------------------------ Python API


class MyCNN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten()
        )
        self.classifier = nn.Linear(8 * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TupleNet(MyCNN):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(x)
        return self.classifier(features), features


EPS = 0.1
QUICK = {"epochs": 1, "batch_size": 32, "attack_steps": 1, "allow_chance": True}


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(64, 1, 28, 28, generator=generator), torch.arange(64) % 10


def with_nan(images: torch.Tensor, index: int = 7) -> torch.Tensor:
    images = images.clone()
    images[index, 0, 3, 3] = float("nan")
    return images


def negative_label(labels: torch.Tensor, index: int = 5) -> torch.Tensor:
    labels = labels.clone()
    labels[index] = -1
    return labels


# (network, images → images, labels → labels, exception type, message)
API_CASES = {
    "forward-returns-a-tuple": (
        TupleNet,
        None,
        None,
        ConfigError,
        "TupleNet.forward returns a tuple; return the logits (or pass output_index=0",
    ),
    "three-channel-network-on-one-channel-data": (
        lambda: MyCNN(in_channels=3),
        None,
        None,
        ConfigError,
        "MyCNN's first convolution takes 3 channels but the images have 1; build it with "
        "in_channels=1",
    ),
    "five-outputs-for-ten-classes": (
        lambda: MyCNN(num_classes=5),
        None,
        None,
        ConfigError,
        "MyCNN gives 5 outputs for 10 classes; build its last layer with 10 outputs",
    ),
    "negative-label": (
        MyCNN,
        None,
        negative_label,
        DataError,
        "labels must be class indices 0 to 9; found -1 (first at index 5 of the training set)",
    ),
    "meta-device": (
        lambda: MyCNN().to("meta"),
        None,
        None,
        ConfigError,
        "MyCNN's weights are on the meta device (shapes without values); build it on the CPU",
    ),
    "float64": (
        lambda: MyCNN().double(),
        None,
        None,
        ConfigError,
        "MyCNN is torch.float64; call model.float()",
    ),
    "nan-in-the-images": (
        MyCNN,
        with_nan,
        None,
        DataError,
        "input images contain NaN (first at index 7 of the training set); drop or repair",
    ),
    "channels-last-images": (
        MyCNN,
        lambda images: images.permute(0, 2, 3, 1),
        None,
        DataError,
        "look channels-last (N, H, W, C) = (64, 28, 28, 1); permute to (N, C, H, W)",
    ),
}


@pytest.mark.parametrize("function", ["adversarial_train", "prune"])
@pytest.mark.parametrize("case", list(API_CASES), ids=list(API_CASES))
def test_the_api_runs_the_same_check_before_any_work(case, function, data, tmp_path):
    network, images, labels, error, message = API_CASES[case]
    x = images(data[0]) if images else data[0]
    y = labels(data[1]) if labels else data[1]
    run_dir = tmp_path / "runs" / "run"
    options = {"eps": EPS, "run_dir": run_dir, **QUICK}
    if function == "prune":
        options = {**options, "method": "magnitude", "sparsity": 0.5, "finetune_epochs": 1}
        options.pop("epochs")
    with pytest.raises(error) as raised:
        getattr(advprune, function)(network(), (x, y), **options)
    assert message in str(raised.value)
    assert isinstance(raised.value, AdvpruneError) and "\n" not in str(raised.value)
    assert not (tmp_path / "runs").exists()  # nothing written, no empty folder


@pytest.mark.parametrize("case", [c for c in API_CASES if c != "negative-label"])
def test_evaluate_runs_the_same_check(case, data):
    network, images, _, error, message = API_CASES[case]
    x = images(data[0]) if images else data[0]
    with pytest.raises(error) as raised:
        advprune.evaluate(network(), (x, data[1]), eps=EPS, pgd_steps=1)
    assert message.replace(" of the training set", "") in str(raised.value)


def test_the_api_takes_output_index_as_the_cli_does(data, tmp_path):
    robust = advprune.adversarial_train(
        TupleNet(), data, eps=EPS, output_index=0, run_dir=tmp_path / "run", **QUICK
    )
    assert type(robust) is TupleNet  # the user's own class, returning its tuple
    assert TrainConfig.load(tmp_path / "run/config.yaml").output_index == 0
    results = advprune.evaluate(robust, data, eps=EPS, pgd_steps=1, output_index=0)
    assert set(results["accuracy"]) == {"clean", "pgd", "worst_case"}


def test_the_api_follows_the_cli_normalization_rule(data, tmp_path):
    """Unset, a network of one's own sees [0, 1] pixels in both (config.yaml says none);
    `normalize="dataset"` uses the training images' statistics and returns them with the
    network, since it was trained behind them."""
    advprune.adversarial_train(MyCNN(), data, eps=EPS, run_dir=tmp_path / "plain", **QUICK)
    assert TrainConfig.load(tmp_path / "plain/config.yaml").normalize == "none"
    robust = advprune.adversarial_train(MyCNN(), data, eps=EPS, normalize="dataset", **QUICK)
    assert type(robust.body) is MyCNN
    assert robust.normalize.mean.item() == pytest.approx(data[0].mean().item(), abs=1e-5)
    assert robust.normalize.std.item() == pytest.approx(data[0].std().item(), abs=1e-4)


def test_unknown_api_settings_get_a_did_you_mean(data):
    """Row 13: as the CLI does, for every function."""
    calls = {
        "unknown setting 'finetune_epoch' in prune arguments; did you mean finetune_epochs?": (
            lambda: advprune.prune(MyCNN(), data, method="magnitude", eps=EPS, finetune_epoch=1)
        ),
        "unknown setting 'epoch' in adversarial_train arguments; did you mean epochs?": (
            lambda: advprune.adversarial_train(MyCNN(), data, eps=EPS, epoch=1)
        ),
        "unknown setting 'pgd_step' in evaluate arguments; did you mean pgd_steps?": (
            lambda: advprune.evaluate(MyCNN(), data, eps=EPS, pgd_step=1)
        ),
    }
    for message, call in calls.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            call()


def test_a_string_of_attacks_is_a_comma_list(data):
    results = advprune.evaluate(MyCNN(), data, eps=EPS, attacks="clean,pgd", pgd_steps=1)
    assert set(results["accuracy"]) == {"clean", "pgd", "worst_case"}
    with pytest.raises(ConfigError, match=r"unknown attack 'pgdd'; choose from clean"):
        advprune.evaluate(MyCNN(), data, eps=EPS, attacks="clean,pgdd")


def test_the_progress_bar_shows_the_epochs_figures_so_far(tmp_path, capsys):
    """Ten steps, fewer than the bar's usual 20 between updates: the bar's last figures are the
    whole epoch's (those of metrics.jsonl), not the first batch's."""
    config = tiny_config(limit_train=640, objective="standard", optimizer="sgd", lr=0.05)
    train(config, tmp_path / "run", progress=True, log=quiet)
    shown = re.findall(r"acc=(\d\.\d{3})", capsys.readouterr().err)
    record = yaml.safe_load((tmp_path / "run/metrics.jsonl").read_text().splitlines()[-1])
    assert shown and shown[-1] == f"{record['train_accuracy']:.3f}"
    assert len(set(shown)) > 1
