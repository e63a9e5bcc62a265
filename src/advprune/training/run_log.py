"""Where a run's numbers go: metrics.jsonl (one JSON line per epoch, rewritten atomically) and,
with `--tensorboard`, TensorBoard event files in RUN_DIR/tensorboard.

Event files are an append-only stream, as TensorBoard expects. After a resume the new writer
purges the events the interrupted run logged past the checkpoint (`purge_step`), so the curves
show each step once.
"""

from __future__ import annotations

import json
from typing import Any

from advprune.core.errors import ConfigError
from advprune.core.io import atomic_write_text
from advprune.core.run_dir import RunDir


class RunLog:
    """Writes metrics for rank 0; a disabled log (the other ranks) writes nothing."""

    def __init__(self, run: RunDir, *, enabled: bool, tensorboard: bool, resume_step: int) -> None:
        self.run = run
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                raise ConfigError(
                    f"--tensorboard needs the tensorboard package ({err}); pip install tensorboard"
                ) from err
            # Events after the checkpoint's step were logged by the interrupted run: purge them.
            purge_step = resume_step + 1 if resume_step else None
            self.writer = SummaryWriter(str(run.tensorboard), purge_step=purge_step)

    def step(self, global_step: int, values: dict[str, float]) -> None:
        """Per-step scalars (batch loss, learning rate) under "train/"."""
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, global_step)

    def epoch(self, global_step: int, history: list[dict[str, Any]]) -> None:
        """The whole history to metrics.jsonl; the latest record's numbers under "epoch/"."""
        if not self.enabled:
            return
        atomic_write_text(self.run.metrics, "".join(json.dumps(r) + "\n" for r in history))
        if self.writer is not None:
            for key, value in history[-1].items():
                if key != "epoch" and isinstance(value, int | float):
                    self.writer.add_scalar(f"epoch/{key}", value, global_step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
