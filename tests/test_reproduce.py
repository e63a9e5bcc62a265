"""`advprune reproduce`: recipes checked up front, run end to end at --scale, and resumed."""

import functools
import json
import math

import numpy as np
import pytest

from advprune.cli import main
from advprune.core.errors import ConfigError, TrainingError
from advprune.evaluation import EvalConfig, results_file
from advprune.methods import get_method, method_names
from advprune.methods.anpvs import ANPVSSettings
from advprune.methods.hydra import HydraSettings
from advprune.recipes import available_recipes, load_recipe
from advprune.reproduction import make_plan, reproduce, runnable_steps
from advprune.reproduction.plan import scale_settings
from advprune.reproduction.runner import with_set_hints
from advprune.training import TrainConfig
from dataset_files import (
    cifar_rows,
    make_tiny_imagenet,
    write_cifar_batch,
    write_idx_split,
    write_svhn_split,
)

STEP_RECIPES = [name for name in available_recipes() if "steps" in load_recipe(name)]
PAPER_RECIPES = [name for name in STEP_RECIPES if name not in ("fashion-mnist-suite", "demo")]
# What the other branches of issue 6 bring; a recipe may need nothing else this build lacks.
COMING = {"method hydra", "method anpvs", "setting transfer_from"}


def quiet(_: str) -> None:
    pass


def recipe_methods(recipe: str) -> list[str]:
    steps = load_recipe(recipe)["steps"]
    return sorted({step["prune"]["method"] for step in steps if "prune" in step})


# ------------------------------------------------------------------------------------- scaling


def test_scale_shrinks_epochs_and_examples_as_documented():
    train = TrainConfig(dataset="cifar10", model="vgg16-bn", epochs=200, monitor_examples=1000)
    scaled = scale_settings(train.validate(), 0.01, "cifar10")
    assert (scaled.epochs, scaled.limit_train, scaled.limit_test) == (2, 500, 100)
    assert scaled.monitor_examples == 10
    tiny = scale_settings(train, 0.001, "cifar10")
    assert (tiny.epochs, tiny.limit_train, tiny.limit_test) == (1, 128, 10)  # one batch at least
    evaluation = scale_settings(EvalConfig(sanity_examples=500), 0.01, "svhn")
    assert evaluation.limit_test == math.ceil(0.01 * 26032) == evaluation.autoattack_limit
    assert evaluation.sanity_examples == 5
    assert scale_settings(train, 1.0, "cifar10") is train


def test_scale_keeps_anpvs_kl_weight_per_example():
    """ANP-VS divides the gates' KL by the training-set size: on a fifth of the data its β is a
    fifth, so β/N is the full run's. HYDRA's TRADES β weighs a per-example term: not scaled."""
    anpvs = ANPVSSettings(beta=15.0)
    assert scale_settings(anpvs, 0.2, "fashion-mnist").beta == pytest.approx(3.0)
    assert scale_settings(anpvs, 0.2, "fashion-mnist", keep={"beta"}).beta == 15.0
    hydra = scale_settings(HydraSettings(), 0.2, "fashion-mnist").to_flat()
    assert (hydra["score_epochs"], hydra["score_beta"], hydra["finetune_beta"]) == (4, 6.0, 6.0)


def test_a_setting_given_with_set_is_not_scaled(tmp_path):
    """`--scale 0.5 --set autoattack_limit=500`: the half-size run still attacks 500 examples;
    the other counts shrink as documented."""
    overrides = {"autoattack_limit": 500, "latency_repeats": 10}
    plan = make_plan("fashion-mnist-suite", tmp_path, scale=0.5, overrides=overrides)
    step = next(step for step in plan.steps if step.name == "magnitude-99")
    assert (step.evaluate.autoattack_limit, step.evaluate.latency_repeats) == (500, 10)
    assert step.evaluate.limit_test == 5000 and step.setting("limit_train") == 30000
    unset = make_plan("fashion-mnist-suite", tmp_path, scale=0.5, only=["magnitude-99"])
    assert unset.steps[-1].evaluate.autoattack_limit == 250


