"""The six attack-failure indicators (Pintor et al., 2022): each fails on a model built to trip it
and passes on a normal PGD-AT model (`robust_mlp`); the CLI exits 3 when one fails."""

import pytest
import torch
from torch import nn

from advprune.evaluation.indicators import LIMITS, _verdict, attack_failure_indicators

EPS = 0.1


class Quantised(nn.Module):
    """Input quantisation: zero gradient almost everywhere (a classic masking defence)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        return self.body(torch.round(x * 4) / 4)


class ArgmaxBlock(nn.Module):
    """A non-differentiable block: one-hot of the argmax pixel intensity level, no gradient."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x):
        levels = torch.stack([x < 0.5, x >= 0.5], -1).float().argmax(-1).float()
        return self.body(levels)


class Randomised(nn.Module):
    """Fresh Gaussian noise on the logits at every pass, from its own generator."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.generator = torch.Generator().manual_seed(1)

    def forward(self, x):
        logits = self.body(x)
        return logits + 3 * torch.randn(logits.shape, generator=self.generator)


class Band(nn.Module):
    """Misclassifies exactly the inputs whose mean distance to the nearest clean image lies
    between 0.6·ε and 0.9·ε: PGD's iterates cross that band on their way to the ball's corners
    and leave it, so PGD passes through adversarial points and returns correct ones."""

    def __init__(self, body: nn.Module, anchors: torch.Tensor) -> None:
        super().__init__()
        self.body = body
        self.anchors = anchors.flatten(1)

    def forward(self, x):
        logits = self.body(x)
        flat = x.detach().flatten(1)
        nearest = self.anchors[torch.cdist(flat, self.anchors, p=float("inf")).argmin(1)]
        size = (flat - nearest).abs().mean(1) / EPS
        inside = ((size > 0.6) & (size < 0.9)).view(-1, 1)
        return torch.where(inside, -logits, logits)


class _GradientNoise(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, generator):
        ctx.generator = generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        noise = torch.randn(grad.shape, generator=ctx.generator, dtype=grad.dtype)
        return grad + 10 * grad.abs().mean() * noise, None


class NoisyGradient(nn.Module):
    """Exact outputs, but an input gradient drowned in noise: PGD drifts towards the boundary
    so slowly that its loss is still rising when the steps run out."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.generator = torch.Generator().manual_seed(2)

    def forward(self, x):
        return self.body(_GradientNoise.apply(x, self.generator))


def indicators(model, x, y, surrogate=None):
    result = attack_failure_indicators(model, x, y, EPS, steps=20, seed=0, surrogate=surrogate)
    return result, result["indicators"]


@pytest.fixture(scope="module")
def surrogate():
    """A separately trained model: the other seed's PGD-AT network, smaller and quicker."""
    from advprune.attacks import pgd
    from advprune.data import load_dataset
    from advprune.models import create_model

    data = load_dataset("fashion-mnist", "train", limit=1000)
    torch.manual_seed(1)
    model = create_model("lenet300-100", 10, 1, image_size=28)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = data.images.float() / 255, data.labels
    for _ in range(40):
        x_adv = pgd(model, x, y, EPS, steps=2, generator=torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x_adv), y).backward()
        optimizer.step()
    return model.eval()


def test_a_normal_pgd_at_model_passes_every_indicator(robust_mlp, surrogate):
    model, x, y = robust_mlp
    result, found = indicators(model, x, y, surrogate)
    assert result["passed"] and result["examples"] == len(x)
    assert set(found) == set(LIMITS)
    for name, entry in found.items():
        assert entry["passed"] is True and 0 <= entry["share"] <= entry["limit"], (name, entry)
    without = indicators(model, x, y)[1]["transfer_failure"]  # no surrogate: not computed
    assert without["passed"] is None and "--transfer-from" in without["reason"]


@pytest.mark.parametrize("trap", [Quantised, ArgmaxBlock])
def test_unavailable_gradients(robust_mlp, trap):
    model, x, y = robust_mlp
    result, found = indicators(trap(model).eval(), x, y)
    assert not result["passed"]
    assert found["unavailable_gradients"]["passed"] is False
    assert found["unavailable_gradients"]["share"] > 0.5
    if trap is ArgmaxBlock:  # no gradient at all: the reason is recorded
        assert "no gradient" in found["unavailable_gradients"]["error"]


def test_unstable_predictions(robust_mlp):
    model, x, y = robust_mlp
    found = indicators(Randomised(model).eval(), x, y)[1]
    assert found["unstable_predictions"]["passed"] is False
    assert found["unstable_predictions"]["share"] > 5 * LIMITS["unstable_predictions"]
    assert found["unavailable_gradients"]["passed"]  # its gradients are fine


def test_silent_success(robust_mlp):
    model, x, y = robust_mlp
    found = indicators(Band(model, x).eval(), x, y)[1]
    assert found["silent_success"]["passed"] is False
    assert found["silent_success"]["share"] > 2 * LIMITS["silent_success"]
    assert found["unstable_predictions"]["passed"]  # deterministic


def test_incomplete_optimisation(robust_mlp):
    model, x, y = robust_mlp
    found = indicators(NoisyGradient(model).eval(), x, y)[1]
    assert found["incomplete_optimisation"]["passed"] is False
    assert found["incomplete_optimisation"]["share"] > 2 * LIMITS["incomplete_optimisation"]
    assert found["unstable_predictions"]["passed"]  # same outputs as the normal model


def test_transfer_failure(robust_mlp, surrogate):
    model, x, y = robust_mlp
    found = indicators(Quantised(model).eval(), x, y, surrogate=model)[1]
    assert found["transfer_failure"]["passed"] is False
    assert found["transfer_failure"]["share"] > LIMITS["transfer_failure"]


def test_unbounded_attack(robust_mlp):
    model, x, y = robust_mlp
    found = indicators(Quantised(model).eval(), x, y)[1]
    assert found["unbounded_attack"]["passed"] is False and found["unbounded_attack"]["share"] > 0
    assert indicators(model, x, y)[1]["unbounded_attack"]["share"] == 0


@pytest.mark.parametrize("failed, passed", [(5, True), (6, False)])
def test_a_share_at_the_limit_passes_and_one_example_more_fails(failed, passed):
    """5 of 100 is exactly the 5 % limit (a float32 mean made it 0.0500000007, a failure)."""
    failures = torch.zeros(100, dtype=torch.bool)
    failures[:failed] = True
    verdict = _verdict("incomplete_optimisation", failures, None)
    assert verdict["passed"] is passed and verdict["count"] == failed
    assert verdict["share"] == failed / 100
