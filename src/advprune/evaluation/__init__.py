"""Evaluation: accuracy under attacks, size and cost, and gradient-masking checks."""

from advprune.evaluation.config import EvalConfig
from advprune.evaluation.evaluate import evaluate_model, evaluate_run
from advprune.evaluation.robustness import accuracy
from advprune.evaluation.table import format_results

__all__ = ["EvalConfig", "accuracy", "evaluate_model", "evaluate_run", "format_results"]
