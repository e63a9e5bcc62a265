"""Evaluation: accuracy under attacks, attack-failure indicators, size, cost and sanity checks."""

from advprune.evaluation.config import EvalConfig
from advprune.evaluation.evaluate import evaluate_model
from advprune.evaluation.robustness import accuracy, correctness
from advprune.evaluation.run import evaluate_run, results_file

__all__ = [
    "EvalConfig",
    "accuracy",
    "correctness",
    "evaluate_model",
    "evaluate_run",
    "results_file",
]
