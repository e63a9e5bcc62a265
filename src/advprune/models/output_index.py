"""`OutputIndex`: the last layer behind a network whose forward returns several outputs.

A researcher's network often returns `(logits, features)`; attacks and losses need the logits
alone. `--output-index 0` (the Python API's `output_index=0`) appends this layer, which has no
weights, so the saved state dict is the network's own.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from advprune.core.errors import ConfigError


class OutputIndex(nn.Module):
    """Output number `index` of the tuple the layer before returns."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, outputs: Any) -> Any:
        if not isinstance(outputs, tuple | list):
            raise ConfigError(
                f"--output-index {self.index} picks from a forward that returns a tuple, but the "
                f"network returns a {type(outputs).__name__}; drop --output-index"
            )
        if not -len(outputs) <= self.index < len(outputs):
            raise ConfigError(
                f"--output-index {self.index} is out of range: the network returns "
                f"{len(outputs)} outputs; pass the position of the logits (0 to {len(outputs) - 1})"
            )
        return outputs[self.index]

    def extra_repr(self) -> str:
        return f"index={self.index}"
