"""Which signs of weights the published MAD ranking keeps, and what that does without BatchNorm.

MAD's saliency s_ij = ½·G_ii·Δw_ij·(Δw_i A)_j is signed, and `--method mad` prunes the lowest
first. Behind a ReLU and a pooling a layer's inputs are non-negative and correlated (A > 0), so
(Δw_i A)_j takes the sign of the row's net mass and the weights of the other sign score below
zero: they go first. This script trains LeNet-5-Caffe on Fashion-MNIST (PGD-AT, the demo's
budget) with and without BatchNorm after each conv, prunes 90 % with `mad` and with our
`mad-obd` (same pass, unsigned ½·G_ii·A_jj·W̃_ij²), and prints for each: the share of conv2's
kept weights that are positive (dense: about half), the share of conv2's units alive behind its
ReLU on the one-shot pruned network, and clean and PGD-20 accuracy after one epoch of fine-tuning.
Without BatchNorm a conv layer of negative weights on non-negative inputs outputs ≤ its bias:
the ReLU is dead and the network is at chance; BatchNorm re-centres each channel and keeps it
alive. The paper's networks (VGG-16, ResNet-18) have BatchNorm; the benchmark's LeNet has not.

    python benchmarks/mad_weight_signs.py [--threads 2] [--train 10000] [--finetune 6000]
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import advprune
from advprune.data import load_dataset

EPS = 0.1


def lenet5_caffe(batch_norm: bool) -> nn.Module:
    """LeNet-5-Caffe (conv 20-50, dense 500), optionally with BatchNorm after each conv."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        norm = [nn.BatchNorm2d(cout)] if batch_norm else []
        return [nn.Conv2d(cin, cout, 5, bias=not batch_norm), *norm, nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, 20), *block(20, 50), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(),
        nn.Linear(500, 10),
    )  # fmt: skip


def one_shot(dense: nn.Module, pruned: nn.Module) -> nn.Module:
    """The dense network with the pruned one's zeros: what the ranking removed, before tuning."""
    network = copy.deepcopy(dense)
    with torch.no_grad():
        for weight, kept in zip(network.parameters(), pruned.parameters(), strict=True):
            weight.mul_((kept != 0).to(weight.dtype))
    return network.eval()


def conv2_figures(dense: nn.Module, pruned: nn.Module, images: torch.Tensor) -> tuple[float, float]:
    """(share of conv2's kept dense weights that are positive, share of conv2's units > 0 behind
    its ReLU on `images`, in the one-shot pruned network)."""
    conv_dense = [m for m in dense.modules() if isinstance(m, nn.Conv2d)][1].weight
    conv_kept = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)][1].weight != 0
    positive = float(((conv_dense > 0) & conv_kept).sum() / conv_kept.sum())
    network = one_shot(dense, pruned)
    relus = [m for m in network.modules() if isinstance(m, nn.ReLU)]
    captured = []
    handle = relus[1].register_forward_hook(lambda _m, _i, out: captured.append(out.clone()))
    with torch.no_grad():
        network(images)
    handle.remove()
    return positive, float((captured[0] > 0).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train", type=int, default=10000, help="training images (dense run)")
    parser.add_argument("--finetune", type=int, default=6000, help="images for pruning")
    parser.add_argument("--test", type=int, default=500, help="first N test images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = load_dataset("fashion-mnist", "train", limit=args.train)
    test = load_dataset("fashion-mnist", "test", limit=args.test)
    test_data, images = (test.images, test.labels), test.images.float() / 255
    print(f"Fashion-MNIST, ε {EPS}, PGD-20 on the first {args.test} test images, seed 0")
    print(f"{'network':12} {'method':8} {'conv2 kept > 0':>14} {'conv2 alive':>11} "
          f"{'clean':>6} {'PGD-20':>6}")  # fmt: skip
    for batch_norm in (False, True):
        torch.manual_seed(0)
        dense = advprune.adversarial_train(
            lenet5_caffe(batch_norm), (train.images, train.labels), eps=EPS, epochs=3,
            attack_steps=3, batch_size=128, optimizer="adam", lr=1e-3, weight_decay=0.0,
            schedule="step", milestones=[0.67],
        )  # fmt: skip
        name = "lenet-bn" if batch_norm else "lenet"
        accuracy = advprune.evaluate(dense, test_data, eps=EPS)["accuracy"]
        print(f"{name:12} {'dense':8} {'':>14} {'':>11} "
              f"{100 * accuracy['clean']:6.1f} {100 * accuracy['pgd']:6.1f}")  # fmt: skip
        subset = (train.images[: args.finetune], train.labels[: args.finetune])
        for method in ("mad", "mad-obd"):
            pruned = advprune.prune(
                dense, subset, method=method, sparsity=0.9, eps=EPS, saliency_fraction=0.25,
                finetune_epochs=1, allow_chance=True,
            )  # fmt: skip
            positive, alive = conv2_figures(dense, pruned, images)
            accuracy = advprune.evaluate(pruned, test_data, eps=EPS)["accuracy"]
            print(f"{name:12} {method:8} {positive:14.3f} {alive:11.3f} "
                  f"{100 * accuracy['clean']:6.1f} {100 * accuracy['pgd']:6.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
