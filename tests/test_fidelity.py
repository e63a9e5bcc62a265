"""A method's name means the published method: its defaults are the official code's settings
(docs/fidelity.md has the file:line of each), the paper recipes run them without departures, and
a run's files say which method and settings it ran."""

from __future__ import annotations

import pytest
import yaml

from advprune.masks import OFFICIAL, SEEDED
from advprune.methods import PruneSettings, create_method, get_method
from advprune.models.serialization import load_model
from advprune.recipes import load_recipe
from advprune.reproduction import make_plan
from advprune.training import TrainConfig
from conftest import prune_tiny

MAD_FINETUNING = dict(
    objective="mart", beta=0.5, epochs=60, optimizer="sgd", lr=0.1, momentum=0.9,
    weight_decay=2e-4, schedule="step", milestones=[0.5, 0.75], gamma=0.1,
)  # fmt: skip
HYDRA_PHASE = dict(
    objective="trades", beta=6.0, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
    schedule="cosine",
)  # fmt: skip


def phase(settings) -> dict:
    return {k: v for k, v in settings.to_dict().items() if v is not None}


def test_mad_defaults_are_the_official_codes():
    mad = get_method("mad")
    settings = mad.Settings()
    assert phase(settings.finetune) == MAD_FINETUNING
    assert (settings.mask_steps, settings.mask_lr, settings.saliency_fraction) == (20, 0.1, 1.0)
    assert settings.saliency_batch_size == 128
    assert (mad.default_scheme, mad.scores_bias, mad.rule, mad.form) == (
        "mad", True, OFFICIAL, "paper"
    )  # fmt: skip


def test_mad_obd_is_ours_and_says_so():
    obd = get_method("mad-obd")
    assert obd.reference is None and obd.origin == "advprune's own" and obd.form == "removal"
    assert (obd.default_scheme, obd.scores_bias, obd.rule) == ("global", False, SEEDED)


def test_hydra_defaults_are_the_official_codes():
    hydra = get_method("hydra")
    settings = hydra.Settings()
    assert phase(settings.score) == {**HYDRA_PHASE, "epochs": 20, "lr": 0.1}
    assert phase(settings.finetune) == {**HYDRA_PHASE, "epochs": 100, "lr": 0.01}
    assert settings.train_batchnorm is True
    assert (hydra.default_scheme, hydra.scores_bias, hydra.rule) == ("layerwise", False, OFFICIAL)


def test_anpvs_defaults_are_the_official_codes():
    settings = get_method("anpvs").Settings()
    assert phase(settings.finetune) == dict(
        objective="pgd-at", epochs=200, optimizer="adam", lr=1e-3, weight_decay=1e-4,
        batch_size=64, schedule="step", milestones=[0.5, 0.7], gamma=0.1,
    )  # fmt: skip
    assert (settings.beta, settings.vs_lambda, settings.gate_lr) == (4.0, 1e-3, 1e-2)
    assert (settings.gate_prior, settings.threshold, settings.temperature) == (1e-4, 1e-3, 0.1)
    assert (settings.conv_gate_init, settings.dense_gate_init) == (-1.0, -1.0)


@pytest.mark.parametrize("recipe", ["mad-cifar10", "mad-svhn"])
def test_the_benchmark_recipes_run_each_method_as_published(recipe, tmp_path):
    steps = {step.name: step for step in make_plan(recipe, tmp_path).steps}
    for name, step in steps.items():
        if step.kind != "prune":
            continue
        settings, own = step.configs
        method = get_method(step.method)(own)
        if step.method != "magnitude":
            assert method.departures(settings) == {}, name  # nothing but budget keys set
    standard, dense = steps["vgg16-mad-standard"].configs[0], steps["vgg16-mad-dense"].configs[0]
    assert (standard.objective, standard.epochs, standard.model) == ("standard", 200, "vgg16-mad")
    assert (dense.objective, dense.epochs, dense.eps, dense.attack_step_size) == (
        "pgd-at", 60, 0.03, 0.0069
    )  # fmt: skip
    assert dense.init == str(tmp_path / "vgg16-mad-standard") and dense.weight_decay == 2e-4
    hydra_dense = steps["resnet18-dense"].configs[0]
    assert (hydra_dense.objective, hydra_dense.beta, hydra_dense.schedule) == (
        "trades", 6.0, "cosine"
    )  # fmt: skip
    assert (hydra_dense.epochs, hydra_dense.weight_decay, hydra_dense.model) == (
        100, 1e-4, "resnet18"
    )  # fmt: skip
    assert steps["vgg16-hydra-99"].needs["from_run"] == "vgg16-dense"
    assert steps["vgg16-dense"].configs[0].model == "vgg16-bn"


