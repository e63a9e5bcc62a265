"""Putting beta-Bernoulli gates into any network of conv/linear layers, and taking them out again.

`insert_gates` discovers the layers by running the model once (`trace_layer_chains`): each conv
gets a gate per output channel, applied before the batch norm that directly follows it (conv →
gate → BN → ReLU, the official VGG order), and each linear layer a gate per input unit (so the
logits layer keeps all its outputs). Convs whose output channels are tied by a residual addition
share one gate: Torch-Pruning's DependencyGraph finds these couplings, so removing a channel later
removes it everywhere it is added.

`fold_gates` turns a gated model into a plain one with the deterministic gates multiplied into
the weights; its outputs are those of the gated model in eval mode.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch_pruning
from torch import Tensor, nn

from advprune.core.errors import CheckpointError, ConfigError
from advprune.masks.gates import (
    CHANNELS,
    DEFAULT_A_INIT,
    DEFAULT_PRIOR,
    DEFAULT_TEMPERATURE,
    DEFAULT_THRESHOLD,
    INPUTS,
    BetaBernoulliGate,
    gate_from_spec,
    gate_spec,
)
from advprune.models.features import trace_layer_chains
from advprune.models.layer_types import CONVS

GATE_NAME = "gate"  # the gate is registered as a child of the first layer it gates


def dependency_graph(model: nn.Module, example: Tensor) -> torch_pruning.DependencyGraph:
    """Torch-Pruning's graph of coupled channels, traced on `example` (mode left as it was).

    The trace follows autograd, so frozen parameters (a score phase's) are unfrozen for it: a
    conv whose weight needs no gradient would drop out of the graph with its couplings."""
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        for parameter in frozen:
            parameter.requires_grad_(True)
        with torch.enable_grad():
            graph = torch_pruning.DependencyGraph().build_dependency(
                model, example_inputs=example, verbose=False
            )
    finally:
        for parameter in frozen:
            parameter.requires_grad_(False)
        model.train(was_training)
    return graph


def coupled_channel_groups(model: nn.Module, example: Tensor, convs: list[str]) -> list[list[str]]:
    """`convs` partitioned into groups whose output channels must be pruned together.

    Each group is in the order of `convs`; a conv coupled to a layer outside `convs` (e.g. the
    output layer) is left out with its whole group.
    """
    graph = dependency_graph(model, example)
    names = {module: name for name, module in model.named_modules()}
    wanted = set(convs)
    assigned: set[str] = set()
    groups = []
    for name in convs:
        if name in assigned:
            continue
        conv = model.get_submodule(name)
        group = graph.get_pruning_group(
            conv, torch_pruning.prune_conv_out_channels, list(range(conv.out_channels))
        )
        members = {
            names[item.dep.target.module]
            for item in group
            if isinstance(item.dep.target.module, CONVS)
            and graph.is_out_channel_pruning_fn(item.dep.handler)
        }
        assigned |= members
        if members <= wanted:
            groups.append([c for c in convs if c in members])
    return groups


def attach_gate(model: nn.Module, gate: BetaBernoulliGate) -> None:
    """Register `gate` under its first layer and hook it into every layer and norm it gates."""
    owner = model.get_submodule(gate.layers[0])
    if GATE_NAME in owner._modules:
        raise ConfigError(f"layer {gate.layers[0]} already has a gate; insert gates only once")
    owner.add_module(GATE_NAME, gate)
    gate.train(model.training)
    model.register_forward_pre_hook(gate.start_pass)
    for name in gate.layers:
        layer = model.get_submodule(name)
        if gate.kind == CHANNELS:
            layer.register_forward_hook(gate.gate_output)
        else:
            layer.register_forward_pre_hook(gate.gate_input)
    for name in gate.norms:
        model.get_submodule(name).register_forward_hook(gate.mask_normalized)


def insert_gates(
    model: nn.Module,
    example: Tensor,
    *,
    conv_a_init: float = DEFAULT_A_INIT,
    dense_a_init: float = DEFAULT_A_INIT,
    prior: float = DEFAULT_PRIOR,
    threshold: float = DEFAULT_THRESHOLD,
    temperature: float = DEFAULT_TEMPERATURE,
) -> list[BetaBernoulliGate]:
    """Gate every conv's output channels and every linear layer's inputs, in place.

    `example` is one input batch (≥ 2 examples) used to discover the layers; the state-dict keys
    of the model stay as they were, with each gate's `a_raw`/`b_raw` added under
    "<layer>.gate.". Gates start on the same device as the model.
    """
    chains = trace_layer_chains(model, example)
    device = example.device
    settings = {"prior": prior, "threshold": threshold, "temperature": temperature}
    convs = [
        name
        for name, chain in chains.items()
        if isinstance(model.get_submodule(name), CONVS)
        and not chain.is_output
        and model.get_submodule(name).groups == 1
    ]
    gates = []
    for group in coupled_channel_groups(model, example, convs):
        norms = [chains[name].norm for name in group if chains[name].norm is not None]
        for norm in norms:
            if not model.get_submodule(norm).affine:
                raise ConfigError(
                    f"batch norm {norm} has no affine parameters, so its pruned channels cannot "
                    "be removed exactly; build the model with affine=True"
                )
        units = model.get_submodule(group[0]).out_channels
        gate = BetaBernoulliGate(
            units, kind=CHANNELS, layers=group, norms=norms, a_init=conv_a_init, **settings
        )
        gates.append(gate)
    for name in chains:
        layer = model.get_submodule(name)
        if isinstance(layer, nn.Linear):
            gate = BetaBernoulliGate(
                layer.in_features, kind=INPUTS, layers=[name], a_init=dense_a_init, **settings
            )
            gates.append(gate)
    if not gates:
        raise ConfigError("the model has no conv or linear layer to gate")
    for gate in gates:
        attach_gate(model, gate.to(device))
    return gates


def insert_gates_from_spec(model: nn.Module, specs: list[dict]) -> list[BetaBernoulliGate]:
    """Rebuild the gates described by `gates_spec` (e.g. before loading a saved gated model)."""
    device = next(model.parameters()).device
    try:
        gates = [gate_from_spec(spec, device) for spec in specs]
        for gate in gates:
            attach_gate(model, gate)
    except (KeyError, AttributeError, TypeError) as err:
        raise CheckpointError(
            f"the saved gate description does not fit this model ({err}); the file was written "
            "for another architecture"
        ) from err
    return gates


def gates_spec(gates: list[BetaBernoulliGate]) -> list[dict]:
    return [gate_spec(gate) for gate in gates]


def find_gates(model: nn.Module) -> list[BetaBernoulliGate]:
    """The gates inside `model`, in insertion order (registration order of their owners)."""
    return [module for module in model.modules() if isinstance(module, BetaBernoulliGate)]


def gate_parameters(gates: list[BetaBernoulliGate]) -> list[nn.Parameter]:
    return [parameter for gate in gates for parameter in gate.parameters()]


def total_kl(gates: list[BetaBernoulliGate]) -> Tensor:
    """Σ KL(q(π) ‖ p(π)) over every unit of every gate."""
    return torch.stack([gate.kl() for gate in gates]).sum()


@contextmanager
def held_sample(
    gates: list[BetaBernoulliGate],
    generator: torch.Generator | None = None,
    noise_shard: tuple[int, int] = (0, 1),
) -> Iterator[None]:
    """Within the block every forward pass uses one gate draw (e.g. clean and adversarial), taken
    from `generator` for this process's `noise_shard` (rank, world_size) of the global batch."""
    for gate in gates:
        gate.forget_sample()
        gate.hold_sample = True
        gate.generator, gate.noise_shard = generator, noise_shard
    try:
        yield
    finally:
        for gate in gates:
            gate.hold_sample = False
            gate.generator, gate.noise_shard = None, (0, 1)
            gate.forget_sample()


def _hooks_of_gates(hooks: dict) -> list[int]:
    return [
        key
        for key, hook in hooks.items()
        if isinstance(getattr(hook, "__self__", None), BetaBernoulliGate)
    ]


def remove_gates(model: nn.Module) -> nn.Module:
    """Drop every gate and gate hook in place; the model is the plain network again."""
    for module in model.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for key in _hooks_of_gates(hooks):
                del hooks[key]
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)
                module._forward_pre_hooks_with_kwargs.pop(key, None)
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if isinstance(child, BetaBernoulliGate):
                del module._modules[name]
    return model


