"""`advprune prune` end to end on a tiny dense run: masks, exact sparsity, zeros kept, resume."""

import json

import pytest
import torch

from advprune.cli import main
from advprune.core.errors import ConfigError
from advprune.masks import WeightMasks
from advprune.methods import PruneSettings, create_method
from advprune.models.serialization import load_model
from conftest import prune_tiny

FAST_MAD = {"mask_steps": 2, "saliency_fraction": 0.25}


@pytest.mark.parametrize("method", ["mad", "mad-obd", "magnitude", "random"])
def test_pruned_run_meets_the_sparsity_and_keeps_zeros(dense_run, tmp_path, method):
    extra = FAST_MAD if method.startswith("mad") else {}
    run_dir = tmp_path / "run"
    model = prune_tiny(dense_run, run_dir, method, sparsity=0.9, finetune_epochs=1, **extra)
    masks, _ = WeightMasks.load(run_dir / "masks.safetensors")
    parameters = dict(model.named_parameters())
    for name, keep in masks.items():
        assert torch.count_nonzero(parameters[name][~keep]) == 0, name
    assert abs(masks.sparsity() - 0.9) < 1e-3
    if method == "mad":  # MAD prunes the classifier (body.5) per output row, bias in its row
        kept_per_row = masks["body.5.weight"].sum(1) + masks["body.5.bias"].int()
        assert len(set(kept_per_row.tolist())) == 1
    loaded, metadata = load_model(run_dir / "model.safetensors")
    assert metadata["method"]["name"] == method
    assert all(torch.equal(loaded.state_dict()[k], v.cpu()) for k, v in model.state_dict().items())


def test_published_mad_records_the_paper_settings(dense_run, tmp_path):
    settings = dict(sparsity=0.5, finetune_epochs=1, **FAST_MAD)
    prune_tiny(dense_run, tmp_path / "run", "mad", **settings)
    _, metadata = load_model(tmp_path / "run" / "model.safetensors")
    method = metadata["method"]
    assert method["label"] == "mad [saliency_fraction=0.25, mask_steps=2]"  # the departures
    assert method["settings"]["finetune"]["objective"] == "mart"
    assert metadata["config"]["weight_decay"] == 2e-4 and metadata["config"]["lr"] == 0.1


def test_the_saliency_pass_runs_in_the_source_runs_channels_last_layout(tmp_path, monkeypatch):
    import advprune.methods.mad as mad
    from advprune.models import input_memory_format
    from conftest import train_tiny

    source = train_tiny(
        tmp_path / "dense", model="lenet5-caffe", channels_last=True, limit_train=128
    )
    layouts, compute = [], mad.compute_saliency

    def recording(model, batches, **options):
        layouts.append(input_memory_format(model))
        return compute(model, batches, **options)

    monkeypatch.setattr(mad, "compute_saliency", recording)
    prune_tiny(source, tmp_path / "run", "mad-obd", sparsity=0.5, finetune_epochs=1, **FAST_MAD)
    assert layouts == [torch.channels_last]


def test_mad_saliency_is_cached_for_every_sparsity(dense_run, tmp_path):
    settings = dict(finetune_epochs=1, **FAST_MAD)
    prune_tiny(dense_run, tmp_path / "a", "mad", sparsity=0.5, **settings)
    cached = list((tmp_path / "cache").glob("mad-saliency-*.safetensors"))
    assert len(cached) == 1
    assert not list(dense_run.glob("*saliency*")), "nothing is written into the source run"
    messages = []
    prune_tiny(dense_run, tmp_path / "b", "mad", sparsity=0.8, log=messages.append, **settings)
    assert any("reusing the MAD saliency" in m for m in messages)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sparsity": 1.0}, "sparsity"),
        ({"sparsity": -0.1}, "sparsity"),
        ({"method": "snip"}, "unknown method 'snip'"),
        ({"scheme": "blockwise"}, "unknown scheme"),
    ],
)
def test_impossible_pruning_settings(dense_run, overrides, message):
    values = {"from_run": str(dense_run), **overrides}
    with pytest.raises(ConfigError, match=message):
        PruneSettings.from_dict(values)


def test_an_unknown_method_is_an_error_never_a_fallback():
    with pytest.raises(ConfigError, match=r"unknown method 'magnitud'.*did you mean magnitude"):
        create_method("magnitud")


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