def test_a_departure_from_the_paper_is_recorded_and_shown(tmp_path):
    mad = create_method("mad", {"saliency_fraction": 0.25, "finetune_lr": 0.01})
    prune = PruneSettings(scheme="global", include_bias=False)
    assert mad.label(prune) == (
        "mad [finetune_lr=0.01, saliency_fraction=0.25, scheme=global, include_bias=False]"
    )
    assert create_method("mad", {"finetune_epochs": 3}).label(PruneSettings()) == "mad"  # budget


def test_a_mad_run_states_its_saliency_form_and_scheme(dense_run, tmp_path):
    settings = dict(sparsity=0.5, finetune_epochs=1, mask_steps=2, saliency_fraction=0.25)
    prune_tiny(dense_run, tmp_path / "mad", "mad", **settings)
    record = yaml.safe_load((tmp_path / "mad" / "prune.yaml").read_text())
    assert record["resolved"]["saliency_form"] == "paper" and record["resolved"]["scheme"] == "mad"
    _, metadata = load_model(tmp_path / "mad" / "model.safetensors")
    assert metadata["method"]["resolved"]["saliency_form"] == "paper"
    prune_tiny(dense_run, tmp_path / "hydra", "hydra", sparsity=0.5, score_epochs=1,
               finetune_epochs=1)  # fmt: skip
    for phase_dir in ("hydra", "hydra/scores"):
        config = TrainConfig.load(tmp_path / phase_dir / "config.yaml")
        assert (config.objective, config.beta) == ("trades", 6.0), phase_dir


HARP_PHASE = dict(
    objective="pgd-at", optimizer="sgd", momentum=0.9, weight_decay=5e-4, schedule="cosine"
)  # fmt: skip
# What docs/fidelity.md quotes of the recipes' dense starts (the HYDRA and HARP "pretraining" rows)
HYDRA_DENSE = dict(
    objective="trades", beta=6.0, epochs=100, eps=0.031, attack_steps=10, attack_step_size=0.0078,
    optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine", batch_size=128,
)  # fmt: skip
HARP_DENSE = dict(
    objective="pgd-at", epochs=100, eps=0.031, attack_steps=10, attack_step_size=0.0078,
    optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=128,
)  # fmt: skip

LWM_FINETUNING = dict(
    objective="trades", beta=6.0, epochs=100, optimizer="sgd", lr=0.01, schedule="cosine",
    weight_decay=1e-4,
)  # fmt: skip


def test_harp_defaults_are_the_official_codes():
    harp = get_method("harp")
    settings = harp.Settings()
    assert phase(settings.score) == {**HARP_PHASE, "epochs": 20, "lr": 0.1}
    assert phase(settings.finetune) == {**HARP_PHASE, "epochs": 100, "lr": 0.01}
    assert (settings.compression_gamma, settings.rate_floor, settings.initial_rate) == (
        0.01, 0.1, None
    )  # fmt: skip
    assert settings.train_batchnorm is True and settings.channel_flops == "registration"


