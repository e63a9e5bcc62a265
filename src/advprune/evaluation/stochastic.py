"""A gated (ANP-VS) network with its gates sampling, as in training: the stochastic network.

ANP-VS evaluates the deterministic network, each unit scaled by E[π] (Madaan et al., 2020; the
official code), and that is what `advprune eval` reports under the usual keys. The network that
was trained, though, draws z ~ relaxed Bernoulli(π) at every pass (masks/gates.py); an attack on
it must take the expectation over the draws (EOT, Athalye et al., 2018), or the randomness alone
can make it look robust. `--sampled-gates` reports that network beside the deterministic one,
attacked with EOT-PGD and AutoAttack's `rand` version.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from advprune.core.errors import ConfigError
from advprune.masks.gated import find_gates


class SampledGates(nn.Module):
    """`model` with every gate drawing new noise at every forward pass, from `generator` alone
    (never the global RNG), and every other module in eval mode (frozen BN statistics, no
    dropout). `eval()` and `train()` keep it so: an attack that switches modes (AutoAttack does)
    still attacks the stochastic network.
    """

    def __init__(self, model: nn.Module, generator: torch.Generator) -> None:
        super().__init__()
        self.model = model
        self.gates = find_gates(model)
        self.generator = generator
        self.train(False)

    def train(self, mode: bool = True) -> SampledGates:
        self.training = mode
        self.model.eval()
        for gate in self.gates:
            gate.train(True)
            gate.hold_sample = False
            gate.generator, gate.noise_shard = self.generator, (0, 1)
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


@contextlib.contextmanager
def sampled_gates(model: nn.Module, seed: int) -> Iterator[SampledGates]:
    """The stochastic network of a gated `model` for the block, its gate noise seeded by `seed`;
    afterwards the gates are deterministic again and the model is in eval mode."""
    gates = find_gates(model)
    if not gates:
        raise ConfigError(
            "--sampled-gates needs a gated network (a run of `advprune prune --method anpvs`); "
            "drop the flag for this run"
        )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    try:
        yield SampledGates(model, generator)
    finally:
        for gate in gates:
            gate.generator = None
        model.eval()
