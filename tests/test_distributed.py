"""torchrun + DDP on CPU (gloo): two processes train what one process trains with the same global
batch, and only rank 0 writes.

Each launch is `python -m torch.distributed.run --nproc-per-node 2 -m advprune ...` with this
interpreter, so the venv's torch runs it; the one-process references run in this process.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from advprune.core.seeding import seed_everything
from advprune.data import BatchLoader, get_spec
from advprune.masks import WeightMasks
from advprune.methods import compute_saliency
from advprune.methods.mad import load_saliency
from advprune.models import architecture, create_model
from advprune.models.serialization import load_model
from advprune.training import TrainConfig, train
from advprune.training.method import MaskedTraining
from advprune.training.trainer import load_training_data
from conftest import TINY_TRAINING, prune_tiny

SRC = Path(__file__).parents[1] / "src"

PGD_AT = {**TINY_TRAINING, "epochs": 2, "limit_test": 1000, "monitor_examples": 200}
PGD_AT.update(seed=5, checkpoint_every=3)


def flags(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        else:
            args += [flag, str(value)]
    return args


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m advprune --quiet ARGS --backend gloo`."""
    return launch_two("-m", "advprune", "--quiet", *args, "--backend", "gloo")


def launch_two(*target: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 TARGET`, which must succeed. A rank that aborts
    in C++ prints every thread's Python stack (faulthandler), so a rare crash says where it was."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    done = subprocess.run(
        [*command, "2", *target], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[:5000] + "\n...\n" + done.stderr[-2000:]
    return done


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def pgd_at_runs(tmp_path_factory):
    """A short PGD-AT run on two processes and the same run on one."""
    root = tmp_path_factory.mktemp("pgd-at")
    done = torchrun("train", *flags(PGD_AT), "--tensorboard", "--run-dir", str(root / "two"))
    one = train(TrainConfig(**PGD_AT), str(root / "one"), progress=False, log=quiet)
    return root / "one", root / "two", done.stdout, one


def test_pgd_at_on_two_processes_matches_one_and_only_rank_0_writes(pgd_at_runs):
    """16 PGD-AT steps of a global batch of 64: the two ranks attack 32 examples each, with the
    random starts of the one-process run, and DDP averages their gradients. Any error in that
    (a sum for a mean, a missing all-reduce, other starts) moves the weights apart from step 1 on
    by far more than the tolerance, which is summation-order noise."""
    one, two, stdout, model = pgd_at_runs
    # Rank 0 alone logs and writes: one line per epoch, one TensorBoard writer, no stray files.
    assert [line.split()[:2] for line in stdout.splitlines() if line.startswith("epoch")] == [
        ["epoch", "1"],
        ["epoch", "2"],
    ]
    assert stdout.count("trained model written") == 1
    events = [f for f in files(two) if f.startswith("tensorboard/")]
    assert len(events) == 1 and "events.out.tfevents" in events[0]
    assert [f for f in files(two) if not f.startswith("tensorboard/")] == [
        "checkpoint.safetensors",
        "config.yaml",
        "metrics.jsonl",
        "model.safetensors",
    ]
    tensorboard = EventAccumulator(str(two / "tensorboard"))
    tensorboard.Reload()
    logged = [event.value for event in tensorboard.Scalars("epoch/test_clean_accuracy")]
    assert logged == pytest.approx([record["test_clean_accuracy"] for record in metrics(two)])

    for a, b in zip(metrics(one), metrics(two), strict=True):
        assert a["test_clean_accuracy"] > 0.5  # learnt something, so agreement means something
        assert abs(a["test_clean_accuracy"] - b["test_clean_accuracy"]) <= 0.01
        assert abs(a["test_pgd10_accuracy"] - b["test_pgd10_accuracy"]) <= 0.01
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    seed_everything(PGD_AT["seed"])  # the trainer's initialisation, to see that training moved
    initial = create_model(**architecture(PGD_AT["model"], get_spec(PGD_AT["dataset"])))
    two_model, _ = load_model(two / "model.safetensors")
    for (name, a), b, start in zip(
        model.state_dict().items(),
        two_model.state_dict().values(),
        initial.state_dict().values(),
        strict=True,
    ):
        assert (a - start).abs().max() > 1e-3 or name.startswith("normalize"), name
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=name)


def test_mad_pruning_on_two_processes_sums_the_saliency_and_fine_tunes_as_one(
    pgd_at_runs, tmp_path
):
    _, two, _, _ = pgd_at_runs
    dense = tmp_path / "dense"
    shutil.copytree(two, dense)
    prune = {"method": "mad", "sparsity": 0.8, "finetune_epochs": 1, "mask_steps": 2}
    prune.update(saliency_batch_size=64, cache_dir=str(tmp_path / "cache"), allow_chance=True)
    done = torchrun("prune", *flags(prune), "--from", str(dense), "--run-dir", str(tmp_path / "p2"))
    assert done.stdout.count("mad: pruned") == 1

    # The saliency on disk is the mean over both ranks' shards, each scored as one process would.
    (cache,) = (tmp_path / "cache").glob("mad-saliency-*.safetensors")
    saliency, settings = load_saliency(cache)
    assert settings["world_size"] == 2
    model, _ = load_model(dense / "model.safetensors")
    data = load_training_data(TrainConfig(**PGD_AT))
    expected, batches = {}, 0
    for rank in range(2):
        shard = BatchLoader(
            data.train, data.spec, 64, shuffle=True, augment=True, rank=rank, world_size=2
        )
        scores = compute_saliency(
            model, shard, eps=0.1, attack_steps=2, mask_steps=2, seed=0, progress=False
        )
        for name, score in scores.items():
            expected[name] = expected.get(name, 0) + score * len(shard)
        batches += len(shard)
    assert list(saliency) == list(expected)
    for name, score in saliency.items():
        torch.testing.assert_close(score, expected[name] / batches, msg=name)

    # Fine-tuning under the same masks on one process ends where the two processes did.
    masks, _ = WeightMasks.load(tmp_path / "p2" / "masks.safetensors")
    assert masks.sparsity() == pytest.approx(0.8, abs=0.01)
    config = TrainConfig.load(tmp_path / "p2" / "config.yaml")
    initial = {name: t for name, t in model.state_dict().items()}
    one = train(
        config,
        str(tmp_path / "p1"),
        progress=False,
        log=quiet,
        initial_weights=initial,
        method=MaskedTraining(masks, {"name": "mad"}),
    )
    two_pruned, _ = load_model(tmp_path / "p2" / "model.safetensors")
    parameters = dict(two_pruned.named_parameters())
    for name, keep in masks.items():
        assert torch.count_nonzero(parameters[name][~keep]) == 0, name
    for (name, a), b in zip(
        one.state_dict().items(), two_pruned.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=name)
    (a,), (b,) = metrics(tmp_path / "p1"), metrics(tmp_path / "p2")
    assert abs(a["test_clean_accuracy"] - b["test_clean_accuracy"]) <= 0.01


def test_anpvs_on_two_processes_matches_one_and_only_rank_0_writes(pgd_at_runs, tmp_path):
    """ANP-VS's step runs the gate and the weight pass on the module itself and averages both
    gradients by hand, with gate samples and random starts drawn for the global batch: 16 steps
    from the trained dense model on two processes must end where one process does, gates included.
    """
    dense = pgd_at_runs[0]
    anpvs = {f"finetune_{key}": PGD_AT[key] for key in ("epochs", "batch_size", "attack_steps")}
    anpvs.update(finetune_optimizer="adam", finetune_lr=1e-3, finetune_weight_decay=1e-4)
    anpvs.update(limit_train=512, seed=5, checkpoint_every=3)
    anpvs.update(vs_lambda=0.01, gate_lr=0.05, dense_gate_init=3.0)
    done = torchrun(
        "prune", "--method", "anpvs", "--from", str(dense), *flags(anpvs),
        "--run-dir", str(tmp_path / "two"),
    )  # fmt: skip
    assert done.stdout.count("pruned model written") == 1
    assert files(tmp_path / "two") == [
        "checkpoint.safetensors",
        "config.yaml",
        "exported/model.safetensors",
        "gates.json",
        "metrics.jsonl",
        "model.safetensors",
        "prune.yaml",
        "results.json",
    ]
    one = prune_tiny(dense, tmp_path / "one", "anpvs", allow_chance=False, **anpvs).state_dict()
    two, _ = load_model(tmp_path / "two" / "model.safetensors")
    initial, _ = load_model(dense / "model.safetensors")
    for name, start in initial.state_dict().items():  # the weights trained...
        assert (one[name] - start).abs().max() > 1e-4 or name.startswith("normalize"), name
    gates = [tensor for name, tensor in one.items() if name.endswith("a_raw")]
    assert gates and all(  # ... and so did the gates
        (a - anpvs["dense_gate_init"]).abs().min() > 1e-3 for a in gates
    )
    for (name, a), b in zip(one.items(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=name)
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "two"), strict=True):
        assert a["test_clean_accuracy"] > 0.5
        assert abs(a["test_clean_accuracy"] - b["test_clean_accuracy"]) <= 0.01
        assert abs(a["test_pgd10_accuracy"] - b["test_pgd10_accuracy"]) <= 0.01


def test_hydra_on_two_processes_learns_the_scores_and_fine_tunes_as_one(pgd_at_runs, tmp_path):
    """HYDRA's score phase trains tensors DDP does not own (the weights are frozen): the method
    averages the score gradients itself, so both phases end where one process does."""
    dense = pgd_at_runs[0]
    hydra = {"method": "hydra", "sparsity": 0.8, "score_epochs": 1, "finetune_epochs": 1}
    done = torchrun(
        "prune", *flags(hydra), "--from", str(dense), "--run-dir", str(tmp_path / "two")
    )
    assert done.stdout.count("pruned model written") == 1
    settings = {key: value for key, value in hydra.items() if key != "method"}
    one = prune_tiny(dense, tmp_path / "one", "hydra", allow_chance=False, **settings).state_dict()
    two, _ = load_model(tmp_path / "two" / "model.safetensors")
    for phase in ("scores/masks.safetensors", "masks.safetensors"):
        masks_one, _ = WeightMasks.load(tmp_path / "one" / phase)
        masks_two, _ = WeightMasks.load(tmp_path / "two" / phase)
        for name, keep in masks_one.items():
            assert torch.equal(masks_two[name], keep), (phase, name)
    for (name, a), b in zip(one.items(), two.state_dict().values(), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=name)


LEAVING = """
import sys, time
from pathlib import Path
from advprune.core import distributed

rank = distributed.initialize("gloo").rank
out = Path(sys.argv[1])
if rank == 0:
    time.sleep(1.0)  # rank 0 still finishing (writing its files) when rank 1 is done
(out / f"enter{rank}").write_text(repr(time.time()))
distributed.shutdown(finished=True)
(out / f"left{rank}").write_text(repr(time.time()))
"""


def test_a_finished_rank_leaves_the_process_group_only_when_every_rank_has_finished(tmp_path):
    """No rank closes its gloo connections while a peer may still read the last collective."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVING)
    launch_two(str(script), str(tmp_path))
    rank_0_entered = float((tmp_path / "enter0").read_text())
    assert float((tmp_path / "left1").read_text()) >= rank_0_entered