@pytest.mark.parametrize("recipe", ["mad-cifar10", "mad-svhn"])
def test_the_harp_and_hydra_rows_quote_the_recipes(recipe, tmp_path):
    """Every recipe value the HYDRA and HARP tables of docs/fidelity.md quote."""
    steps = {step.name: step for step in make_plan(recipe, tmp_path).steps}
    for network in ("vgg16", "resnet18"):
        for name, expected in ((f"{network}-dense", HYDRA_DENSE),
                               (f"{network}-harp-dense", HARP_DENSE)):  # fmt: skip
            config = steps[name].configs[0]
            assert {key: getattr(config, key) for key in expected} == expected, name
            assert config.model == ("vgg16-bn" if network == "vgg16" else network)
        for sparsity in (90, 95, 99):
            step = steps[f"{network}-harp-{sparsity}"]
            assert step.method == "harp" and step.needs["from_run"] == f"{network}-harp-dense"
            assert step.setting("sparsity") == sparsity / 100
            assert step.setting("structure") in (None, "weights")
        for sparsity in (50, 75, 90):
            step = steps[f"{network}-harp-c{sparsity}"]
            assert step.setting("sparsity") == sparsity / 100
            assert step.setting("structure") == "channels"
        for sparsity in (90, 95, 99):
            assert steps[f"{network}-hydra-{sparsity}"].needs["from_run"] == f"{network}-dense"
            lwm = steps[f"{network}-magnitude-{sparsity}"]  # HYDRA's LWM baseline
            assert lwm.needs["from_run"] == f"{network}-dense"
            assert {key: lwm.setting(f"finetune_{key}") for key in LWM_FINETUNING} == LWM_FINETUNING
            assert lwm.setting("scheme") == "layerwise"
    if recipe == "mad-svhn":  # the augmentation row: the official codes flip SVHN too
        assert all(step.configs[0].flip for step in steps.values() if step.kind == "train")


def test_the_suite_runs_harp_on_hydras_budget(tmp_path):
    """docs/fidelity.md, HARP "benchmark settings": harp-99 and harp-c85 on HYDRA's budget."""
    steps = {step.name: step for step in make_plan("fashion-mnist-suite", tmp_path).steps}
    for harp, hydra in (("harp-99", "hydra-99"), ("harp-c85", "hydra-c85")):
        for key in ("sparsity", "structure", "score_epochs", "finetune_epochs", "from_run"):
            assert steps[harp].setting(key) == steps[hydra].setting(key), (harp, key)
    assert steps["harp-c85"].setting("structure") == "channels"
    assert steps["harp-c85"].setting("score_epochs") == 3


# The benchmark's README leaderboard (clean / AutoAttack %), pralab/AdversarialPruningBenchmark.
BENCHMARK_ROWS = {
    "radmm-twinrep-cifar10": {
        "resnet18-radmm": [(80.54, 43.68), (79.33, 42.56), (71.17, 37.21),
                           (79.27, 42.68), (78.81, 40.79), (70.53, 37.30)],
        "vgg16-radmm": [(74.76, 39.92), (72.67, 38.44), (57.69, 31.30),
                        (74.58, 39.67), (70.51, 37.74), (58.58, 31.79)],
        "resnet18-twinrep": [(76.37, 42.93), (73.19, 41.47), (64.97, 36.10),
                             (79.90, 45.58), (79.37, 45.21), (78.41, 44.30)],
        "vgg16-twinrep": [(75.36, 41.84), (74.16, 40.81), (69.95, 38.49),
                          (77.65, 43.13), (77.58, 42.77), (76.26, 42.14)],
    },
    "radmm-twinrep-svhn": {
        "vgg16-radmm": [(62.25, 44.40), (52.24, 42.99), (64.91, 37.91)],
        "resnet18-twinrep": [(88.90, 46.72), (88.59, 47.16), (85.09, 43.44),
                             (90.71, 37.33), (88.71, 45.28), (85.44, 45.10)],
        "vgg16-twinrep": [(87.22, 45.54), (89.70, 44.33), (86.03, 43.55),
                          (89.91, 45.82), (87.10, 43.26), (89.61, 44.83)],
    },
}  # fmt: skip
ROW_SUFFIXES = ("90", "95", "99", "c50", "c75", "c90")  # weights, then channels
RADMM_DENSE = dict(
    objective="pgd-at", epochs=200, eps=0.0313725, attack_steps=10, attack_step_size=0.0078431,
    optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine", batch_size=128,
)  # fmt: skip
TWINREP_START = dict(objective="pgd-at", eps=0.031, attack_steps=10, batch_size=128)


