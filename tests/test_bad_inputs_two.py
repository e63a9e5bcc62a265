"""Bad input, round two (issue 16): what a new user gets wrong with train, prune, recipes and
their own models, each command a real `python -m advprune` process (bad_input_harness.py).

A refused command is one line naming the problem and the fix, exit 2, and leaves its folder as
it found it: no file, no empty folder, no stray prune.yaml; so the corrected command that some
cases run next (`then`) starts in the same folder. A command that is right succeeds and writes
only what its run owns; a finished run asked again is left byte for byte as it was.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from advprune.core.run_dir import LOCK_NAME, RunDir
from advprune.core.tensor_files import load_tensors
from advprune.masks import select
from advprune.methods.hydra import hydra_masks, scaled_scores
from advprune.methods.mad import compute_saliency, mad_masks
from advprune.methods.magnitude import magnitude_scores
from advprune.models.serialization import load_model
from advprune.training import TrainConfig, train
from bad_input_harness import (
    SRC,
    TRAIN,
    Command,
    Outcome,
    assert_left_as_found,
    assert_one_line_error,
    run_commands,
)
from conftest import TINY_TRAINING, prune_tiny, quiet, train_tiny

# A network outside the zoo, as a user writes one (row 12).
MY_NETS = """
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
"""

# A CNN whose classifier weights are all smaller than its convs' (row 4): a global ranking of |w|
# removes the whole classifier before any conv weight.
SMALL_HEAD = """
import torch
from torch import nn


