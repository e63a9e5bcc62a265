"""`advprune prune` end to end on a tiny dense run: masks, exact sparsity, zeros kept, resume."""

import json

import pytest
import torch

from advprune.cli import main
from advprune.core.errors import ConfigError
from advprune.masks import WeightMasks
from advprune.models.serialization import load_model
from advprune.pruning import PruneConfig, prune_run
from advprune.training import TrainConfig, train


@pytest.fixture(scope="module")
def dense_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dense")
    config = TrainConfig(
        dataset="fashion-mnist",
        model="lenet300-100",
        objective="pgd-at",
        eps=0.1,
        attack_steps=2,
        epochs=1,
        batch_size=64,
        optimizer="adam",
        lr=1e-3,
        limit_train=512,
        limit_test=64,
        monitor_examples=0,
    )
    train(config, str(run_dir), progress=False, log=lambda _: None)
    return run_dir


def quiet(_: str) -> None:
    pass


@pytest.mark.parametrize("method", ["mad", "magnitude", "random"])
def test_pruned_run_meets_the_sparsity_and_keeps_zeros(dense_run, tmp_path, method):
    config = PruneConfig(
        method=method,
        from_run=str(dense_run),
        sparsity=0.9,
        finetune_epochs=1,
        mask_steps=2,
        saliency_fraction=0.25,
    )
    model = prune_run(config, tmp_path, progress=False, log=quiet)
    masks, _ = WeightMasks.load(tmp_path / "masks.safetensors")
    parameters = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.count_nonzero(parameters[name][~keep]) == 0, name
    assert abs(masks.sparsity() - 0.9) < 1e-3
    if method == "mad":  # MAD prunes the classifier (body.5) per output row, bias in its row
        kept_per_row = masks["body.5.weight"].sum(1) + masks["body.5.bias"].int()
        assert len(set(kept_per_row.tolist())) == 1
    loaded, metadata = load_model(tmp_path / "model.safetensors")
    assert metadata["method"]["name"] == method
    assert all(torch.equal(loaded.state_dict()[k], v.cpu()) for k, v in model.state_dict().items())


def test_mad_saliency_is_cached_in_the_dense_run(dense_run, tmp_path):
    config = dict(
        method="mad",
        from_run=str(dense_run),
        finetune_epochs=1,
        mask_steps=2,
        saliency_fraction=0.25,
    )
    prune_run(PruneConfig(sparsity=0.5, **config), tmp_path / "a", progress=False, log=quiet)
    cached = list(dense_run.glob("saliency-*.safetensors"))
    assert len(cached) == 1
    messages = []
    prune_run(
        PruneConfig(sparsity=0.8, **config), tmp_path / "b", progress=False, log=messages.append
    )
    assert any("reusing the MAD saliency" in m for m in messages)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"method": "snip"}, "unknown method 'snip'"),
        ({"from_run": None}, "--from DENSE_RUN_DIR is required"),
        ({"scheme": "blockwise"}, "unknown scheme"),
    ],
)
def test_impossible_pruning_settings(dense_run, overrides, message):
    values = {"from_run": str(dense_run), **overrides}
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**values).validate()


def prune_magnitude(dense_run, sparsity: str) -> list[str]:
    return [
        "--quiet",
        "prune",
        "--method",
        "magnitude",
        "--from",
        str(dense_run),
        "--sparsity",
        sparsity,
    ]


def test_prune_cli_and_eval_report_the_sparsity(dense_run, tmp_path, capsys):
    run_dir = tmp_path / "pruned"
    code = main(
        [
            *prune_magnitude(dense_run, "0.75"),
            "--finetune-epochs",
            "1",
            "--run-dir",
            str(run_dir),
        ]
    )
    assert code == 0
    code = main(
        [
            "--quiet",
            "eval",
            str(run_dir),
            "--attacks",
            "clean,pgd",
            "--limit-test",
            "64",
            "--sanity-examples",
            "0",
        ]
    )
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["method"] == "magnitude"
    assert results["sparsity"] == pytest.approx(0.75, abs=1e-3)
    capsys.readouterr()
    code = main(
        [
            *prune_magnitude(dense_run, "1.5"),
            "--run-dir",
            str(tmp_path / "bad"),
        ]
    )
    assert code == 2 and "sparsity" in capsys.readouterr().err
