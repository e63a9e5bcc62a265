"""MAD saliency: its cost against adversarial training, its matrix form, and its rank stability.

Prints, on the current device and in one run:
1. where a batch's time goes: the pass's PGD, its mask steps and its K-FAC pass with the saliency,
   against an epoch's PGD and its SGD step (median over the first batches);
2. the time of one saliency pass (PGD + 20 mask steps + one K-FAC pass per batch) over N batches
   against one PGD-AT epoch (PGD + SGD step) over the same N batches, and their ratio, for the
   published signed form (`mad`) and the removal form (`mad-obd`);
3. the time of our matrix form S = ½ diag(G) Δw ⊙ (Δw A) against the official code's per-row loop
   (an in × in block per output row), on the same layers and factors of one batch, and the
   speed-up;
4. for each form, the Spearman rank correlation against the full pass of the saliency from the
   first 25 %, 35 % and 50 % of the batches (`--fractions`) and from all batches with 5 and 10
   mask steps instead of 20 (`--fewer-mask-steps`), from the first 25 % of the images in smaller
   batches (`--smaller-batches`: more mask optimisations, each on fewer images), and with `--bf16`
   of the pass in bf16 autocast
   (PGD and mask steps; the saliency itself in float32) on all and on the first half of the
   batches, the overlap of the weights each would prune at 90 %, and its time against the
   (float32) epoch; and that of a second full pass with PGD from other random starts: how far
   the full pass itself moves with its PGD seed.

The model is first adversarially trained for a few epochs on the same batches, in the layout the
demo trains in (channels_last; `--layout nchw` for the other), which the pass then runs in too.
The default 47 batches are the demo's MAD data (6,000 images): a subset's agreement with the full
pass grows with the number of batches it averages, so it is measured at the size it is used at.

    python benchmarks/mad_saliency.py [--model lenet5-caffe] [--batches 47] [--device cuda]
                                      [--threads 1] [--fractions 0.25 0.35 0.5] [--layout nchw]
                                      [--smaller-batches 64 32] [--bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from scipy.stats import spearmanr
from torch import Tensor

from advprune.attacks import pgd
from advprune.core.device import resolve_device
from advprune.data import BatchLoader, get_spec, load_dataset
from advprune.masks import layer_of, prunable_layers, prunable_parameters
from advprune.methods import compute_saliency, mad, mad_masks
from advprune.methods.kfac import kfac_factors
from advprune.methods.mad import (
    as_matrix,
    damage_saliency,
    masked_forward,
    masked_saliency,
    optimise_masks,
    removed_part,
)
from advprune.models import architecture, create_model, input_memory_format
from advprune.training.objectives import AttackSettings, pgd_at


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def clock(device: torch.device) -> Callable[[], float]:
    """CPU seconds of this process on a CPU device, so that other jobs on a shared machine do not
    enter the ratios (run with --threads 1: with more, idle threads spinning count too); wall
    seconds on a GPU."""
    return time.process_time if device.type == "cpu" else time.perf_counter


def timed(device: torch.device, function: Callable, *args, **kwargs) -> tuple[float, Any]:
    """Seconds `function(*args, **kwargs)` takes on `device` (see `clock`), and its result."""
    now = clock(device)
    synchronize(device)
    started = now()
    result = function(*args, **kwargs)
    synchronize(device)
    return now() - started, result


def per_row_saliency(delta: Tensor, input_covariance: Tensor, gradient_diagonal: Tensor) -> Tensor:
    """The official loop: per output row i, the diagonal of the block ½ G_ii Δw_iᵀ (Δw_i A)."""
    rows_per_group = delta.shape[0] // input_covariance.shape[0]
    saliency = torch.empty_like(delta)
    for i in range(delta.shape[0]):
        block = (0.5 * gradient_diagonal[i] * delta[i].view(-1, 1)) @ (
            delta[i].view(1, -1) @ input_covariance[i // rows_per_group]
        )
        saliency[i] = block.diag()
    return saliency


def adversarial_training_epoch(model, loader, attack: AttackSettings, epoch: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    layout = input_memory_format(model)
    for x, y in loader.epoch(epoch):
        x = x.contiguous(memory_format=layout)  # as the trainer does under --channels-last
        loss = pgd_at(model, x, y, attack, beta=0.0).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()


def stage_breakdown(model, loader, args, device, batches: int = 5) -> None:
    """Median seconds per batch of each stage of the pass and of the epoch, on the first batches."""
    parameters = prunable_parameters(model, include_bias=True)
    trained = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the model stays as trained
    times: dict[str, list[float]] = {}
    layout = input_memory_format(model)
    for _, (x, y) in zip(range(batches), loader.epoch(0), strict=False):
        x = x.contiguous(memory_format=layout)
        pgd_time, x_adv = timed(device, pgd, model, x, y, args.eps, steps=args.attack_steps)
        mask_time, logits = timed(
            device, optimise_masks, model, x_adv, y, parameters, steps=args.mask_steps, lr=0.1
        )
        for form in ("paper", "removal"):
            seconds, _ = timed(
                device, masked_saliency, model, x_adv, y, parameters, logits, form=form
            )
            times.setdefault(f"K-FAC pass and saliency ({form})", []).append(seconds)
        step_time, _ = timed(device, _sgd_step, model, optimizer, x_adv, y)
        times.setdefault("PGD", []).append(pgd_time)
        times.setdefault("mask steps", []).append(mask_time)
        times.setdefault("SGD step", []).append(step_time)
    model.load_state_dict(trained)
    median = {stage: statistics.median(values) for stage, values in times.items()}
    epoch = median["PGD"] + median["SGD step"]
    print(f"where a batch's time goes (median of {batches} batches, ms):")
    print(
        f"  epoch: PGD-{args.attack_steps} {median['PGD'] * 1e3:8.1f}   SGD step "
        f"{median['SGD step'] * 1e3:8.1f}   total {epoch * 1e3:8.1f}"
    )
    for form, name in (("paper", "mad"), ("removal", "mad-obd")):
        kfac = median[f"K-FAC pass and saliency ({form})"]
        total = median["PGD"] + median["mask steps"] + kfac
        print(
            f"  {name + ' pass:':<16}PGD {median['PGD'] / total:5.1%}   {args.mask_steps} mask "
            f"steps {median['mask steps'] * 1e3:8.1f} ({median['mask steps'] / total:5.1%})   "
            f"K-FAC {kfac * 1e3:6.1f} ({kfac / total:5.1%})   total {total * 1e3:8.1f} "
            f"= {total / epoch:.2f}x the epoch's"
        )


def _sgd_step(model, optimizer, x_adv, y) -> None:
    model.train()
    loss = torch.nn.functional.cross_entropy(model(x_adv), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.eval()


def matrix_form_speedup(model, loader, args, device) -> None:
    x, y = next(iter(loader.epoch(0)))
    x = x.contiguous(memory_format=input_memory_format(model))
    x_adv = pgd(model, x, y, args.eps, steps=args.attack_steps)
    parameters = prunable_parameters(model, include_bias=True)
    logits = optimise_masks(model, x_adv, y, parameters, steps=args.mask_steps, lr=0.1)
    layers = {layer_of(name): model.get_submodule(layer_of(name)) for name in parameters}
    factors = kfac_factors(layers, masked_forward(model, logits), x_adv, y)
    print("matrix form against the official per-row loop (one batch's factors):")
    total_ours = total_loop = 0.0
    for name, layer in layers.items():
        delta = as_matrix(removed_part(name, layer, logits).values())
        inputs = (
            delta,
            factors[name].input_covariance,
            factors[name].gradient_covariance.diagonal(),
        )
        ours, matrix = min(
            (timed(device, damage_saliency, *inputs) for _ in range(5)),
            key=lambda result: result[0],
        )
        loop, reference = timed(device, per_row_saliency, *inputs)
        error = (matrix - reference).abs().max() / reference.abs().max().clamp_min(1e-30)
        total_ours, total_loop = total_ours + ours, total_loop + loop
        print(
            f"  {name:<10} {tuple(delta.shape)!s:<12} matrix {ours * 1e3:>9.2f} ms   "
            f"per-row {loop * 1e3:>9.1f} ms   {loop / ours:>7.0f}x   rel. diff {error:.1e}"
        )
    print(
        f"  all layers              matrix {total_ours * 1e3:>9.2f} ms   per-row "
        f"{total_loop * 1e3:>9.1f} ms   {total_loop / total_ours:>7.0f}x"
    )


def flat(scores: dict[str, Tensor]) -> Tensor:
    return torch.cat([score.flatten() for score in scores.values()]).cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet5-caffe")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--batches", type=int, default=47, help="default: the demo's 6,000")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--mask-steps", type=int, default=20)
    parser.add_argument("--eps", type=float, default=None, help="default: the dataset's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.35, 0.5])
    parser.add_argument("--fewer-mask-steps", type=int, nargs="*", default=[5, 10])
    parser.add_argument("--smaller-batches", type=int, nargs="*", default=[64, 32])
    parser.add_argument("--layout", choices=["channels_last", "nchw"], default="channels_last")
    parser.add_argument("--bf16", action="store_true", help="add the pass in bf16 autocast")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the training's attack starts
    device = resolve_device(args.device)
    spec = get_spec(args.dataset)
    args.eps = spec.default_eps if args.eps is None else args.eps
    data = load_dataset(args.dataset, "train", limit=args.batches * args.batch_size)
    loader = BatchLoader(data, spec, args.batch_size, shuffle=False, augment=False, device=device)
    model = create_model(**architecture(args.model, spec)).to(device)
    if args.layout == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    print(
        f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; "
        f"{args.model} ({args.layout}) on {len(loader)} batches of {args.batch_size} "
        f"{args.dataset} images, "
        f"eps {args.eps:.3g}, PGD-{args.attack_steps}, {args.mask_steps} mask steps; "
        f"{'CPU' if device.type == 'cpu' else 'wall'} seconds"
    )

    args.smaller_loaders = [  # the same images in the same order, in smaller batches
        (size, BatchLoader(data, spec, size, shuffle=False, augment=False, device=device))
        for size in args.smaller_batches
    ]
    attack = AttackSettings(args.eps, steps=args.attack_steps)
    epoch_times = []
    for epoch in range(args.train_epochs):
        seconds, _ = timed(device, adversarial_training_epoch, model, loader, attack, epoch)
        epoch_times.append(seconds)
    epoch_time = epoch_times[-1]
    stage_breakdown(model, loader, args, device)
    settings = dict(
        eps=args.eps, attack_steps=args.attack_steps, mask_steps=args.mask_steps, progress=False
    )
    full = full_passes(model, loader, args, device, epoch_time, settings)

    matrix_form_speedup(model, loader, args, device)

    for form, name in (("paper", "mad"), ("removal", "mad-obd")):
        rank_stability(model, loader, args, device, form, name, full[form], epoch_time, settings)
    layers = len(prunable_layers(model))
    print(f"  ({flat(full['paper']).numel():,} scored weights and biases in {layers} layers)")


def full_passes(model, loader, args, device, epoch_time, settings) -> dict[str, dict]:
    """Each form's saliency from every batch, timed against the epoch."""
    full = {}
    print("saliency pass against one PGD-AT epoch over the same batches:")
    print(f"  PGD-AT epoch (last of {args.train_epochs})  {epoch_time:>8.2f} s")
    for form, name in (("paper", "mad"), ("removal", "mad-obd")):
        seconds, full[form] = timed(device, compute_saliency, model, loader, form=form, **settings)
        print(
            f"  {name + ' pass (' + form + ')':<29} {seconds:>8.2f} s   {seconds / epoch_time:.2f}x"
        )
    return full