@pytest.mark.parametrize("scale", [0.01, 0.05])
def test_scale_gives_every_phase_of_the_demo_a_full_batch(scale, tmp_path):
    """`--scale` promises at least one batch: a prune step's phase inherits the dense run's batch
    (128), so 1 % of its 6,000 images (60) would give it none."""
    plan = make_plan("demo", tmp_path, scale=scale)
    dense = next(step for step in plan.steps if step.kind == "train").configs[0]
    for step in plan.steps:
        if step.kind == "train":
            phases = [step.configs[0]]
        else:
            prune, settings = step.configs
            phases = [get_method(step.method)(settings).phase(dense, prune)]
        for phase in phases:
            assert phase.limit_train >= phase.batch_size, step.name
        assert step.setting("allow_chance") is True  # a smoke run's chance is its result


def test_the_demo_at_one_percent_runs_its_prune_steps(tmp_path):
    """`reproduce demo --scale 0.01` stopped at its first prune step (60 examples, batch 128)."""
    fast = {"attack_steps": 1, "finetune_attack_steps": 1, "pgd_steps": 2, "indicator_examples": 0}
    plan = reproduce(
        "demo", tmp_path, scale=0.01, overrides=fast, only=["magnitude-90"], progress=False,
        log=quiet,
    )  # fmt: skip
    assert [step.name for step in plan.steps] == ["pgd-at-bn", "magnitude-90"]
    for step in plan.steps:
        assert (step.run_dir / "model.safetensors").is_file()
        assert (step.run_dir / "results.json").is_file()


def test_a_hint_inside_reproduce_names_the_set_key_not_a_flag_it_lacks(tmp_path):
    plan = make_plan("demo", tmp_path, scale=0.01)
    prune = next(step for step in plan.steps if step.name == "magnitude-90")
    error = TrainingError(
        "60 training examples give no full batch of 128; lower --batch-size or raise "
        "--limit-train; --allow-chance trains on; prune with --scheme layerwise or a lower "
        "--sparsity 0.5; pass --data-dir DIR or --resume"
    )
    hinted = with_set_hints(error, prune.configs)
    assert type(hinted) is TrainingError and hinted.exit_code == error.exit_code
    assert str(hinted) == (
        "60 training examples give no full batch of 128; lower --set finetune_batch_size=VALUE "
        "or raise --set limit_train=VALUE; --set allow_chance=true trains on; prune with --set "
        "scheme=layerwise or a lower --set sparsity=0.5; pass --data-dir DIR or --resume"
    )
    train = next(step for step in plan.steps if step.kind == "train")
    assert "--set batch_size=VALUE" in str(with_set_hints(error, train.configs))


@pytest.mark.parametrize("scale", [0, -0.5, 1.5, float("nan")])
def test_scale_outside_0_1_is_refused(scale, tmp_path):
    with pytest.raises(ConfigError, match="--scale"):
        make_plan("fashion-mnist-suite", tmp_path, scale=scale, only=["dense"])


# ------------------------------------------------------------------------------------ planning


@pytest.mark.parametrize("recipe", STEP_RECIPES)
def test_every_recipe_plans_and_lacks_only_what_other_branches_bring(recipe, tmp_path):
    """Every key of every runnable step builds its settings, the paper rows name real steps, and
    a step that cannot run here waits only for HYDRA, ANP-VS or the transfer attack."""
    runnable = runnable_steps(recipe)
    plan = make_plan(recipe, tmp_path, only=runnable, scale=0.01)
    assert [step.name for step in plan.steps] == runnable
    steps = {step["name"]: step for step in load_recipe(recipe)["steps"]}
    if set(runnable) != set(steps):
        with pytest.raises(ConfigError, match="not available in this build") as error:
            make_plan(recipe, tmp_path)
        for part in str(error.value).split(": ", 2)[2].split("; run the others")[0].split("; "):
            assert part.split(" needs ")[1] in COMING, part
    assert plan.paper is None or set(plan.paper["rows"]) <= set(steps)


