"""Pipelines: run a registered method into a run directory (train, prune, export, demo).

`train_phase` is the one way a training phase runs (the dense run, a method's fine-tuning,
HYDRA's score phase); `prune_run` runs any registered method from a trained run; `export_run`
writes the physically smaller network of a run whose units were removed.
"""

from advprune.pipelines.export import export_run
from advprune.pipelines.prune import Source, load_source, prune_run
from advprune.pipelines.train import train_phase

__all__ = ["Source", "export_run", "load_source", "prune_run", "train_phase"]
