"""Networks for the parallel-reproduction tests (tests/test_parallel_reproduce.py).

`Barrier` builds only once a second process has asked for one too: each process leaves a marker
in $ADVPRUNE_BARRIER and waits, up to $ADVPRUNE_BARRIER_TIMEOUT seconds, for a second marker. Two
steps that train it get past it only if they run at the same time; a later build in the same
process (the evaluation loading the model) passes at once. `Broken` cannot be built at all.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch import nn


def Barrier(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    folder = Path(os.environ["ADVPRUNE_BARRIER"])
    (folder / str(os.getpid())).touch()
    deadline = time.monotonic() + float(os.environ.get("ADVPRUNE_BARRIER_TIMEOUT", "120"))
    while len(list(folder.iterdir())) < 2:
        if time.monotonic() > deadline:
            raise RuntimeError("no other step is building a Barrier: the steps run one by one")
        time.sleep(0.05)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, num_classes))


def Broken(num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    raise RuntimeError("this network cannot be built")