def fake_recipe(monkeypatch, recipe):
    monkeypatch.setattr("advprune.reproduction.plan.load_recipe", lambda name: recipe)


DENSE = {"name": "dense", "train": {"model": "lenet300-100", "epochs": 1}}


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"steps": [DENSE, {"name": "x", "prune": {"method": "pixie", "from": "dense"}}]},
         "method pixie is not available|needs method pixie"),
        ({"steps": [{"name": "x", "prune": {"method": "mad", "from": "later"}}, DENSE]},
         "'later' is not an earlier step"),
        ({"steps": [DENSE, {"name": "x", "prune": {"from": "dense"}}]}, "prune needs a method"),
        ({"steps": [DENSE, {"name": "dense", "train": {}}]}, "unique"),
        ({"steps": [{"name": "d", "train": {"epoch": 3}}]}, "unknown setting.*epoch"),
        ({"steps": [{"name": "d", "train": {}, "prune": {}}]}, "exactly one of train or prune"),
        ({"steps": [DENSE], "evaluate": {"attacks": "clean,bogus"}}, "bogus"),
        ({"steps": [DENSE], "paper": {"rows": {"nope": {"clean": 1}}}}, "not a step"),
        ({"steps": [DENSE], "paper": {"rows": {"dense": {"speed": 1}}}}, "unknown metric"),
        ({"steps": [DENSE], "paper": {"rows": {"dense": {"memory": 5}}}}, "needs `reference"),
        ({"steps": [DENSE], "prune": {"sparsity_typo": 1}}, "no step has a setting"),
        ({"train": {}}, "has no steps"),
    ],
)  # fmt: skip
def test_bad_recipes_fail_before_any_step_runs(monkeypatch, tmp_path, recipe, message):
    fake_recipe(monkeypatch, recipe)
    with pytest.raises(ConfigError, match=message):
        reproduce("fake", tmp_path, log=quiet)
    assert not any(tmp_path.iterdir())


