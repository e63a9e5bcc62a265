"""`advprune eval` as a user runs it: resumable results, ε-keyed files, --out, Ctrl-C, a model at
chance, the ap-benchmark protocol and sampled gates. Each test runs the command through
`advprune.cli.main`, then checks the exit code, the message's key words and what is on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pyautoattack
import pytest
import torch

from advprune.attacks import ATTACKS
from advprune.cli import main
from advprune.core.run_dir import LOCK_NAME
from advprune.masks.gated import gates_spec, insert_gates
from advprune.models.serialization import load_model, save_model
from advprune.report import read_run, write_report

FAST = {
    "limit-test": "64",
    "pgd-steps": "5",
    "sanity-examples": "32",
    "indicator-examples": "32",
    "latency-repeats": "2",
}


def copy_run(source: Path, target: Path) -> Path:
    """A fresh copy of a trained run (model and config), so each test starts from no results."""
    target.mkdir(parents=True)
    for name in ("model.safetensors", "config.yaml"):
        shutil.copy(source / name, target / name)
    return target


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def evaluate(run: Path, *extra: str, **settings: str) -> int:
    """`advprune --quiet eval RUN` with the fast settings, `settings` overriding them."""
    flags = [item for key, value in {**FAST, **settings}.items() for item in (f"--{key}", value)]
    return main(["--quiet", "eval", str(run), *flags, *extra])


def results(folder: Path, name: str = "results.json") -> dict:
    return json.loads((folder / name).read_text())


def assert_no_leftovers(*folders: Path) -> None:
    for folder in folders:
        names = [path.name for path in folder.rglob("*")]
        assert not any(n.endswith(".tmp") or n == LOCK_NAME for n in names), names


@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    return copy_run(tiny_run("target"), tmp_path / "run")


def test_results_record_settings_and_provenance_and_a_rerun_keeps_them(run, capsys):
    assert evaluate(run, attacks="clean,pgd") == 0
    first = results(run)
    entry = first["attacks"]["pgd"]
    model_hash = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert entry["model_sha256"] == model_hash
    assert (entry["steps"], entry["examples"], entry["eps"], entry["seed"]) == (5, 64, 0.1, 0)
    provenance = first["provenance"]
    assert provenance["seed"] == 0 and provenance["torch_version"] == torch.__version__
    assert provenance["settings"]["pgd_steps"] == 5 and provenance["run_config"]["eps"] == 0.1
    assert {"advprune_version", "device_name", "date"} <= set(provenance)
    assert len(provenance.get("git_commit", "0" * 40)) == 40  # this is a checkout
    assert set(first["attack_failure_indicators"]["indicators"]) >= {"silent_success"}
    capsys.readouterr()

    # The same command again measures nothing; a new attack is added beside the others.
    assert evaluate(run, attacks="clean,pgd,fgsm") == 0
    out = capsys.readouterr().out
    assert out.count("kept from before") == 4, out  # clean, pgd, the curve, the indicators
    again = results(run)
    assert again["accuracy"]["pgd"] == first["accuracy"]["pgd"] and "fgsm" in again["accuracy"]
    assert again["attacks"]["pgd"] == entry

    # Another number of steps is another PGD: it runs again; the clean accuracy is kept.
    assert evaluate(run, attacks="clean,pgd", **{"pgd-steps": "3"}) == 0
    out = capsys.readouterr().out
    assert "clean            " in out and out.count("kept from before") == 1, out
    assert results(run)["attacks"]["pgd"]["steps"] == 3


def test_a_retrained_model_drops_the_old_results(run, tiny_run, capsys):
    assert evaluate(run, attacks="clean,fgsm") == 0
    shutil.copy(tiny_run("other", seed=1) / "model.safetensors", run / "model.safetensors")
    assert evaluate(run, attacks="clean") == 0
    assert "dropped results of another model file" in capsys.readouterr().out
    assert "fgsm" not in results(run)["accuracy"]


def test_another_eps_writes_beside_the_run_results(run, capsys):
    assert evaluate(run, attacks="clean,pgd") == 0
    own = (run / "results.json").read_bytes()
    assert evaluate(run, attacks="clean,pgd", eps="8/255") == 0
    assert (run / "results.json").read_bytes() == own  # never overwritten
    other = results(run, f"results-eps{8 / 255:g}.json")
    assert other["eps"] == pytest.approx(8 / 255) and other["run_eps"] == 0.1
    assert other["accuracy"]["pgd"] != json.loads(own)["accuracy"]["pgd"]
    assert (run / f"security_curve-eps{8 / 255:g}.png").is_file()
    # The report reads the run's own ε.
    assert read_run(run).eps == 0.1
    assert read_run(run).accuracy["pgd"] == json.loads(own)["accuracy"]["pgd"]


def test_eps_in_255ths_is_refused_before_anything_is_written(run, capsys):
    before = snapshot(run)
    assert evaluate(run, eps="8") == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1
        and "ε is in [0, 1] pixels; for 8/255 pass 0.0314 or --eps 8/255" in err
    )
    assert snapshot(run) == before


def test_out_evaluates_a_run_without_writing_to_it(run, tmp_path):
    before = snapshot(run)
    out = tmp_path / "elsewhere"
    assert evaluate(run, "--out", str(out), attacks="clean,fmn", **{"fmn-steps": "20"}) == 0
    assert snapshot(run) == before
    written = results(out)
    assert written["run"] == str(run) and {"clean", "fmn"} <= set(written["accuracy"])
    for name in ("security_curve.png", "fmn_distances.safetensors", "fmn_security_curve.png"):
        assert (out / name).is_file(), name
    assert_no_leftovers(run, out)
    assert read_run(out).accuracy == {k: v for k, v in written["accuracy"].items()}


def interrupting(name: str, after_calls: int = 0):
    """The registry entry `name`, raising KeyboardInterrupt (Ctrl-C) once it was called
    `after_calls` times."""
    spec, calls = ATTACKS[name], {"count": 0}

    def run(*args, **kwargs):
        if calls["count"] == after_calls:
            raise KeyboardInterrupt
        calls["count"] += 1
        return spec.run(*args, **kwargs)

    return dataclasses.replace(spec, run=run)


def test_ctrl_c_keeps_the_finished_attacks_and_names_the_command(run, monkeypatch, capsys):
    monkeypatch.setitem(ATTACKS, "cw", interrupting("cw"))
    assert evaluate(run, attacks="clean,pgd,cw") == 130
    err = capsys.readouterr().err
    assert "advprune eval" in err and "keeps the attacks it finished" in err
    kept = results(run)
    assert {"clean", "pgd"} <= set(kept["accuracy"]) and "cw" not in kept["accuracy"]
    assert_no_leftovers(run)
    monkeypatch.undo()
    assert evaluate(run, attacks="clean,pgd,cw") == 0
    assert results(run)["accuracy"]["pgd"] == kept["accuracy"]["pgd"]
    assert "cw" in results(run)["accuracy"]


@pytest.mark.slow
def test_an_interrupted_autoattack_resumes_and_keeps_the_attacks_before_it(
    run, monkeypatch, capsys
):
    batch = pyautoattack.AutoAttack.run_standard_evaluation
    calls = {"count": 0, "stop_at": 2}

    def counted(self, *args, **kwargs):
        if calls["count"] == calls["stop_at"]:
            raise KeyboardInterrupt
        calls["count"] += 1
        return batch(self, *args, **kwargs)

    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation", counted)
    flags = {"attacks": "clean,pgd,autoattack", "autoattack-limit": "24", "batch-size": "8"}
    assert evaluate(run, **flags) == 130
    assert "autoattack" not in results(run)["accuracy"] and (run / "autoattack.state").is_file()
    pgd_before = results(run)["accuracy"]["pgd"]
    capsys.readouterr()
    calls.update(count=0, stop_at=None)
    assert evaluate(run, **flags) == 0
    out = capsys.readouterr().out
    assert "clean            " in out and "kept from before" in out
    finished = results(run)
    assert finished["accuracy"]["pgd"] == pgd_before and finished["examples"]["autoattack"] == 24
    assert finished["accuracy"]["autoattack"] <= finished["accuracy"]["pgd_on_autoattack_examples"]


def at_chance_run(source: Path, target: Path, how: str) -> Path:
    """A copy of `source` whose network ignores its input: the last layer's weights zeroed, or
    gated with every unit of the first gate removed."""
    copy_run(source, target)
    model, metadata = load_model(target / "model.safetensors")
    if how == "zeroed":
        with torch.no_grad():
            model.body[-1].weight.zero_()
    else:
        gates = insert_gates(model, torch.zeros(2, 1, 28, 28))
        with torch.no_grad():
            gates[0].a_raw.fill_(-10.0)  # E[π] far below the threshold: every unit removed
        metadata = {**metadata, "method": {"name": "anp-vs", "gates": gates_spec(gates)}}
    save_model(target / "model.safetensors", model.eval(), metadata)
    return target


@pytest.mark.parametrize("how", ["zeroed", "gated"])
def test_a_model_at_chance_fails_loudly_after_writing(tiny_run, tmp_path, capsys, how):
    run = at_chance_run(tiny_run("target"), tmp_path / "chance", how)
    assert evaluate(run, attacks="clean,pgd") == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be trusted" in err
    assert "removed, so the output ignores the input" in err
    assert "attack-failure indicator unbounded attack" in err  # no attack can move it either
    written = results(run)
    assert written["chance_check"]["passed"] is False and written["chance_check"]["empty_layers"]
    assert "pgd" in written["accuracy"]  # the numbers were written first
    report = write_report([run], tmp_path / "report").read_text()
    assert "AT CHANCE" in report


@pytest.mark.slow
def test_ap_benchmark_protocol(run, capsys):
    flags = {"fmn-steps": "30", "autoattack-limit": "16", "indicator-examples": "0"}
    assert evaluate(run, "--protocol", "ap-benchmark", **flags) == 0
    written = results(run, "results-ap-benchmark.json")
    assert not (run / "results.json").exists()  # the run's own evaluation is not this one
    assert written["eps"] == 0.031 and written["protocol"]["name"] == "ap-benchmark"
    departures = written["protocol"]["departures"]
    assert departures == {"limit_test": 64, "autoattack_limit": 16, "fmn_steps": 30}
    assert {"clean", "autoattack", "fmn", "worst_case"} <= set(written["accuracy"])
    assert written["attacks"]["autoattack"]["eps"] == 0.031
    min_norm = written["min_norm"]
    assert min_norm["file"] == "fmn_distances-ap-benchmark.safetensors"
    distances, _ = load_distances(run / min_norm["file"])
    assert len(distances) == 64 and min_norm["examples"] == 64
    assert min_norm["accuracy_at"]["8/255"] == (distances > 8 / 255).float().mean().item()
    assert written["accuracy"]["fmn"] == (distances > 0.031).float().mean().item()
    curve = [point["accuracy"] for point in min_norm["security_curve"]]
    assert curve == sorted(curve, reverse=True) and curve[0] == written["accuracy"]["clean"]
    assert (run / "fmn_security_curve-ap-benchmark.png").is_file()


def load_distances(path):
    from advprune.evaluation.min_norm import load_distances as load

    return load(path)


def gated_run(source: Path, target: Path) -> Path:
    copy_run(source, target)
    model, metadata = load_model(target / "model.safetensors")
    gates = insert_gates(model, torch.zeros(2, 1, 28, 28), dense_a_init=2.0)
    metadata = {**metadata, "method": {"name": "anp-vs", "gates": gates_spec(gates)}}
    save_model(target / "model.safetensors", model.eval(), metadata)
    return target


@pytest.mark.slow
def test_sampled_gates_report_the_stochastic_network_beside_the_deterministic(
    tiny_run, tmp_path, capsys
):
    run = gated_run(tiny_run("target"), tmp_path / "gated")
    flags = {"autoattack-limit": "4", "eot-samples": "2", "limit-test": "32",
             "indicator-examples": "0", "sanity-examples": "0", "latency-repeats": "0"}  # fmt: skip
    code = evaluate(run, "--sampled-gates", attacks="clean,pgd,autoattack", **flags)
    assert code in (0, 3), capsys.readouterr().err  # a gated, sampling model may fail a check
    written = results(run)
    accuracy = written["accuracy"]
    assert {"pgd", "autoattack", "pgd_eot", "autoattack_rand", "clean_sampled"} <= set(accuracy)
    assert written["attacks"]["pgd_eot"]["network"] == "sampled gates"
    assert written["attacks"]["pgd_eot"]["eot_samples"] == 2
    assert written["attacks"]["pgd"]["network"] == "deterministic"
    assert "pgd_eot" not in written["attacks"]["worst_case"]["over"]
    # Seeded gate noise: another evaluation of the stochastic network gives the same numbers.
    again = tmp_path / "again"
    assert evaluate(run, "--sampled-gates", "--out", str(again), attacks="clean,pgd", **flags) in (
        0,
        3,
    )
    assert results(again)["accuracy"]["pgd_eot"] == accuracy["pgd_eot"]
    assert results(again)["accuracy"]["clean_sampled"] == accuracy["clean_sampled"]


def test_sampled_gates_need_a_gated_run(run, capsys):
    assert evaluate(run, "--sampled-gates", attacks="clean") == 2
    err = capsys.readouterr().err
    assert "needs a gated network" in err and "drop the flag" in err
    assert not (run / "results.json").exists()