@pytest.mark.parametrize("recipe", list(BENCHMARK_ROWS))
def test_the_radmm_and_twinrep_recipes_hold_the_official_settings(recipe, tmp_path):
    """docs/fidelity.md, RADMM and TwinRep: every row is the method as published from its own
    start, and the paper rows are the benchmark's leaderboard."""
    steps = {step.name: step for step in make_plan(recipe, tmp_path).steps}
    rows = load_recipe(recipe)["paper"]["rows"]
    expected_rows = {}
    for prefix, figures in BENCHMARK_ROWS[recipe].items():
        network, method = prefix.split("-")
        model = "vgg16-bn" if network == "vgg16" else network
        if method == "radmm":
            config = steps[f"{prefix}-dense"].configs[0]
            assert {key: getattr(config, key) for key in RADMM_DENSE} == RADMM_DENSE
            assert config.model == model
        for suffix, (clean, autoattack) in zip(ROW_SUFFIXES, figures, strict=False):
            name = f"{prefix}-{suffix}"
            step = steps[name]
            settings, own = step.configs[:2]
            assert get_method(step.method)(own).departures(settings) == {}, name
            assert step.method == method
            if method == "radmm":
                assert step.needs["from_run"] == f"{prefix}-dense"
            else:  # from initialization: the network and attack its phase trains with
                assert not step.needs and step.configs[2].model == model
                phase = get_method(method)(own).phase(step.configs[2], settings)
                assert {key: getattr(phase, key) for key in TWINREP_START} == TWINREP_START
            channels = suffix.startswith("c")
            sparsity = int(suffix.lstrip("c"))
            assert step.setting("sparsity") == sparsity / 100
            assert step.setting("structure") == ("channels" if channels else None)
            key = "channel_sparsity" if channels else "sparsity"
            expected_rows[name] = {"clean": clean, "autoattack": autoattack, key: sparsity}
    assert rows == expected_rows
    if recipe.endswith("svhn"):
        starts = [s.configs[0 if s.kind == "train" else -1] for s in steps.values()]
        assert all(config.flip for config in starts if isinstance(config, TrainConfig))


def test_the_suite_runs_radmm_and_twinrep_on_its_budget(tmp_path):
    """docs/fidelity.md, RADMM and TwinRep: the suite's rows beside HYDRA's, their departures
    only those the budget forces."""
    steps = {step.name: step for step in make_plan("fashion-mnist-suite", tmp_path).steps}
    dense = steps["dense"].configs[0]
    for suffix in ("90", "99", "c85"):
        hydra, radmm, twinrep = (steps[f"{m}-{suffix}"] for m in ("hydra", "radmm", "twinrep"))
        for step in (radmm, twinrep):
            for key in ("sparsity", "structure"):
                assert step.setting(key) == hydra.setting(key), (step.name, key)
        assert radmm.needs["from_run"] == hydra.needs["from_run"] == "dense"
        for key in ("score_epochs", "finetune_epochs"):
            assert radmm.setting(key) == hydra.setting(key) == 3
        start = twinrep.configs[2]  # from initialization: the dense run's data, its network
        for key in ("dataset", "eps", "batch_size", "channels_last"):  # with BN (TwinRep's)
            assert getattr(start, key) == getattr(dense, key), key
        assert start.model == f"{dense.model}-bn"
        # The dense run's epochs and the fine-tuning every other row has, as the Birds'.
        birds = steps[f"flyingbird-{suffix}"] if suffix != "c85" else steps["flyingbird-90"]
        epochs = dense.epochs + hydra.setting("finetune_epochs")
        assert twinrep.setting("finetune_epochs") == birds.setting("finetune_epochs") == epochs
        assert twinrep.setting("finetune_attack_steps") == dense.attack_steps
        departures = {"update_every": 1}, {"finetune_attack_steps": 5, "prune_epoch": 2}
        for step, departure in zip((radmm, twinrep), departures, strict=True):
            settings, own = step.configs[:2]
            assert get_method(step.method)(own).departures(settings) == departure