def _zero_consumers_of_pruned_channels(
    model: nn.Module, example: Tensor, pruned: dict[str, list[int]]
) -> None:
    """Zero the input weights that read pruned channels (exact: those channels are 0)."""
    if not any(pruned.values()):
        return
    graph = dependency_graph(model, example)
    for name, channels in pruned.items():
        if not channels:
            continue
        conv = model.get_submodule(name)
        group = graph.get_pruning_group(conv, torch_pruning.prune_conv_out_channels, channels)
        for item in group:
            layer = item.dep.target.module
            if not graph.is_in_channel_pruning_fn(item.dep.handler):
                continue
            if isinstance(layer, nn.Linear) or (isinstance(layer, CONVS) and layer.groups == 1):
                layer.weight[:, item.idxs] = 0


@torch.no_grad()
def fold_gates(model: nn.Module, example: Tensor) -> nn.Module:
    """A plain copy of a gated `model` whose eval-mode outputs equal the gated model's.

    Each conv's output channels and each linear layer's input columns are multiplied by the
    deterministic gate (E[π], or 0 where pruned); the batch norms after gated convs get γ = β = 0
    on pruned channels, which is what the gated model's post-BN mask does; and the weights that
    read a pruned channel are zeroed, since that channel is 0. The copy is in eval mode.
    """
    for gate in find_gates(model):
        gate.forget_sample()
    plain = copy.deepcopy(model).eval()
    pruned: dict[str, list[int]] = {}
    for gate in find_gates(plain):
        scale = gate.scale()
        if gate.kind == INPUTS:
            layer = plain.get_submodule(gate.layers[0])
            layer.weight.mul_(scale.to(layer.weight.dtype))
            continue
        for name in gate.layers:
            conv = plain.get_submodule(name)
            conv.weight.mul_(scale.view(-1, *[1] * (conv.weight.dim() - 1)))
            if conv.bias is not None:
                conv.bias.mul_(scale)
        dropped = ~gate.keep()
        for name in gate.norms:
            norm = plain.get_submodule(name)
            norm.weight[dropped] = 0
            norm.bias[dropped] = 0
        pruned[gate.layers[0]] = dropped.nonzero().flatten().tolist()
    remove_gates(plain)
    _zero_consumers_of_pruned_channels(plain, example, pruned)
    return plain.eval()


def gate_summary(gates: list[BetaBernoulliGate]) -> dict:
    """Units kept and pruned, overall (`unit_sparsity`, the paper's "sparsity") and per gate."""
    per_gate = {}
    for gate in gates:
        per_gate[gate.layers[0]] = {
            "kind": gate.kind,
            "layers": gate.layers,
            "units": gate.units,
            "kept": int(gate.keep().sum()),
        }
    total = sum(entry["units"] for entry in per_gate.values())
    kept = sum(entry["kept"] for entry in per_gate.values())
    return {
        "unit_sparsity": 1 - kept / total if total else 0.0,
        "units": {"total": total, "kept": kept, "per_gate": per_gate},
    }