def test_set_overrides_every_step_that_has_the_key_and_refuses_unknown_keys(tmp_path):
    plan = make_plan(
        "fashion-mnist-suite",
        tmp_path,
        only=["mad-90"],
        overrides={"batch_size": 32, "mask_steps": 3, "pgd_steps": 7},
    )
    dense, mad = plan.steps
    assert dense.setting("batch_size") == 32 and dense.evaluate.batch_size == 32
    assert mad.setting("mask_steps") == 3 and mad.evaluate.pgd_steps == 7
    assert mad.setting("from_run") == str(tmp_path / "dense")
    with pytest.raises(ConfigError, match="no step has a setting bogus"):
        make_plan("fashion-mnist-suite", tmp_path, overrides={"bogus": 1}, only=["dense"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        main(["--debug", "reproduce", "fashion-mnist-suite", "--set", "nonsense"])


# --------------------------------------------------------- the Fashion-MNIST suite, end to end

# Each step a handful of batches: --scale 0.01 (600 training and 100 test images, 1 epoch), with
# single-step attacks in training and 2-step ones in evaluation so the test stays fast.
FAST = {
    "attack_steps": 1,
    "finetune_attack_steps": 1,
    "pgd_steps": 2,
    "cw_steps": 2,
    "mask_steps": 2,
    "autoattack_limit": 2,  # its cost is per iteration, whatever the count: the fewest that test
    "allow_chance": True,  # a handful of batches can leave a 99 % network at chance
}
SUITE_METHODS = [m for m in recipe_methods("fashion-mnist-suite") if m in method_names()]


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory):
    return tmp_path_factory.mktemp("suite")


def suite_steps(method: str) -> list[str]:
    """The method's first row of each structure: its other rows differ only in the sparsity,
    which planning checks (test_fidelity) and every row's run below would only repeat."""
    steps = load_recipe("fashion-mnist-suite")["steps"]
    first: dict[str, str] = {}
    for step in steps:
        prune = step.get("prune", {})
        if prune.get("method") == method:
            first.setdefault(prune.get("structure", "weights"), step["name"])
    return list(first.values())


@pytest.mark.parametrize("method", SUITE_METHODS)
def test_fashion_mnist_suite_runs_each_method_at_scale(suite_root, method):
    plan = reproduce(
        "fashion-mnist-suite",
        suite_root,
        scale=0.01,
        overrides=FAST,
        only=suite_steps(method),
        progress=False,
        log=quiet,
    )
    for step in plan.steps:
        if step.evaluate is None:
            continue
        results = json.loads((step.run_dir / "results.json").read_text())
        assert set(results["accuracy"]) >= {"clean", "fgsm", "pgd", "cw", "autoattack"}
        assert results["examples"].items() >= {
            "clean": 100, "fgsm": 100, "pgd": 100, "cw": 100, "autoattack": 2  # --set: unscaled
        }.items()  # fmt: skip
        target = step.setting("sparsity")
        channels = step.setting("structure") == "channels"
        if channels:  # exported, with a measured speed-up; HARP's target is in FLOPs
            assert results["measured_speedup"]["batch_128"]["median"] > 0
        if method != "anpvs" and target is not None and not (channels and method == "harp"):
            assert abs(results["channel_sparsity" if channels else "sparsity"] - target) < 0.01
    assert (suite_root / "report" / "report.md").is_file()


def test_fashion_mnist_suite_resumes_and_skips_finished_steps(suite_root):
    runnable = suite_steps("magnitude")  # and the dense run they need
    run = lambda: reproduce(  # noqa: E731
        "fashion-mnist-suite", suite_root, scale=0.01, overrides=FAST, only=runnable,
        progress=False, log=messages.append,
    )  # fmt: skip
    messages: list[str] = []
    plan = run()
    evaluated = [step for step in plan.steps if step.evaluate is not None]
    report = (suite_root / "report" / "report.md").read_text()
    assert all(f"| {step.name} |" in report for step in evaluated)
    assert "| base |" not in report  # a start point, not evaluated
    # A run stopped after its last checkpoint: the model is gone, the checkpoint is there.
    stopped = evaluated[-1]
    results = (stopped.run_dir / "results.json").read_text()
    (stopped.run_dir / "model.safetensors").unlink()
    (stopped.run_dir / "results.json").unlink()
    messages.clear()
    run()
    assert sum("finished before" in m for m in messages) == len(plan.steps) - 1
    assert any(f"resuming {stopped.run_dir}" in m for m in messages)
    # Everything but measured time (ANP-VS's exported network) and the evaluation's date in its
    # provenance is the same as before.
    again = json.loads((stopped.run_dir / "results.json").read_text())
    before = json.loads(results)
    timed = ("latency", "measured_speedup", "provenance")
    assert {k: v for k, v in again.items() if k not in timed} == {
        k: v for k, v in before.items() if k not in timed
    }
    # Evaluation settings: one that changes no accuracy keeps the evaluation; another redoes it.
    dense = next(step for step in plan.steps if step.name == "dense").run_dir / "results.json"
    evaluated_dense = json.loads(dense.read_text())
    for overrides, redone in (({"latency_repeats": 3}, False), ({"pgd_steps": 3}, True)):
        messages.clear()
        reproduce(
            "fashion-mnist-suite", suite_root, scale=0.01, overrides={**FAST, **overrides},
            only=["dense"], progress=False, log=messages.append,
        )  # fmt: skip
        assert any("evaluating again" in m for m in messages) == redone
        assert (json.loads(dense.read_text()) == evaluated_dense) != redone
    # Other training settings for a finished step are refused, not mixed in.
    with pytest.raises(ConfigError, match=r"other settings \(attack_steps\)"):
        reproduce(
            "fashion-mnist-suite", suite_root, scale=0.01, overrides={**FAST, "attack_steps": 2},
            only=["dense"], progress=False, log=quiet,
        )  # fmt: skip


# ------------------------------------------------ the paper recipes on synthetic data, at scale


def write_datasets(root):
    """4 training and 2 test images of every dataset, in the real file formats."""
    rng = np.random.default_rng(0)
    for folder, name in (("mnist", "train"), ("mnist", "t10k")):
        images = rng.integers(0, 256, (4 if name == "train" else 2, 28, 28), dtype=np.uint8)
        labels = np.arange(len(images), dtype=np.uint8) % 10
        write_idx_split(root / folder, name, images, labels, gz=True)
    cifar10 = root / "cifar-10-batches-py"
    for i in range(5):
        write_cifar_batch(cifar10 / f"data_batch_{i + 1}", cifar_rows(1, i), [i], b"labels")
    write_cifar_batch(cifar10 / "test_batch", cifar_rows(2, 9), [3, 4], b"labels")
    cifar100 = root / "cifar-100-python"
    write_cifar_batch(cifar100 / "train", cifar_rows(4, 0), [99, 0, 42, 7], b"fine_labels")
    write_cifar_batch(cifar100 / "test", cifar_rows(2, 1), [7, 8], b"fine_labels")
    for split, n in (("train", 4), ("test", 2)):
        images = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        write_svhn_split(root / "svhn", split, images, np.array([[10], [1], [2], [3]][:n]))
    make_tiny_imagenet(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_datasets(root)
    return root


# Two images a batch, one-step attacks, no epoch monitor, gradient-masking check or AutoAttack
# (the Fashion-MNIST suite above runs those; AutoAttack's 100+ iterations per image alone cost
# about 10 s per VGG-16 image on a CPU). WRN-28-10 on 64×64 costs about 9 s per forward-backward
# pass of 2 images here, so the Tiny-ImageNet recipe runs with LeNet-5-Caffe in its place: its
# files, 200 classes, fast AT and MAD with fast AT are exercised, WRN-28-10 only by planning.
PAPER_FAST = {
    "batch_size": 2, "attack_steps": 1, "finetune_attack_steps": 1, "pgd_steps": 1,
    "cw_steps": 1, "mask_steps": 1, "validation_steps": 1,
    "monitor_examples": 0, "sanity_examples": 0, "attacks": "clean,fgsm,pgd,cw",
    "limit_train": 16,  # --set is not scaled: 8 steps of a VGG-16 per epoch, not 250
    "allow_chance": True,  # synthetic images: chance is all there is to learn
}  # fmt: skip


def paper_overrides(recipe: str) -> dict:
    return {**PAPER_FAST, "model": "lenet5-caffe"} if recipe == "mad-tiny-imagenet" else PAPER_FAST


@functools.cache
def representative_steps() -> dict[str, list[str]]:
    """Runnable steps that together cover every dataset format, model and method of the paper
    recipes (the other steps differ only in numbers that planning checks): a train step when its
    dataset or model is new, a prune step when its method with its fine-tuning objective is new."""
    seen: set = set()
    chosen = {}
    for recipe in PAPER_RECIPES:
        plan = make_plan(
            recipe, "unused", only=runnable_steps(recipe), overrides=paper_overrides(recipe)
        )
        names = []
        for step in plan.steps:
            if step.method == "anpvs":
                continue  # planned in full above; running it on synthetic data is still open
            if step.kind == "train":
                keys = {("dataset", step.dataset), ("model", step.setting("model"))}
            else:
                keys = {(step.method, step.setting("finetune_objective"))}
            if not keys <= seen:
                seen.update(keys)
                names.append(step.name)
        chosen[recipe] = names or [plan.steps[0].name]  # nothing new: its first step still runs
    return chosen


def run_paper_recipe(recipe: str, steps: list[str], data_dir, root) -> None:
    plan = reproduce(
        recipe,
        root,
        scale=0.01,
        data_dir=str(data_dir),
        overrides=paper_overrides(recipe),
        only=steps,
        progress=False,
        log=quiet,
    )
    assert set(steps) <= {step.name for step in plan.steps}
    for step in plan.steps:
        assert (step.run_dir / "model.safetensors").is_file(), step.name
        if step.evaluate is not None:
            results = json.loads(results_file(step.run_dir, step.evaluate).read_text())
            transfer = {"transfer"} if getattr(step.evaluate, "transfer_from", None) else set()
            expected = {"clean", "fgsm", "pgd", "cw", "worst_case", *transfer}
            assert set(results["accuracy"]) == expected
            assert results["dataset"] == step.dataset and results["examples"]["clean"] == 2
    if any(step.evaluate for step in plan.steps):
        assert (root / "report" / "report.md").is_file()
        if plan.paper:
            table = (root / "report" / "paper_vs_ours.md").read_text()
            assert all(f"| {row} |" in table for row in plan.paper["rows"])


def test_every_paper_recipe_has_representative_steps():
    chosen = representative_steps()
    assert set(chosen) == set(PAPER_RECIPES) and all(chosen.values())  # each runs something


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_paper_recipes_run_at_scale_on_synthetic_data(recipe, data_dir, tmp_path):
    run_paper_recipe(recipe, representative_steps()[recipe], data_dir, tmp_path / recipe)


def test_the_demo_says_what_it_evaluated_and_which_latencies_it_did_not_time(tmp_path):
    from advprune.reproduction.demo import subsets

    text = subsets(make_plan("demo", tmp_path / "demo"))
    assert text.startswith("every row on the first 2,000 or the first 500 test images")
    assert "no row's latency timed" in text  # the demo's recipe times none; its export does
    timed = subsets(make_plan("demo", tmp_path / "timed", overrides={"latency_repeats": 5}))
    assert "latency" not in timed


def test_a_demo_row_at_chance_is_shown_beside_the_benchmarks_figure(tmp_path):
    from advprune.reproduction.demo import chance_notes

    steps = make_plan("demo", tmp_path / "demo").steps
    alive = {"accuracy": {"pgd": 0.5}, "examples": {"pgd": 500}, "nonzero_params": 4_312}
    results = {step.name: alive for step in steps}
    assert chance_notes(steps, results) == []
    results["hydra-99"] = {**alive, "accuracy": {"pgd": 0.1}}
    (note,) = chance_notes(steps, results)
    assert note.startswith("  hydra-99 is at chance here (10.0 % PGD-20, 4,312 weights left")
    assert "3 fine-tuning epochs of 10,000 images" in note
    assert "keeps 70.59/35.56 (VGG16), 72.21/38.80 (ResNet-18)" in note


def test_the_demo_runs_each_seed_method_on_its_papers_kind_of_network_and_budget(tmp_path):
    steps = {step.name: step for step in make_plan("demo", tmp_path / "demo").steps}
    assert steps[steps["anpvs"].needs["from_run"]].setting("model") == "lenet5-caffe"
    for name in ("mad-90", "hydra-99", "harp-99", "magnitude-90"):
        step = steps[name]
        dense = steps[step.needs["from_run"]]
        assert dense.setting("model") == "lenet5-caffe-bn"  # BatchNorm, as VGG-16-bn, ResNet-18
        # The papers fine-tune for as long as the dense model trained (MAD 60/60, HYDRA and
        # HARP 100/100 epochs), on the same images.
        assert step.setting("finetune_epochs") == dense.setting("epochs")
        assert step.setting("limit_train") == dense.setting("limit_train")