@contextlib.contextmanager
def bf16_pgd_and_masks(device: torch.device) -> Iterator[None]:
    """The pass's PGD and mask steps in bf16 autocast, its K-FAC pass in float32 (under
    autocast its convolution weight gradients would mix dtypes): what bf16 would buy."""
    originals = {name: getattr(mad, name) for name in ("pgd", "optimise_masks")}

    def in_bf16(function: Callable) -> Callable:
        def run(*args, **kwargs):
            with torch.autocast(device.type, torch.bfloat16):
                return function(*args, **kwargs)

        return run

    try:
        for name, function in originals.items():
            setattr(mad, name, in_bf16(function))
        yield
    finally:
        for name, function in originals.items():
            setattr(mad, name, function)


def rank_stability(model, loader, args, device, form, name, full, epoch_time, settings) -> None:
    """Spearman and 90 %-overlap against the full pass of: the full pass with other PGD starts,
    the first fractions of the batches, all batches with fewer mask steps, a quarter of the images
    in smaller batches, and (`--bf16`) the pass in bf16."""
    print(f"rank stability of the {form} form ({name}) against the saliency from all batches:")
    reference = flat(full)
    pruned_by_all = ~torch.cat([m.flatten() for m in mad_masks(full, 0.9).values()]).cpu()
    # How much the reference itself moves with PGD's random starts (the variants share them).
    again = compute_saliency(model, loader, form=form, seed=1, **settings)
    rho = spearmanr(flat(again).numpy(), reference.numpy()).statistic
    print(f"  all batches, PGD seed 1 (not 0)        Spearman {rho:.3f}")
    variants = [
        (f"{f:>4.0%} of the batches", {"saliency_fraction": f}, False, loader)
        for f in args.fractions
    ]
    variants += [
        (f"{steps:>2} mask steps, all batches", {"mask_steps": steps}, False, loader)
        for steps in args.fewer_mask_steps
    ]
    variants += [
        (f"25% of the images, batch {size}", {"saliency_fraction": 0.25}, False, smaller)
        for size, smaller in args.smaller_loaders
    ]
    if args.bf16:
        variants += [
            ("bf16, all batches", {}, True, loader),
            ("bf16, 50% of the batches", {"saliency_fraction": 0.5}, True, loader),
        ]
    for label, change, bf16, batches in variants:
        with bf16_pgd_and_masks(device) if bf16 else contextlib.nullcontext():
            seconds, partial = timed(
                device, compute_saliency, model, batches, form=form, **{**settings, **change}
            )
        rho = spearmanr(flat(partial).numpy(), reference.numpy()).statistic
        pruned = ~torch.cat([m.flatten() for m in mad_masks(partial, 0.9).values()]).cpu()
        overlap = (pruned & pruned_by_all).sum() / pruned_by_all.sum()
        print(
            f"  {label:<28}  Spearman {rho:.3f}   same 90 % pruned {overlap:.1%}   "
            f"({seconds:.1f} s, {seconds / epoch_time:.2f}x an epoch)"
        )


if __name__ == "__main__":
    main()
