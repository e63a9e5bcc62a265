"""Beta-Bernoulli gates (Lee et al., 2018, "Adaptive network sparsification"; ANP-VS sec. 3.2).

One gate per unit: z_k ~ Bernoulli(π_k), with prior π_k ~ Beta(α/K, 1) and variational posterior
q(π_k) = Kumaraswamy(a_k, b_k), which can be sampled by reparameterisation,
π = (1 − u^{1/b})^{1/a} with u ~ U(0, 1). Training multiplies each unit by a relaxed Bernoulli
sample of temperature 0.1; evaluation is deterministic and multiplies it by E[π] =
b·B(1 + 1/a, b), or by 0 where E[π] ≤ 1e-3, the threshold at which the unit is pruned.

A gate acts on its layers through forward hooks that are bound methods of the gate, so a model
keeps its own modules and state-dict keys (the gate's parameters are added under the layer it is
registered on), `copy.deepcopy` of a gated model copies working gates, and `remove_gates` can find
and drop every hook. Where several layers share one gate (channels tied by a residual addition)
one sample serves the whole forward pass: each pass starts with a fresh sample unless
`hold_sample` is set, which lets a clean and an adversarial pass see the same gates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EULER_GAMMA = 0.5772156649015329

# Gate kinds: a gate on a conv's output channels, or on a linear layer's input units.
CHANNELS = "channels"
INPUTS = "inputs"

# Official initialisation: b = softplus(0.5413) = 1; a = softplus(-1) ≈ 0.31 (LeNet; VGG conv: 2).
DEFAULT_A_INIT = -1.0
DEFAULT_B_INIT = 0.5413
DEFAULT_PRIOR = 1e-4  # α/K of the Beta prior, as the official code sets it for every gate
DEFAULT_THRESHOLD = 1e-3
DEFAULT_TEMPERATURE = 0.1


def kumaraswamy_mean(a: Tensor, b: Tensor) -> Tensor:
    """E[π] = b·B(1 + 1/a, b) for π ~ Kumaraswamy(a, b), through log-gamma for stability."""
    return b * torch.exp(torch.lgamma(1 + 1 / a) + torch.lgamma(b) - torch.lgamma(1 + 1 / a + b))


def kumaraswamy_beta_kl(a: Tensor, b: Tensor, prior: float) -> Tensor:
    """KL(Kumaraswamy(a, b) ‖ Beta(α', 1)) per unit, α' = α/K (Nalisnick & Smyth, 2017):

    (1 − α'/a)(−γ − ψ(b) − 1/b) + log(a·b/α') − (b − 1)/b; the series term vanishes for β = 1.
    """
    return (
        (1 - prior / a) * (-EULER_GAMMA - torch.digamma(b) - 1 / b)
        + torch.log(a * b / prior)
        - (b - 1) / b
    )


class BetaBernoulliGate(nn.Module):
    """Gates for `units` channels or input units of the layers named in `layers`."""

    def __init__(
        self,
        units: int,
        *,
        kind: str,
        layers: Sequence[str],
        norms: Sequence[str] = (),
        a_init: float = DEFAULT_A_INIT,
        b_init: float = DEFAULT_B_INIT,
        prior: float = DEFAULT_PRIOR,
        threshold: float = DEFAULT_THRESHOLD,
        temperature: float = DEFAULT_TEMPERATURE,
    ) -> None:
        super().__init__()
        if kind not in (CHANNELS, INPUTS):
            raise ValueError(f"gate kind must be {CHANNELS!r} or {INPUTS!r}, got {kind!r}")
        self.a_raw = nn.Parameter(torch.full((units,), float(a_init)))
        self.b_raw = nn.Parameter(torch.full((units,), float(b_init)))
        self.kind = kind
        self.layers = list(layers)
        self.norms = list(norms)
        self.prior = prior
        self.threshold = threshold
        self.temperature = temperature
        self.hold_sample = False
        # Where training draws come from (the global RNG if None) and which rows of a global
        # batch this process holds: set by `held_sample`, so that data-parallel ranks draw what
        # one process would (as `attacks.Ball` does for random starts).
        self.generator: torch.Generator | None = None
        self.noise_shard: tuple[int, int] = (0, 1)
        self._sample: Tensor | None = None
        self._eval_scale: tuple[tuple[int, ...], Tensor] | None = None

    @property
    def units(self) -> int:
        return self.a_raw.numel()

    @property
    def a(self) -> Tensor:
        """a = softplus(max(â, −10)), the official parameterisation."""
        return F.softplus(self.a_raw.clamp(min=-10.0))

    @property
    def b(self) -> Tensor:
        """b = softplus(clip(b̂, −10, 50))."""
        return F.softplus(self.b_raw.clamp(-10.0, 50.0))

    def kl(self) -> Tensor:
        """KL(q(π) ‖ p(π)) summed over the units (the β·KL/N term of both ANP-VS objectives)."""
        return kumaraswamy_beta_kl(self.a, self.b, self.prior).sum()

    def expected_pi(self) -> Tensor:
        return kumaraswamy_mean(self.a, self.b)

    def keep(self) -> Tensor:
        """Units that survive pruning: E[π] > threshold."""
        return self.expected_pi() > self.threshold

    def scale(self) -> Tensor:
        """The deterministic gate of evaluation: E[π] where kept, 0 where pruned."""
        expected = self.expected_pi()
        return torch.where(expected > self.threshold, expected, torch.zeros_like(expected))

    def sample_pi(self) -> Tensor:
        """π = (1 − u^{1/b})^{1/a}, u ~ U(0, 1): one reparameterised draw per unit."""
        u = self._uniform(self.units).clamp(1e-10, 1 - 1e-10)
        return (1 - u.pow(1 / self.b)).pow(1 / self.a)

    def sample_gates(self, batch: int) -> Tensor:
        """Relaxed Bernoulli(π) gates, one per example and unit: σ((logit u + logit π)/τ)."""
        pi = self.sample_pi()
        u = self._uniform(self.units, batch)
        return torch.sigmoid((_logit(u) + _logit(pi)) / self.temperature)

    def _uniform(self, units: int, batch: int | None = None) -> Tensor:
        """U(0, 1) noise: (units,) shared by every example, or (batch, units) for this process's
        rows of the global batch, drawn whole on the generator's device and then sliced."""
        rank, world_size = self.noise_shard if batch is not None else (0, 1)
        rows = 1 if batch is None else batch
        device = self.a_raw.device if self.generator is None else self.generator.device
        shape, dtype = (rows * world_size, units), self.a_raw.dtype
        u = torch.rand(shape, generator=self.generator, device=device, dtype=dtype)
        u = u[rank::world_size].to(self.a_raw.device)
        return u[0] if batch is None else u

    def _deterministic(self) -> Tensor:
        """`scale()` without autograd history, recomputed only when a or b changed: an attack
        runs the evaluated model thousands of times, and the gates are fixed then."""
        a, b = self.a_raw, self.b_raw
        version = (a.data_ptr(), a._version, b.data_ptr(), b._version)
        if self._eval_scale is None or self._eval_scale[0] != version:
            with torch.no_grad():
                self._eval_scale = (version, self.scale())
        return self._eval_scale[1]

    def _gates(self, batch: int) -> Tensor:
        """(batch, units) gates in training, shared by all uses in a pass; (1, units) in eval."""
        if not self.training:
            return self._deterministic()[None]
        if self._sample is None or self._sample.shape[0] != batch:
            self._sample = self.sample_gates(batch)
        return self._sample

    def forget_sample(self) -> None:
        """Drop the current draw (it holds autograd history, which `copy.deepcopy` refuses)."""
        self._sample = None

    def train(self, mode: bool = True) -> BetaBernoulliGate:
        self.forget_sample()
        self._eval_scale = None
        return super().train(mode)

    # Hooks. Bound methods, so that deepcopy rebinds them to the copied gate.

    def start_pass(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook on the whole model: a new pass draws new gates unless held."""
        if not self.hold_sample:
            self.forget_sample()

    def gate_output(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        """Forward hook on a conv: multiply each output channel by its gate."""
        gates = self._gates(output.shape[0]).to(output.dtype)
        return output * gates.view(*gates.shape, *[1] * (output.dim() - 2))

    def gate_input(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook on a linear layer: multiply each input unit by its gate."""
        x = args[0]
        gates = self._gates(x.shape[0]).to(x.dtype)
        gates = gates.view(gates.shape[0], *[1] * (x.dim() - 2), self.units)
        return (x * gates, *args[1:])

    def mask_normalized(self, module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        """Forward hook on the batch norm after a gated conv: pruned channels output exactly 0.

        With the order conv → gate → BN, a channel gated to 0 would still leave BN's shift β −
        γμ/σ behind; removing the channel must remove that too, or the exported network would
        differ from the gated one.
        """
        keep = self.keep() if self.training else self._deterministic() > 0
        return output * keep.to(output.dtype).view(1, -1, *[1] * (output.dim() - 2))

    def extra_repr(self) -> str:
        return f"{self.units} {self.kind}, layers={self.layers}, norms={self.norms}"


def _logit(p: Tensor) -> Tensor:
    """log p − log(1 − p) with the official 1e-20 guard against log 0."""
    return torch.log(p + 1e-20) - torch.log(1 - p + 1e-20)


def gate_from_spec(spec: dict, device: torch.device | str = "cpu") -> BetaBernoulliGate:
    """Rebuild a gate (parameters at their initial values) from `gate_spec`'s description."""
    settings = {k: spec[k] for k in ("prior", "threshold", "temperature")}
    gate = BetaBernoulliGate(
        spec["units"], kind=spec["kind"], layers=spec["layers"], norms=spec["norms"], **settings
    )
    return gate.to(device)


def gate_spec(gate: BetaBernoulliGate) -> dict:
    """What rebuilding `gate` needs, as JSON (its trained parameters travel in the state dict)."""
    return {
        "units": gate.units,
        "kind": gate.kind,
        "layers": gate.layers,
        "norms": gate.norms,
        "prior": gate.prior,
        "threshold": gate.threshold,
        "temperature": gate.temperature,
    }