class SmallHeadCNN(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.classifier = nn.Linear(16 * 4 * 4, num_classes)
        with torch.no_grad():
            self.classifier.weight.mul_(1e-3)

    def forward(self, x):
        return self.classifier(self.features(x))
"""

MODULES = "modules"  # the folder of the user's own network modules, in a case's folder
ON_PATH = {"PYTHONPATH": MODULES}
OWN_CACHE = {"XDG_CACHE_HOME": "xdg"}  # MAD's default cache, inside the case's folder
# MAD as cheap as it gets: one mask step on a quarter of 128 images, one epoch of fine-tuning.
MAD = ["prune", "--method", "mad", "--from", "dense", "--sparsity", "0.9", "--mask-steps", "1"]
MAD += ["--saliency-fraction", "0.25", "--limit-train", "128", "--finetune-epochs", "1"]
MAGNITUDE = ["prune", "--method", "magnitude", "--finetune-epochs", "1"]
HYDRA = ["prune", "--method", "hydra", "--from", "dense", "--score-epochs", "1"]
HYDRA += ["--finetune-epochs", "1"]
ANPVS = ["prune", "--method", "anpvs", "--finetune-epochs", "1", "--limit-train", "64"]
EVAL = ["--attacks", "clean,pgd", "--pgd-steps", "2", "--limit-test", "64"]
EVAL += ["--latency-repeats", "0", "--sanity-examples", "0", "--indicator-examples", "0"]


def train_args(*extra: str, run_dir: str = "run") -> list[str]:
    """The harness's tiny training with `extra` flags, into `run_dir`."""
    return [*TRAIN[:-1], run_dir, *extra]


@dataclass
class Runs:
    """Finished runs, trained once for the module, that cases copy into their folders."""

    root: Path
    dense: Path  # the tiny PGD-AT run (conftest)
    mad90: Path  # MAD at 90 % from it
    anpvs: Path  # ANP-VS from it: a gated run
    small_head: Path  # SmallHeadCNN, trained
    custom: Path  # MyCNN, trained

    @property
    def modules(self) -> Path:
        return self.root / MODULES


Setup = Callable[[Path, Runs], None]


@dataclass
class Case:
    """`args` run in the case's folder after `setup(folder, runs)`."""

    id: str
    args: list[str]
    message: str  # in the one stderr line of a refused command (code 2), else in stdout
    code: int = 2
    setup: Setup | None = None
    written: tuple[str, ...] = ()  # globs of the files a command that succeeds may write
    env: dict[str, str] = field(default_factory=dict)
    without_root_override: bool = False  # read-only folders are read-only even to root
    then: list[list[str]] = field(default_factory=list)  # next commands; each must succeed


# ------------------------------------------------------------------------------------- set-ups


def copied(*names: str) -> Setup:
    """The module's runs (and "modules", the user's network modules) copied into the folder."""

    def setup(folder: Path, runs: Runs) -> None:
        for name in names:
            source = runs.modules if name == MODULES else getattr(runs, name.replace("-", "_"))
            shutil.copytree(source, folder / name)

    return setup


def all_of(*setups: Setup) -> Setup:
    def setup(folder: Path, runs: Runs) -> None:
        for each in setups:
            each(folder, runs)

    return setup


def read_only(name: str, make: bool = False) -> Setup:
    """Folder `name` (made empty if `make`) and everything in it read-only."""

    def setup(folder: Path, runs: Runs) -> None:
        path = folder / name
        if make:
            path.mkdir()
        for item in sorted(path.rglob("*"), reverse=True):
            item.chmod(stat.S_IMODE(item.stat().st_mode) & ~0o222)
        path.chmod(0o555)

    return setup


def a_file(name: str) -> Setup:
    def setup(folder: Path, runs: Runs) -> None:
        (folder / name).write_text("my notes")

    return setup


def recipe(contents: dict) -> Setup:
    def setup(folder: Path, runs: Runs) -> None:
        (folder / "my.yaml").write_text(yaml.safe_dump(contents))

    return setup


def a_pruning_run(folder: Path, runs: Runs) -> None:
    """`run`: `advprune prune --method magnitude --from dense --finetune-epochs 1`, finished."""
    copied("dense")(folder, runs)
    prune_tiny(folder / "dense", folder / "run", "magnitude", finetune_epochs=1)
    shutil.rmtree(folder / "cache", ignore_errors=True)


# The harness's tiny training, as a recipe of one's own writes it, at ε = 0.05.
MY_TRAINING = {"model": "lenet300-100", "epochs": 1, "limit_train": 64, "limit_test": 64}
MY_TRAINING |= {"batch_size": 64, "attack_steps": 1, "monitor_examples": 0, "eps": 0.05}
MY_RECIPE = {"title": "mine", "train": {**MY_TRAINING, "allow_chance": True}}

# --------------------------------------------------------------------------------- the cases

CASES = [
    # 1: ε in pixel units, and 8/255 as a value
    Case(
        "eps-8-meant-8-over-255",
        train_args("--eps", "8"),
        "ε is in [0, 1] pixels; for 8/255 pass 0.0314 or --eps 8/255",
    ),
    Case(
        "eps-written-8-over-255",
        train_args("--eps", "8/255", "--allow-chance"),
        "trained model written to run/model.safetensors",
        code=0,
        written=("run/*",),
    ),
    # 3, 6: a pruned --from, then the dense one in the same --run-dir
    Case(
        "from-a-pruned-run",
        [*MAGNITUDE, "--from", "mad90", "--run-dir", "run"],
        "--from mad90 is already pruned (mad [saliency_fraction=0.25, mask_steps=1]); prune the "
        "dense run it came from",
        setup=copied("dense", "mad90"),
        then=[[*MAGNITUDE, "--from", "dense", "--run-dir", "run", "--allow-chance"]],
    ),
    # 4, 6: a layer left with no weight; the layer-wise scheme in the same --run-dir
    Case(
        "global-magnitude-empties-the-classifier",
        [*MAGNITUDE, "--from", "small-head", "--sparsity", "0.9", "--run-dir", "run"],
        "the masks remove all 2560 weights of layer 'body.classifier', which disconnects the "
        "network; prune with --scheme layerwise",
        setup=copied("small-head", MODULES),
        env=ON_PATH,
        then=[[*MAGNITUDE, "--from", "small-head", "--scheme", "layerwise", "--run-dir", "run"]],
    ),
    # 5: a gated --from
    Case(
        "from-an-anpvs-run",
        [*MAGNITUDE, "--from", "anpvs", "--run-dir", "run"],
        "--from anpvs is a gated ANP-VS run; prune the dense run it started from",
        setup=copied("dense", "anpvs"),
    ),
    # 6: starts that fail after prune.yaml, the scores/ phase or the folders were made
    Case(
        "fine-tuning-that-cannot-start",
        [*MAGNITUDE, "--from", "dense", "--run-dir", "run", "--finetune-batch-size", "100000"],
        "512 training examples give no full batch of 100000",
        setup=copied("dense"),
        then=[[*MAGNITUDE, "--from", "dense", "--run-dir", "run", "--allow-chance"]],
    ),
    Case(
        "hydra-score-phase-that-cannot-start",
        [*HYDRA, "--run-dir", "run", "--score-batch-size", "100000"],
        "512 training examples give no full batch of 100000",
        setup=copied("dense"),
    ),
    Case(
        "training-that-cannot-start-in-new-folders",
        train_args("--batch-size", "100000", run_dir="runs/new/run"),
        "give no full batch of 100000; lower --batch-size",
        then=[train_args("--allow-chance", run_dir="runs/new/run")],
    ),
    # 7: read-only folders, checked before any work; the saliency never goes into --from
    Case(
        "mad-from-a-read-only-run",
        [*MAD, "--run-dir", "run", "--allow-chance"],
        "pruned model written to run/model.safetensors",
        code=0,
        setup=all_of(copied("dense"), read_only("dense")),
        written=("run/*", "xdg/advprune/mad-saliency-*.safetensors"),
        env=OWN_CACHE,
        without_root_override=True,
    ),
    Case(
        "prune-into-a-read-only-folder",
        [*MAD, "--run-dir", "shared/run"],
        "cannot write into shared; choose a writable --run-dir",
        setup=all_of(copied("dense"), read_only("shared", make=True)),
        env=OWN_CACHE,  # no saliency file written there: no work was done
        without_root_override=True,
    ),
    Case(
        "train-into-a-read-only-folder",
        train_args(run_dir="shared/run"),
        "cannot create run directory shared/run: Permission denied; choose a writable --run-dir",
        setup=read_only("shared", make=True),
        without_root_override=True,
    ),
    Case(
        "prune-below-a-file",
        [*MAD, "--run-dir", "notes/run"],
        "cannot create notes/run: notes is a file; choose a writable --run-dir",
        setup=all_of(copied("dense"), a_file("notes")),
        env=OWN_CACHE,
    ),
    Case(
        "read-only-cache-dir",
        [*MAD, "--run-dir", "run", "--cache-dir", "shared/cache", "--allow-chance"],
        "cannot write into shared: passes shared between runs are not cached",
        code=0,
        setup=all_of(copied("dense"), read_only("shared", make=True)),
        written=("run/*",),
        without_root_override=True,
    ),
    # 9: a finished run asked again
    Case(
        "resume-a-finished-run",
        ["train", "--resume", "--run-dir", "dense"],
        "the run in dense is finished (1 epoch); nothing to resume",
        code=0,
        setup=copied("dense"),
    ),
    Case(
        "prune-a-finished-run-again",
        [*MAGNITUDE, "--from", "dense", "--run-dir", "run"],
        "the pruning run in run is finished; nothing to do",
        code=0,
        setup=a_pruning_run,
    ),
    Case(
        "prune-a-finished-run-with-other-settings",
        [*MAGNITUDE, "--from", "dense", "--run-dir", "run", "--sparsity", "0.5"],
        "run holds a pruning run with other settings (sparsity); resume it with the same flags "
        "or choose another --run-dir",
        setup=a_pruning_run,
    ),
    Case(
        "prune-into-a-finished-training-run",
        [*MAGNITUDE, "--from", "dense", "--run-dir", "dense"],
        "dense already holds a finished run that is not a pruning run; choose another --run-dir",
        setup=copied("dense"),
    ),
    # 11: a recipe of one's own
    Case(
        "train-recipe-file",
        ["train", "--recipe", "./my.yaml", "--run-dir", "run"],
        "trained model written to run/model.safetensors",
        code=0,
        setup=recipe(MY_RECIPE),
        written=("run/*",),
    ),
    Case(
        "train-recipe-file-unknown-key",
        ["train", "--recipe", "./my.yaml", "--run-dir", "run"],
        "unknown setting 'epoch' in recipe ./my.yaml: train; did you mean epochs?",
        setup=recipe({"train": {"epoch": 1}}),
    ),
    Case(
        "train-recipe-file-without-sections",
        ["train", "--recipe", "./my.yaml", "--run-dir", "run"],
        "recipe ./my.yaml: unknown key 'epochs'; a recipe's keys are title, anchors, train",
        setup=recipe({"epochs": 1, "eps": 0.1}),
    ),
    Case(
        "reproduce-recipe-file",
        ["reproduce", "./my.yaml"],
        "[reproduce] mine: 1 step(s) in runs/reproduce/my",
        code=0,
        setup=recipe({**MY_RECIPE, "steps": [{"name": "dense", "train": {}, "evaluate": False}]}),
        written=("runs/reproduce/my/dense/*",),
    ),
    Case(
        "reproduce-recipe-file-unknown-key",
        ["reproduce", "./my.yaml"],
        "recipe ./my.yaml, step dense: unknown setting(s) epoch; did you mean epochs?",
        setup=recipe({"steps": [{"name": "dense", "train": {"epoch": 1}}]}),
    ),
    Case(
        "reproduce-recipe-file-unknown-section",
        ["reproduce", "./my.yaml"],
        "recipe ./my.yaml: unknown key 'trian'; did you mean train?",
        setup=recipe({"trian": {"epochs": 1}, "steps": [{"name": "dense", "train": {}}]}),
    ),
    # 12: a network of one's own, by import path
    Case(
        "custom-model-end-to-end",
        # enough training to leave chance: eval refuses to vouch for a model at chance
        train_args("--model", "mynets:MyCNN", "--limit-train", "1024", "--epochs", "2"),
        "trained model written to run/model.safetensors",
        code=0,
        setup=copied(MODULES),
        written=("run/*",),
        env=ON_PATH,
        then=[
            ["eval", "run", *EVAL],
            [*ANPVS, "--from", "run", "--run-dir", "pruned", "--allow-chance"],
            ["eval", "pruned/exported", *EVAL],
        ],
    ),
    Case(
        "custom-model-no-longer-importable",
        ["eval", "custom", *EVAL],
        "cannot import module 'mynets' for model 'mynets:MyCNN'; it must be importable: on "
        "PYTHONPATH or installed",
        setup=copied("custom"),
    ),
    Case(
        "prune-custom-model-no-longer-importable",
        [*MAGNITUDE, "--from", "custom", "--run-dir", "run"],
        "cannot import module 'mynets' for model 'mynets:MyCNN'; it must be importable",
        setup=copied("custom"),
    ),
    # argparse abbreviations are off; the flag meant is named
    Case(
        "abbreviated-flag",
        [arg if arg != "--epochs" else "--epoch" for arg in TRAIN],
        "unrecognized arguments: --epoch 1; did you mean --epochs?",
    ),
    Case(
        "abbreviated-method-flag",
        [*MAD[:-2], "--run-dir", "run", "--finetune-epoch", "1"],
        "unrecognized arguments: --finetune-epoch 1; did you mean --finetune-epochs?",
        setup=copied("dense"),
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
    (root / MODULES / "smallhead.py").write_text(SMALL_HEAD)
    sys.path.insert(0, str(root / MODULES))
    try:
        small_head = root / "small-head"
        train_tiny(small_head, model="smallhead:SmallHeadCNN", objective="standard", lr=0.01)
        custom = train_tiny(root / "custom", model="mynets:MyCNN", allow_chance=True)
    finally:
        sys.path.remove(str(root / MODULES))
    tiny_mad = dict(mask_steps=1, saliency_fraction=0.25, finetune_epochs=1, limit_train=128)
    prune_tiny(dense_run, root / "mad90", "mad", sparsity=0.9, **tiny_mad)
    prune_tiny(dense_run, root / "anpvs", "anpvs", finetune_epochs=1, limit_train=128)
    return Runs(root, dense_run, root / "mad90", root / "anpvs", small_head, custom)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, runs) -> dict[str, Outcome]:
    """Every case's command, then the commands of its `then`, stage by stage."""
    folders = {case.id: tmp_path_factory.mktemp(case.id) for case in CASES}
    logs = tmp_path_factory.mktemp("logs")
    for case in CASES:
        if case.setup is not None:
            case.setup(folders[case.id], runs)
    commands = [
        Command(case.id, folders[case.id], case.args, case.env, None, case.without_root_override)
        for case in CASES
    ]
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
def test_bad_input_is_one_line_and_leaves_the_folder_as_it_was(case, outcomes):
    outcome = outcomes[case.id]
    assert_one_line_error(outcome, case.message)
    assert_left_as_found(outcome)


@pytest.mark.parametrize("case", ACCEPTED, ids=[case.id for case in ACCEPTED])
def test_right_input_succeeds_and_writes_only_its_own_files(case, outcomes):
    outcome = outcomes[case.id]
    assert outcome.returncode == 0, outcome.stderr
    assert "Traceback" not in outcome.stderr
    assert case.message in outcome.stdout, outcome.stdout
    changed = outcome.changed()
    files = {name for name in changed if not name.endswith("/")}
    assert all(any(fnmatch.fnmatch(name, p) for p in case.written) for name in files), files
    assert all(any(f.startswith(name) for f in files) for name in changed - files)
    assert not set(outcome.before) - set(outcome.after)  # nothing deleted
    assert not any(name.endswith(".tmp") or name.endswith(LOCK_NAME) for name in changed)


@pytest.mark.parametrize("case", CORRECTED, ids=[case.id for case in CORRECTED])
def test_the_corrected_command_then_succeeds_in_the_same_folder(case, outcomes):
    for stage in range(len(case.then)):
        outcome = outcomes[f"{case.id}.then{stage}"]
        assert outcome.returncode == 0, outcome.stderr


def test_eps_8_over_255_trains_at_0_0314_and_is_recorded_so(outcomes):
    run = outcomes["eps-written-8-over-255"].folder / "run"
    eps = 8 / 255
    assert TrainConfig.load(run / "config.yaml").eps == eps
    _, metadata = load_model(run / "model.safetensors")
    assert metadata["eps"] == eps and metadata["config"]["eps"] == eps
    assert "ε = 8 is outside [0, 1]" in outcomes["eps-8-meant-8-over-255"].stderr


def test_a_read_only_source_stays_as_it_was_and_the_saliency_goes_to_the_cache(outcomes):
    outcome = outcomes["mad-from-a-read-only-run"]
    cached = [name for name in outcome.changed() if name.startswith("xdg/advprune/mad-")]
    assert len(cached) == 1 and cached[0].endswith(".safetensors")
    assert all(not name.startswith("dense") for name in outcome.changed())
    refused = outcomes["prune-into-a-read-only-folder"]
    assert not (refused.folder / "xdg").exists()  # refused before the saliency pass


def test_finished_runs_asked_again_say_so_and_write_nothing(outcomes):
    again = outcomes["prune-a-finished-run-again"]
    assert "pruned model written" not in again.stdout
    for case in ("resume-a-finished-run", "prune-a-finished-run-again"):
        assert outcomes[case].changed() == set()


def test_a_recipe_file_gives_the_run_its_settings(outcomes):
    config = TrainConfig.load(outcomes["train-recipe-file"].folder / "run" / "config.yaml")
    assert (config.eps, config.limit_train, config.attack_steps) == (0.05, 64, 1)
    step = outcomes["reproduce-recipe-file"].folder / "runs/reproduce/my/dense"
    assert TrainConfig.load(step / "config.yaml").eps == 0.05


def test_a_custom_model_is_recorded_and_rebuilt_by_every_command(outcomes):
    folder = outcomes["custom-model-end-to-end"].folder
    assert TrainConfig.load(folder / "run" / "config.yaml").model == "mynets:MyCNN"
    assert "mynets:MyCNN" in outcomes["custom-model-end-to-end.then0"].stdout
    for results in (folder / "run/results.json", folder / "pruned/exported/results.json"):
        assert set(json.loads(results.read_text())["accuracy"]) == {"clean", "pgd", "worst_case"}
    _, metadata = load_model(folder / "pruned/exported/model.safetensors")
    assert metadata["architecture"]["name"] == "mynets:MyCNN"


def test_only_masks_that_empty_a_layer_are_refused(runs, tmp_path, monkeypatch):
    """Global |w| at 90 % empties SmallHeadCNN's classifier; the layer-wise scheme does not, nor
    HYDRA's layer-wise k or MAD's published scheme (global, the classifier per row) at 99 % on
    LeNet-5-Caffe (kept there: about 100 conv1 weights, 6 entries of [W | b] per classifier row)."""
    from advprune.data import BatchLoader, load_dataset

    monkeypatch.syspath_prepend(str(runs.modules))
    small_head, _ = load_model(runs.small_head / "model.safetensors")
    scores = magnitude_scores(small_head)
    assert select(scores, 0.9, scheme="global").emptied_layers() == {"body.classifier": 2560}
    assert select(scores, 0.9, scheme="layerwise").emptied_layers() == {}

    lenet_run = train_tiny(tmp_path / "lenet", model="lenet5-caffe")
    lenet, _ = load_model(lenet_run / "model.safetensors")
    assert hydra_masks(scaled_scores(lenet), 0.99).emptied_layers() == {}
    data = load_dataset("fashion-mnist", "train", limit=512)
    loader = BatchLoader(data, None, 128, shuffle=True, augment=False, seed=0)
    saliency = compute_saliency(lenet.eval(), loader, eps=0.1, attack_steps=2, progress=False)
    masks = mad_masks(saliency, 0.99)
    kept_per_row = masks["body.9.weight"].sum(1) + masks["body.9.bias"].int()
    assert masks.emptied_layers() == {} and (kept_per_row == 501 - int(0.99 * 501)).all()


def test_a_stale_lock_file_is_harmless_and_a_live_holder_is_the_one_named(runs, tmp_path):
    """A run killed by SIGKILL leaves its lock file (flock itself dies with the process): the
    next run takes it over, and while it runs it is the holder a third command is told about."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = {"pid": gone.pid, "host": socket.gethostname(), "command": "advprune train"}
    folders = {name: tmp_path / name for name in ("resumed", "held")}
    for folder in folders.values():
        shutil.copytree(runs.dense, folder / "run")
        (folder / "run/model.safetensors").unlink()  # stopped after its last checkpoint
        (folder / "run" / LOCK_NAME).write_text(json.dumps(stale))
    resume = ["train", "--resume", "--run-dir", "run"]
    commands = [Command(name, folder, resume) for name, folder in folders.items()]
    (tmp_path / "logs").mkdir()
    with RunDir(folders["held"] / "run").locked():  # as a live run would
        outcomes = run_commands(commands, tmp_path / "logs")
    resumed = outcomes["resumed"]
    assert resumed.returncode == 0, resumed.stderr
    assert (folders["resumed"] / "run/model.safetensors").exists()
    assert not (folders["resumed"] / "run" / LOCK_NAME).exists()
    held = outcomes["held"]
    assert_one_line_error(held, f"run is in use by process {os.getpid()} on {socket.gethostname()}")
    assert f"process {gone.pid} " not in held.stderr
    assert held.changed() == set()


# 128 steps an epoch, a checkpoint every 8 of them: the test waits for the first, so the SIGTERM
# reaches a training that is inside its epoch loop.
STOPPED = {**TINY_TRAINING, "epochs": 2, "batch_size": 32, "optimizer": "sgd", "lr": 0.05}
STOPPED.update(limit_train=4096, limit_test=256, monitor_examples=64, seed=1, checkpoint_every=8)


def checkpoint_position(path: Path) -> tuple[int, int] | None:
    """(epoch, batch) from the checkpoint's header, or None while there is none yet."""
    try:
        _, metadata = load_tensors(path)
    except Exception:  # absent, or being replaced this instant
        return None
    return metadata["epoch"], metadata["batch"]


def cli(run_dir: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "advprune", "--quiet", "train", "--run-dir", str(run_dir), *args]


def test_sigterm_mid_epoch_checkpoints_there_and_resumes_to_the_uninterrupted_run(tmp_path):
    train(TrainConfig(**STOPPED), str(tmp_path / "whole"), progress=False, log=quiet)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    stopped = tmp_path / "stopped"
    flags = [f"--{key.replace('_', '-')}={value}" for key, value in STOPPED.items()]
    process = subprocess.Popen(
        cli(stopped, *flags), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while checkpoint_position(stopped / "checkpoint.safetensors") is None:
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 130, err
    hint = "`advprune train --resume --run-dir DIR` continues the run"
    assert err == f"advprune: interrupted; {hint}\n"
    epoch, batch = checkpoint_position(stopped / "checkpoint.safetensors")
    # Where it stopped: at or after the periodic checkpoint at batch 8 (on a loaded machine the
    # signal can land before the next step); the line below says the stop itself saved it.
    assert epoch == 0 and 8 <= batch < 128
    assert f"stopped at epoch 1 step {batch}; checkpoint saved" in out
    assert not (stopped / LOCK_NAME).exists() and not (stopped / "model.safetensors").exists()

    resumed = subprocess.run(
        cli(stopped, "--resume"), env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"at epoch 1/2, batch {batch}/128" in resumed.stdout
    for name in ("model.safetensors", "checkpoint.safetensors"):
        expected, _ = load_tensors(tmp_path / "whole" / name)
        actual, _ = load_tensors(stopped / name)
        assert expected.keys() == actual.keys()
        assert all(torch.equal(actual[key], tensor) for key, tensor in expected.items()), name
    assert without_seconds(stopped) == without_seconds(tmp_path / "whole")


def without_seconds(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]
