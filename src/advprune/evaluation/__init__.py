"""Evaluation: accuracy under attacks, size and cost, and gradient-masking checks."""

from advprune.evaluation.config import EvalConfig
from advprune.evaluation.evaluate import evaluate_model, evaluate_run
from advprune.evaluation.robustness import accuracy

__all__ = ["EvalConfig", "accuracy", "evaluate_model", "evaluate_run"]
