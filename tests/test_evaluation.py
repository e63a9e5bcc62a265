import json

import pytest
import torch
from torch import nn

from advprune.core.errors import GradientMaskingError
from advprune.data import ImageDataset
from advprune.evaluation import EvalConfig, evaluate_model, evaluate_run
from advprune.evaluation.complexity import model_complexity, weight_sparsity
from advprune.evaluation.sanity import (
    default_eps_values,
    gradient_masking_problems,
    raise_on_gradient_masking,
    security_curve,
)
from advprune.models import create_model
from advprune.report import format_results
from advprune.training import TrainConfig, train


def curve(*points):
    return [{"eps": e, "accuracy": a} for e, a in points]


def test_a_falling_curve_passes_and_a_rising_or_flat_one_fails():
    assert gradient_masking_problems(curve((0, 0.9), (0.1, 0.6), (0.5, 0.0))) == []
    rising = gradient_masking_problems(curve((0, 0.9), (0.1, 0.5), (0.2, 0.7), (0.5, 0.0)))
    assert len(rising) == 1 and "rises" in rising[0]
    flat = gradient_masking_problems(curve((0, 0.9), (0.1, 0.85), (0.5, 0.8)))
    assert len(flat) == 1 and "still 0.800 at eps 0.5" in flat[0]
    with pytest.raises(GradientMaskingError, match="cannot be trusted"):
        raise_on_gradient_masking(flat, "run")


def test_default_eps_values_reach_the_large_radius():
    assert default_eps_values(0.1) == [0.0, 0.05, 0.1, 0.2, 0.4, 0.5]
    assert default_eps_values(0.3) == [0.0, 0.15, 0.3, 0.5]


