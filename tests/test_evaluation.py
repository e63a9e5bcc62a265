import json

import pytest
import torch
from torch import nn

from advprune.core.errors import GradientMaskingError
from advprune.data import ImageDataset
from advprune.evaluation import EvalConfig, evaluate_run
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
    with pytest.raises(GradientMaskingError, match="gradient masking suspected"):
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
    # The model's CPU latency, measured once (the second evaluation keeps the first's).
    assert stored["latency"] == first["latency"]
    for batch in ("batch_1", "batch_128"):
        assert stored["latency"][batch]["model"] > 0
        assert stored["latency"][batch]["layout"] in ("nchw", "channels_last")
    assert set(stored["accuracy"]) == {
        "clean",
        "pgd",
        "fgsm",
        "autoattack",
        "pgd_on_autoattack_examples",
    }
    accuracy = stored["accuracy"]
    assert accuracy["clean"] >= accuracy["fgsm"] >= accuracy["pgd"] - 0.05
    assert accuracy["autoattack"] <= accuracy["pgd_on_autoattack_examples"] + 0.005
    assert stored["examples"] == {"clean": 200, "pgd": 200, "fgsm": 200, "autoattack": 40}
    assert stored["attacks"]["pgd"]["steps"] == 10
    table = format_results([stored])
    assert "autoattack" in table and "/40" in table and "–" in table  # cw was not run
