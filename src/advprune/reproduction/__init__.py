"""Reproductions: a paper table's recipe run end to end (train, prune, evaluate, report)."""

from advprune.reproduction.plan import Plan, Step, StepKind, make_plan, runnable_steps
from advprune.reproduction.runner import default_root, reproduce

__all__ = [
    "Plan",
    "Step",
    "StepKind",
    "default_root",
    "make_plan",
    "reproduce",
    "runnable_steps",
]