class Quantised(nn.Module):
    """A classic gradient-masking defence: input quantisation has zero gradient everywhere."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(torch.round(x * 4) / 4)


def trained_mlp(data: ImageDataset) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("lenet300-100", 10, 1, image_size=28)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = data.images.float() / 255, data.labels
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def test_the_check_catches_a_gradient_masking_model(fashion_slice):
    data = fashion_slice("train", 400)
    honest = trained_mlp(data)
    points = security_curve(honest, data.take(200), default_eps_values(0.1), steps=10)
    assert gradient_masking_problems(points) == []
    assert points[0]["accuracy"] > 0.7 and points[-1]["accuracy"] <= 0.05

    masked = Quantised(honest).eval()
    points = security_curve(masked, data.take(200), default_eps_values(0.1), steps=10)
    assert gradient_masking_problems(points), points


def test_the_security_curve_draws_its_random_starts_from_its_seed(fashion_slice):
    data = fashion_slice("train", 400)
    model = trained_mlp(data)
    curves = []
    for global_seed in (1, 2):  # what ran before it, e.g. in a resumed evaluation, differs
        torch.manual_seed(global_seed)
        curves.append(security_curve(model, data.take(200), [0.05, 0.1, 0.2], steps=3, seed=7))
    assert curves[0] == curves[1]
    other = security_curve(model, data.take(200), [0.05, 0.1, 0.2], steps=3, seed=8)
    assert other != curves[0]  # the seed reaches PGD's starts


def test_sparsity_and_complexity():
    model = create_model("lenet5-caffe", 10, 1, image_size=28)
    assert weight_sparsity(model) == 0.0
    with torch.no_grad():
        model.body[7].weight[:, :200] = 0  # 500 × 800 dense layer: a quarter of its weights
    zeros = 500 * 200
    total = 20 * 25 + 50 * 20 * 25 + 800 * 500 + 500 * 10
    assert weight_sparsity(model) == pytest.approx(zeros / total)
    complexity = model_complexity(model, (1, 28, 28))
    assert complexity["params"] == 431_080
    assert complexity["nonzero_params"] == 431_080 - zeros
    assert complexity["flops"] == 2 * complexity["macs"] > 2_000_000
    assert complexity["memory_bytes"] >= 4 * 431_080


@pytest.mark.slow
def test_evaluate_run_writes_and_merges_results(tmp_path):
    config = TrainConfig(
        dataset="fashion-mnist",
        model="lenet300-100",
        objective="pgd-at",
        eps=0.1,
        attack_steps=3,
        epochs=1,
        batch_size=64,
        optimizer="adam",
        lr=1e-3,
        limit_train=1280,
        limit_test=200,
        monitor_examples=0,
    )
    train(config, str(tmp_path), progress=False, log=lambda _: None)
    settings = dict(limit_test=200, sanity_examples=100, pgd_steps=10)
    first = evaluate_run(
        tmp_path, EvalConfig(attacks="clean,pgd", **settings), progress=False, log=lambda _: None
    )
    assert first["gradient_masking_check"]["passed"]
    assert (tmp_path / "security_curve.png").read_bytes().startswith(b"\x89PNG")
    second = evaluate_run(
        tmp_path,
        EvalConfig(attacks="fgsm,autoattack", autoattack_limit=40, **settings),
        progress=False,
        log=lambda _: None,
    )
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored == second
    # The model's CPU latency, measured once (the second evaluation keeps the first's): paired
    # with the dense network of the same architecture, a ratio near 1 for an unpruned model.
    assert stored["latency"] == first["latency"]
    for batch in ("batch_1", "batch_128"):
        latency = stored["latency"][batch]
        assert latency["model"] > 0 and latency["dense"] > 0
        assert latency["ratio_range"][0] <= latency["ratio"] <= latency["ratio_range"][1]
        assert set(latency["layout"].values()) <= {"nchw", "channels_last"}
    assert set(stored["accuracy"]) == {
        "clean",
        "pgd",
        "fgsm",
        "autoattack",
        "pgd_on_autoattack_examples",
        "worst_case",
    }
    accuracy = stored["accuracy"]
    assert accuracy["clean"] >= accuracy["fgsm"] >= accuracy["pgd"] - 0.05
    assert accuracy["autoattack"] <= accuracy["pgd_on_autoattack_examples"] + 0.005
    # The worst case is over the 40 examples every attack saw, and no attack beats it there.
    assert stored["examples"] == {
        "clean": 200, "pgd": 200, "fgsm": 200, "autoattack": 40,
        "pgd_on_autoattack_examples": 40, "worst_case": 40,
    }  # fmt: skip
    assert accuracy["worst_case"] <= min(
        accuracy["autoattack"], accuracy["pgd_on_autoattack_examples"]
    )
    for name, (low, high) in stored["accuracy_interval"].items():
        assert low <= accuracy[name] <= high
    assert stored["attacks"]["pgd"]["steps"] == 10
    assert stored["provenance"]["settings"]["attacks"] == "fgsm,autoattack"
    table = format_results([stored])
    assert "autoattack" in table and "/40" in table and "–" in table  # cw was not run


# ------------------------------------------------------------------ statistics and provenance


@pytest.mark.parametrize(
    ("correct", "total"), [(0, 10), (3, 10), (62, 100), (100, 100), (9990, 10000)]
)
def test_wilson_interval_matches_scipy_and_stays_in_the_unit_interval(correct, total):
    from scipy.stats import binomtest

    from advprune.evaluation.statistics import wilson_interval

    low, high = wilson_interval(correct, total)
    expected = binomtest(correct, total).proportion_ci(method="wilson")
    assert low == pytest.approx(expected.low, abs=1e-9)
    assert high == pytest.approx(expected.high, abs=1e-9)
    assert 0 <= low <= correct / total <= high <= 1


def test_more_examples_narrow_the_interval():
    from advprune.evaluation.statistics import wilson_interval

    widths = [high - low for low, high in (wilson_interval(n // 2, n) for n in (64, 256, 10000))]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.02


@pytest.mark.parametrize("count", [1, 7, 8, 9, 1000])
def test_correctness_bits_round_trip(count):
    from advprune.evaluation.statistics import pack_bits, unpack_bits

    correct = torch.rand(count, generator=torch.Generator().manual_seed(count)) < 0.5
    text = pack_bits(correct)
    assert isinstance(text, str) and len(text) <= 4 * (count // 24 + 1)
    assert torch.equal(unpack_bits(text, count), correct)


def test_worst_case_and_mcnemar():
    from scipy.stats import binomtest

    from advprune.evaluation.statistics import mcnemar_p_value, worst_case

    generator = torch.Generator().manual_seed(0)
    first = torch.rand(200, generator=generator) < 0.6
    second = first & (torch.rand(200, generator=generator) < 0.8)  # breaks some more
    robust, names = worst_case({"a": first, "b": second[:120]})
    assert torch.equal(robust, first[:120] & second[:120]) and set(names) == {"a", "b"}
    only_first = int((first & ~second).sum())
    expected = binomtest(0, only_first, 0.5).pvalue
    assert mcnemar_p_value(first, second) == pytest.approx(expected)
    assert mcnemar_p_value(second, first) == mcnemar_p_value(first, second) < 0.05
    assert mcnemar_p_value(first, first) == 1.0


def _paired_rows(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two models on the same n images: 57 % and 55.5 % correct, agreeing on all but ~6 %."""
    first = torch.rand(n, generator=generator) < 0.57
    flips = torch.rand(n, generator=generator)
    second = first.clone()
    second[first & (flips < 0.0789)] = False  # 4.5 % of the images: only the first is right
    second[~first & (flips > 1 - 0.0698)] = True  # 3 %: only the second
    return first, second


