"""Training: one trainer for standard, PGD-AT and TRADES training, with exact resume."""

from advprune.training.config import TrainConfig
from advprune.training.trainer import train

__all__ = ["TrainConfig", "train"]
