"""The CLI end to end: one-line errors for bad input, and a train → eval round trip."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from advprune.cli import main

TRAIN = [
    "train",
    "--dataset",
    "fashion-mnist",
    "--model",
    "lenet300-100",
    "--epochs",
    "1",
    "--limit-train",
    "256",
    "--limit-test",
    "64",
    "--batch-size",
    "64",
    "--attack-steps",
    "2",
    "--monitor-examples",
    "32",
]


def run_cli(args, capsys):
    code = main(["--quiet", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "imagenet-22k"], "unknown dataset 'imagenet-22k'"),
        (["--model", "lenet6"], "unknown model 'lenet6'"),
        (["--eps", "-0.1"], "eps must be a finite number ≥ 0"),
        (["--objective", "mart2"], "unknown objective 'mart2'"),
        (["--optimizer", "lion"], "unknown optimizer 'lion'"),
        (["--limit-train", "0"], "limit_train must be ≥ 1"),
        (
            ["--dataset", "cifar10", "--data-dir", "{tmp}/nowhere"],
            "pass --data-dir DIR or --download",
        ),
        (["--batch-size", "100000"], "lower --batch-size"),
    ],
)
def test_bad_training_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    run_dir = tmp_path / "run"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run_cli([*TRAIN, "--run-dir", str(run_dir), *args], capsys)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("advprune: error: ")
    assert "Traceback" not in err
    assert not [f for f in files_under(run_dir) if f != "config.yaml"]


def test_run_dir_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "run"
    target.write_text("precious")
    code, _, err = run_cli([*TRAIN, "--run-dir", str(target)], capsys)
    assert code == 2 and "is a file" in err
    assert target.read_text() == "precious"


def test_eval_of_a_missing_or_corrupt_run(tmp_path, capsys):
    code, _, err = run_cli(["eval", str(tmp_path / "missing")], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    code, _, err = run_cli(["eval", str(tmp_path)], capsys)
    assert code == 2 and "corrupt or truncated" in err
    code, _, err = run_cli(["eval", str(tmp_path), "--attacks", "clean,deepfool"], capsys)
    assert code == 2 and "unknown attack 'deepfool'" in err


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="unknown model"):
        main(["--debug", *TRAIN, "--model", "lenet6", "--run-dir", str(tmp_path)])


def test_train_eval_and_resume_mismatch(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, _ = run_cli([*TRAIN, "--run-dir", str(run_dir)], capsys)
    assert code == 0 and "model.safetensors" in out
    code, out, _ = run_cli(
        [
            "eval",
            str(run_dir),
            "--limit-test",
            "64",
            "--attacks",
            "clean,fgsm,pgd",
            "--sanity-examples",
            "32",
        ],
        capsys,
    )
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["accuracy"]) == {"clean", "fgsm", "pgd"}
    assert all(0 <= v <= 1 for v in results["accuracy"].values())
    assert results["params"] == 266_610 and results["sparsity"] == 0.0
    assert results["flops"] > 0

    code, _, err = run_cli([*TRAIN, "--run-dir", str(run_dir), "--resume", "--eps", "0.2"], capsys)
    assert code == 2 and "--resume: the run" in err and "eps=0.1" in err


def test_python_dash_m_entry_point(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "advprune",
            "train",
            "--model",
            "lenet6",
            "--run-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "advprune: error: unknown model 'lenet6'; choose one of lenet300-100, lenet5-caffe, "
        "vgg16, resnet18, wrn28-10, wrn34-10"
    )