def test_paired_difference_interval_covers_the_truth_and_is_narrower_than_unpaired():
    from advprune.evaluation.statistics import difference_interval, paired_difference_interval

    generator = torch.Generator().manual_seed(0)
    truth, covered, paired_widths, unpaired_widths = 0.57 * 0.0789 - 0.43 * 0.0698, 0, [], []
    for _ in range(400):
        first, second = _paired_rows(1000, generator)
        low, high = paired_difference_interval(first, second)
        covered += low <= truth <= high
        counts = (int(first.sum()), 1000), (int(second.sum()), 1000)
        unpaired = difference_interval(*counts)
        assert low <= (counts[0][0] - counts[1][0]) / 1000 <= high
        paired_widths.append(high - low)
        unpaired_widths.append(unpaired[1] - unpaired[0])
    assert 0.92 <= covered / 400 <= 0.99
    assert max(paired_widths) < 0.5 * min(unpaired_widths)


def test_unpaired_difference_interval_covers_the_truth():
    from advprune.evaluation.statistics import difference_interval

    generator = torch.Generator().manual_seed(1)
    covered = 0
    for _ in range(400):
        first = int((torch.rand(300, generator=generator) < 0.6).sum())
        second = int((torch.rand(500, generator=generator) < 0.5).sum())
        low, high = difference_interval((first, 300), (second, 500))
        covered += low <= 0.1 <= high
    assert 0.92 <= covered / 400 <= 0.99


def test_git_commit_is_recorded_in_a_checkout_and_absent_elsewhere(tmp_path):
    from advprune.evaluation.provenance import git_commit

    assert git_commit(tmp_path) == {}  # not a checkout: nothing, and no error
    found = git_commit()  # advprune's own folder: this repository
    assert len(found["git_commit"]) == 40 and isinstance(found["git_dirty"], bool)


def test_results_of_another_model_or_settings_are_not_reused(tmp_path):
    from advprune.evaluation.results import ResultsStore

    path = tmp_path / "results.json"
    store = ResultsStore(path, "model-a", log=lambda _: None)
    settings = {"model_sha256": "model-a", "eps": 0.1, "steps": 10, "description": "PGD-10"}
    store.record_attack("pgd", torch.tensor([True, False, True]), settings)
    again = ResultsStore(path, "model-a", log=lambda _: None)
    assert again.finished("pgd", {**settings, "description": "reworded"})
    assert not again.finished("pgd", {**settings, "steps": 20})
    assert again.data["accuracy"]["pgd"] == 2 / 3 and again.data["examples"]["pgd"] == 3
    messages = []
    other = ResultsStore(path, "model-b", log=messages.append)
    assert "pgd" not in other.data["accuracy"] and "pgd" in messages[0]


# ---------------------------------------------------------------------------- paired latency


class Repeated(nn.Module):
    """The same network run `times` times: a model that costs that many dense ones."""

    def __init__(self, body: nn.Module, times: int) -> None:
        super().__init__()
        self.body, self.times = body, times

    def forward(self, x):
        for _ in range(self.times - 1):
            self.body(x)
        return self.body(x)


