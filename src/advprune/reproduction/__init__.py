"""Reproductions: a paper table's recipe run end to end (train, prune, evaluate, report)."""

from advprune.reproduction.plan import PRUNE_METHODS, Method, Plan, Step, make_plan, runnable_steps
from advprune.reproduction.runner import default_root, reproduce

__all__ = [
    "PRUNE_METHODS",
    "Method",
    "Plan",
    "Step",
    "default_root",
    "make_plan",
    "reproduce",
    "runnable_steps",
]
