"""The CLI end to end: a train → eval round trip (bad input: tests/test_bad_inputs.py)."""

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


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(Exception, match="unknown model"):
        main(["--debug", *TRAIN, "--model", "lenet6", "--run-dir", str(tmp_path)])


def test_train_then_eval(tmp_path, capsys):
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
    assert set(results["accuracy"]) == {"clean", "fgsm", "pgd", "worst_case"}
    assert results["chance_check"]["passed"], results["accuracy"]
    assert all(0 <= v <= 1 for v in results["accuracy"].values())
    assert results["params"] == 266_610 and results["sparsity"] == 0.0
    assert results["flops"] > 0


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
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("advprune: error: unknown model 'lenet6'")
    assert "lenet5-caffe" in line and "package.module:ClassOrFactory" in line  # the fixes


def test_a_crash_below_python_prints_where_it_happened():
    """A command that dies in C++ (here os.abort in its handler) leaves a Python traceback, the only
    trace a torchrun rank would leave of where it died."""
    crash = (
        "import os, sys\n"
        "from advprune.cli import listing, main\n"
        "listing.run = lambda args: os.abort()\n"
        "sys.exit(main(['list', 'methods']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    env.pop("PYTHONFAULTHANDLER", None)
    done = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert "Fatal Python error: Aborted" in done.stderr
    assert "<lambda>" in done.stderr  # the frame that crashed