def test_latency_is_a_paired_ratio_to_the_dense_network():
    from advprune.evaluation.latency import paired_latency

    dense = create_model("lenet300-100", 10, 1, image_size=28)
    slower = paired_latency(Repeated(dense, 4), dense, (1, 28, 28), (16,), repeats=15)
    same = paired_latency(dense, dense, (1, 28, 28), (16,), repeats=15)
    for result in (slower, same):
        entry = result["batch_16"]
        low, high = entry["ratio_range"]
        assert low <= entry["ratio"] <= high and entry["model"] > 0 and entry["dense"] > 0
        assert result["device_name"] and result["ratio_of"] == "model / dense"
    assert slower["batch_16"]["ratio"] > 2 > same["batch_16"]["ratio"] > 0.5


def test_the_fastest_model_is_the_one_that_costs_least():
    from advprune.evaluation.latency import fastest_model

    dense = create_model("lenet300-100", 10, 1, image_size=28)
    models = {"4x": Repeated(dense, 4), "1x": dense, "3x": Repeated(dense, 3)}
    best, medians = fastest_model(models, (1, 28, 28), 16, repeats=5)
    assert best == "1x" and set(medians) == set(models)
    assert medians["4x"] > 2 * medians["1x"] > 0


# ---------------------------------------------------------------------------- sampled gates


def test_sampled_gates_draw_seeded_noise_at_every_pass_and_leave_the_model_deterministic():
    from advprune.evaluation.stochastic import sampled_gates
    from advprune.masks.gated import find_gates, insert_gates

    model = create_model("lenet300-100", 10, 1, image_size=28)
    insert_gates(model, torch.zeros(2, 1, 28, 28), dense_a_init=0.0)
    model.eval()
    x = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rng = torch.get_rng_state()
    with torch.no_grad(), sampled_gates(model, seed=3) as network:
        network.eval()  # as AutoAttack does: the gates keep sampling
        first, second = network(x), network(x)
    with torch.no_grad(), sampled_gates(model, seed=3) as network:
        repeated = network(x)
    assert not torch.equal(first, second) and torch.equal(first, repeated)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is never drawn from
    assert not model.training and all(gate.generator is None for gate in find_gates(model))
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # deterministic gates again


def test_evaluate_model_on_any_module_in_memory_or_resumed_from_a_file(
    fashion_slice, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    model = trained_mlp(fashion_slice("train", 400))
    test = fashion_slice("test", 64)
    config = EvalConfig(attacks="clean,pgd", pgd_steps=3)
    results = evaluate_model(model, test, 0.1, config, device=torch.device("cpu"), log=print)
    assert set(results["accuracy"]) == {"clean", "pgd", "worst_case"}
    assert results["accuracy"]["worst_case"] == results["accuracy"]["pgd"] < 1
    assert list(tmp_path.iterdir()) == []  # in memory: nothing written
    path = tmp_path / "out" / "results.json"
    messages: list[str] = []
    for _ in range(2):
        stored = evaluate_model(
            model, test, 0.1, config, device=torch.device("cpu"), results_path=path,
            log=messages.append,
        )  # fmt: skip
    assert stored["accuracy"] == results["accuracy"] == json.loads(path.read_text())["accuracy"]
    assert sum("kept from before" in m for m in messages) == 2  # the second call: clean, pgd


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_run_is_attacked_in_the_layout_it_trained_in(tmp_path, channels_last):
    from advprune.core.run_dir import RunDir
    from advprune.evaluation.run import open_evaluation
    from advprune.models import input_memory_format
    from conftest import train_tiny

    run, source = (
        train_tiny(
            tmp_path / name,
            model="lenet5-caffe",
            channels_last=channels_last,
            limit_train=128,
            seed=seed,
            allow_chance=True,  # the layout is the point, not the accuracy
        )
        for seed, name in enumerate(("run", "source"))
    )
    config = EvalConfig(attacks="clean,transfer", limit_test=8, transfer_from=str(source))
    evaluation, _ = open_evaluation(RunDir.existing(run), config, None, False, lambda _: None)
    expected = torch.channels_last if channels_last else torch.contiguous_format
    assert input_memory_format(evaluation.model) == expected
    assert input_memory_format(evaluation.source) == expected  # the transfer source's too
