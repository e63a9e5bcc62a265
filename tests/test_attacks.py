import copy
import warnings

import pyautoattack
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advprune.attacks import (
    ATTACKS,
    AutoAttackWarning,
    PGDTrace,
    autoattack,
    cw_margin_loss,
    fgsm,
    fmn,
    fmn_distances,
    parse_attacks,
    pgd,
    transfer,
)
from advprune.attacks.ball import Ball
from advprune.core.errors import CheckpointError, ConfigError, GradientMaskingError

EPS = 0.05  # the fixture model keeps ~40 % accuracy under PGD-20 here: attacks can be compared


def synthetic_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """10 classes of noisy, overlapping 1×12×12 patterns in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    patterns = 0.5 + 0.1 * torch.randn(10, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (n,), generator=generator)
    x = (patterns[y] + 0.3 * torch.randn(n, 1, 12, 12, generator=generator)).clamp(0, 1)
    return x, y


def train_mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 64), nn.ReLU(), nn.Linear(64, 10))
    x, y = synthetic_images(1000, seed=1 + seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A tiny model is fastest on one thread, and two test processes then do not fight for cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(one_thread):
    return train_mlp(seed=0)


@pytest.fixture(scope="module")
def data():
    return synthetic_images(256, seed=100)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_valid(x_adv, x, eps, norm="linf"):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-6


def test_fixture_model_is_accurate(model, data):
    assert accuracy(model, *data) > 0.9


def test_pgd_at_large_eps_breaks_an_undefended_model(model, data):
    x, y = data
    x_adv = pgd(model, x, y, 0.3, steps=10, generator=seeded())
    assert_valid(x_adv, x, 0.3)
    assert accuracy(model, x_adv, y) <= 0.05


@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw"])
def test_white_box_attacks_lower_accuracy(model, data, name):
    x, y = data
    x_adv = ATTACKS[name].run(model, x, y, EPS, seed=0)
    assert_valid(x_adv, x, EPS)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.3


@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw", "autoattack", "fmn"])
def test_zero_eps_returns_x_exactly(model, data, name):
    x, y = data
    x_adv = ATTACKS[name].run(model, x, y, 0.0, seed=0)
    assert torch.equal(x_adv, x)
    assert accuracy(model, x_adv, y) == accuracy(model, x, y)


@pytest.mark.parametrize(
    ("norm", "eps", "init"),
    [
        ("linf", EPS, "uniform"),
        ("linf", EPS, "normal"),
        ("linf", 0.0005, "normal"),  # TRADES' start is wider than this ball: it must be projected
        ("l2", 1.0, "uniform"),
        ("l2", 1.0, "zero"),
    ],
)
def test_pgd_stays_in_the_ball_and_the_box(model, data, norm, eps, init):
    x, y = data
    x_adv = pgd(model, x, y, eps, steps=5, norm=norm, init=init, generator=seeded())
    assert_valid(x_adv, x, eps, norm)
    assert (x_adv != x).any()
    if eps > 0.001:
        assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.2


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.5)])
def test_uniform_start_fills_the_ball(norm, eps):
    x = torch.full((2000, 1, 12, 12), 0.5)  # far from the box edges: only the ball shapes the start
    delta = (Ball(x, eps, norm).start("uniform", seeded()) - x).flatten(1)
    if norm == "linf":
        assert delta.abs().max() <= eps and abs(delta.abs().mean() - eps / 2) < 0.01 * eps
    else:  # random direction, radius uniform in [0, eps]
        radius = delta.norm(dim=1)
        assert radius.max() <= eps + 1e-6 and abs(radius.mean() - eps / 2) < 0.03 * eps


def test_more_steps_and_restarts_never_raise_accuracy(model, data):
    x, y = data
    few_steps = accuracy(model, pgd(model, x, y, 0.03, steps=3, generator=seeded()), y)
    many_steps = accuracy(model, pgd(model, x, y, 0.03, steps=20, generator=seeded()), y)
    assert many_steps <= few_steps

    with torch.no_grad():
        x_once = pgd(model, x, y, 0.03, steps=3, generator=seeded())
        x_best = pgd(model, x, y, 0.03, steps=3, restarts=3, generator=seeded())
        fooled_once = model(x_once).argmax(1) != y
        fooled_best = model(x_best).argmax(1) != y
        loss_once = F.cross_entropy(model(x_once), y, reduction="none")
        loss_best = F.cross_entropy(model(x_best), y, reduction="none")
    assert_valid(x_best, x, 0.03)
    assert fooled_best[fooled_once].all()  # the first restart is the single run: nothing is lost
    assert fooled_best.sum() >= fooled_once.sum()
    assert (loss_best >= loss_once)[~fooled_best].all()  # not fooled: the highest loss is kept


def test_pgd_random_start_comes_from_the_generator_only(model, data):
    x, y = data
    rng_state = torch.get_rng_state()
    first = pgd(model, x, y, EPS, steps=2, generator=seeded(7))
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert torch.equal(first, pgd(model, x, y, EPS, steps=2, generator=seeded(7)))
    assert not torch.equal(first, pgd(model, x, y, EPS, steps=2, generator=seeded(8)))


@pytest.mark.parametrize(
    ("norm", "init"), [("linf", "uniform"), ("l2", "uniform"), ("linf", "normal")]
)
def test_a_data_parallel_shard_gets_its_rows_of_the_global_starts(model, data, norm, init):
    """Rank r of 4 attacks rows r, r+4, ... of a batch (of 256, as a global batch splits evenly);
    its starts, and so its adversarial examples, are those rows of the whole batch's."""
    x, y = data
    whole = pgd(model, x, y, 0.5, norm=norm, init=init, steps=2, generator=seeded(4))
    for rank in range(4):
        shard = pgd(
            model,
            x[rank::4],
            y[rank::4],
            0.5,
            norm=norm,
            init=init,
            steps=2,
            generator=seeded(4),
            noise_shard=(rank, 4),
        )
        torch.testing.assert_close(shard, whole[rank::4], rtol=0, atol=1e-6)
    alone = pgd(model, x[1::4], y[1::4], 0.5, norm=norm, init=init, steps=2, generator=seeded(4))
    assert not torch.allclose(alone, whole[1::4])  # without the shard the starts differ


def test_registry_options_override_the_protocol_settings(model, data):
    x, y = data
    pgd_1 = ATTACKS["pgd"].run(model, x, y, EPS, seed=3, steps=1)
    assert torch.equal(pgd_1, pgd(model, x, y, EPS, steps=1, generator=seeded(3)))


def test_pgd_under_autocast_computes_the_loss_in_float32(model, data):
    x, y = data
    logit_dtypes = set()

    def recording_cw_loss(logits, y):
        logit_dtypes.add(logits.dtype)
        return cw_margin_loss(logits, y)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        x_adv = pgd(model, x, y, EPS, steps=10, loss=recording_cw_loss, generator=seeded())
    assert logit_dtypes == {torch.float32}
    assert_valid(x_adv, x, EPS)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.3


def kl_to_clean(logits: torch.Tensor, clean_probabilities: torch.Tensor) -> torch.Tensor:
    """TRADES' inner objective KL(p(x) ‖ p(x̃)) per example."""
    return F.kl_div(F.log_softmax(logits, 1), clean_probabilities, reduction="none").sum(1)


def test_callable_loss_receives_soft_targets_and_is_maximised(model, data):
    x, _ = data
    with torch.no_grad():
        clean_probabilities = F.softmax(model(x), 1)
    options = {"steps": 5, "alpha": 0.01, "loss": kl_to_clean, "init": "normal"}
    x_once = pgd(model, x, clean_probabilities, EPS, **options, generator=seeded())
    x_best = pgd(model, x, clean_probabilities, EPS, **options, restarts=2, generator=seeded())
    assert_valid(x_best, x, EPS)
    with torch.no_grad():
        kl_start = kl_to_clean(model(x + 0.001 * torch.randn_like(x)), clean_probabilities)
        kl_once = kl_to_clean(model(x_once), clean_probabilities)
        kl_best = kl_to_clean(model(x_best), clean_probabilities)
    assert kl_once.mean() > 100 * kl_start.mean()
    # Restarts keep the highest loss when y is not labels.
    assert (kl_best >= kl_once).all() and (kl_best > kl_once).any()


def test_fgsm_is_one_signed_gradient_step(model, data):
    x, y = data
    x_leaf = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_leaf), y, reduction="sum"), x_leaf)
    assert torch.equal(fgsm(model, x, y, EPS), (x + EPS * grad.sign()).clamp(0, 1))


def test_cw_margin_loss_is_best_other_logit_minus_true_logit():
    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    assert torch.equal(cw_margin_loss(logits, torch.tensor([0, 1])), torch.tensor([2.0, -1.0]))


def test_transfer_from_a_source_model_lowers_target_accuracy(model, data):
    x, y = data
    source = train_mlp(seed=1)
    x_adv = transfer(source, x, y, 0.1, steps=10, generator=seeded())
    assert_valid(x_adv, x, 0.1)
    assert accuracy(model, x_adv, y) < accuracy(model, x, y) - 0.2


def attacks_for_state_checks():
    def run_transfer(model, x, y, eps, *, seed):
        return transfer(model, x, y, eps, steps=2, generator=seeded(seed))

    return {**{name: ATTACKS[name].run for name in ("fgsm", "pgd", "cw")}, "transfer": run_transfer}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw", "transfer"])
def test_attacks_keep_mode_and_parameter_grads(model, data, name, training):
    x, y = data
    victim = copy.deepcopy(model).train(training)
    first, *rest = victim.parameters()
    first.grad = torch.full_like(first, 0.5)
    attacks_for_state_checks()[name](victim, x[:32], y[:32], EPS, seed=0)
    assert victim.training is training and all(m.training is training for m in victim.modules())
    assert torch.equal(first.grad, torch.full_like(first, 0.5))
    assert all(p.grad is None for p in rest)


class ModeRecorder(nn.Module):
    """Identity that records the mode of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.modes: set[bool] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.add(self.training)
        return x


def test_autoattack_beats_pgd_returns_every_example_and_restores_the_model(model, data):
    x, y = data[0][:64], data[1][:64]
    recorder = ModeRecorder()
    victim = nn.Sequential(recorder, copy.deepcopy(model)).train()
    first, *rest = victim.parameters()
    first.grad = torch.full_like(first, 0.5)
    rng_state = torch.get_rng_state()

    with warnings.catch_warnings():
        warnings.simplefilter("error", AutoAttackWarning)
        x_adv = autoattack(victim, x, y, EPS, batch_size=64)

    assert victim.training and recorder.modes == {False}
    assert torch.equal(first.grad, torch.full_like(first, 0.5))
    assert all(p.grad is None for p in rest)
    assert all(p.requires_grad for p in victim.parameters())
    assert torch.equal(torch.get_rng_state(), rng_state)
    assert_valid(x_adv, x, EPS)
    pgd_accuracy = accuracy(model, ATTACKS["pgd"].run(model, x, y, EPS, seed=0), y)
    assert accuracy(model, x_adv, y) <= pgd_accuracy < accuracy(model, x, y)
    with torch.no_grad():
        moved = (x_adv != x).flatten(1).any(1)
        # Only examples AutoAttack broke are changed: robust or clean-misclassified ones stay x.
        assert (model(x_adv[moved]).argmax(1) != y[moved]).all()
        assert (model(x[moved]).argmax(1) == y[moved]).all()


def test_autoattack_resumes_from_its_state_file(model, data, tmp_path, monkeypatch):
    x, y = data[0][:24], data[1][:24]
    state = tmp_path / "autoattack_state.safetensors"
    run_batch = pyautoattack.AutoAttack.run_standard_evaluation
    batches = {"run": 0, "interrupt_at": None}

    def counted(self, *args, **kwargs):
        if batches["run"] == batches["interrupt_at"]:
            raise KeyboardInterrupt
        batches["run"] += 1
        return run_batch(self, *args, **kwargs)

    monkeypatch.setattr(pyautoattack.AutoAttack, "run_standard_evaluation", counted)
    uninterrupted = autoattack(model, x, y, 0.3, batch_size=8)
    total = batches["run"]
    assert total > 2

    batches.update(run=0, interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        autoattack(model, x, y, 0.3, batch_size=8, state_path=state)
    batches.update(run=0, interrupt_at=None)
    resumed = autoattack(model, x, y, 0.3, batch_size=8, state_path=state)
    assert torch.equal(resumed, uninterrupted)
    assert batches["run"] == total - 2  # the two saved batches are not attacked again

    batches["run"] = 0
    assert torch.equal(autoattack(model, x, y, 0.3, batch_size=8, state_path=state), resumed)
    assert batches["run"] == 0  # a finished state returns at once
    with pytest.raises(CheckpointError, match="another model, data set or setting"):
        autoattack(model, x, y, 0.25, batch_size=8, state_path=state)


def test_autoattack_reports_a_randomised_model(model, data):
    class Noisy(nn.Module):
        def forward(self, x):
            return model(x) + 0.01 * torch.randn(len(x), 10)

    x, y = data[0][:8], data[1][:8]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        autoattack(Noisy(), x, y, 0.3, batch_size=4)
    reports = [str(w.message) for w in caught if issubclass(w.category, AutoAttackWarning)]
    # Checked on each of the two batches, reported once.
    assert len(reports) == 1 and "randomized defense" in reports[0], reports
    assert "(reported 2 times)" in reports[0]


def test_parse_attacks():
    assert parse_attacks("clean, fgsm,pgd,pgd,") == ["clean", "fgsm", "pgd"]
    assert parse_attacks(["cw", "autoattack"]) == ["cw", "autoattack"]
    with pytest.raises(ConfigError, match=r"'pgd-50'.*clean, fgsm, pgd, cw, autoattack"):
        parse_attacks("clean,pgd-50")
    with pytest.raises(ConfigError):
        parse_attacks(" , ")


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, x, y: pgd(m, x, y, -0.1), "eps=-0.1"),
        (lambda m, x, y: pgd(m, x, y, float("nan")), "eps=nan"),
        (lambda m, x, y: fgsm(m, x, y, -1), "eps=-1"),
        (lambda m, x, y: transfer(m, x, y, -0.1), "eps"),
        (lambda m, x, y: autoattack(m, x, y, -0.1), "eps"),
        (lambda m, x, y: ATTACKS["cw"].run(m, x, y, -0.1), "eps"),
        (lambda m, x, y: pgd(m, x, y, 0.1, norm="l1"), "linf, l2"),
        (lambda m, x, y: pgd(m, x, y, 0.1, loss="dlr"), "ce, cw"),
        (lambda m, x, y: pgd(m, x, y, 0.0, init="gaussian"), "uniform, normal, zero"),
        (lambda m, x, y: pgd(m, x, y, 0.1, steps=0), "steps"),
        (lambda m, x, y: autoattack(m, x, y, 0.1, version="fast"), "standard"),
    ],
)
def test_bad_settings_are_config_errors(model, data, call, match):
    x, y = data
    with pytest.raises(ConfigError, match=match):
        call(model, x[:4], y[:4])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fmn_finds_minimal_adversarial_examples(model, data, norm):
    x, y = data
    distances, best = fmn_distances(model, x, y, norm=norm, steps=100)
    with torch.no_grad():
        clean_wrong = model(x).argmax(1) != y
        fooled = model(best).argmax(1) != y
    found = torch.isfinite(distances)
    assert found.float().mean() > 0.95  # an undefended model: almost every example breaks
    assert fooled[found].all() and torch.equal(best[~found], x[~found])
    assert (distances[clean_wrong] == 0).all() and (distances[~clean_wrong] > 0).all()
    size = (best - x).flatten(1)
    size = size.abs().amax(1) if norm == "linf" else size.norm(dim=1)
    torch.testing.assert_close(size[found], distances[found], atol=1e-5, rtol=1e-5)
    assert best.min() >= 0 and best.max() <= 1


def test_fmn_accuracy_is_the_share_of_distances_beyond_eps_and_beats_pgd(model, data):
    x, y = data
    distances, _ = fmn_distances(model, x, y, steps=100)
    for eps in (0.02, EPS, 0.1):
        x_adv = fmn(model, x, y, eps, steps=100)
        assert_valid(x_adv, x, eps)
        assert accuracy(model, x_adv, y) == (distances > eps).float().mean().item()
        pgd_accuracy = accuracy(model, pgd(model, x, y, eps, steps=50, generator=seeded()), y)
        assert accuracy(model, x_adv, y) <= pgd_accuracy + 0.02
    # The registry's FMN is the same attack in the shared call shape.
    registry = ATTACKS["fmn"].run(model, x, y, EPS, seed=5, steps=100)
    assert torch.equal(registry, fmn(model, x, y, EPS, steps=100))


def test_pgd_trace_records_every_iterate_and_eot_averages_gradients(model, data):
    x, y = data
    trace = PGDTrace()
    x_adv = pgd(model, x, y, EPS, steps=7, generator=seeded(), trace=trace)
    assert trace.loss_history().shape == (8, len(x)) == trace.fooled_history().shape
    with torch.no_grad():
        assert torch.equal(trace.fooled_history()[-1], model(x_adv).argmax(1) != y)
    # Unchanged result with the trace, and a deterministic model's EOT is plain PGD.
    assert torch.equal(x_adv, pgd(model, x, y, EPS, steps=7, generator=seeded()))
    eot = pgd(model, x, y, EPS, steps=7, generator=seeded(), eot_samples=3)
    torch.testing.assert_close(eot, x_adv, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="restarts=1"):
        pgd(model, x, y, EPS, restarts=2, trace=PGDTrace())


class Detached(nn.Module):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.detach())


@pytest.mark.parametrize("name", ["pgd", "cw", "fmn"])
def test_a_model_without_input_gradients_is_gradient_masking(model, data, name):
    x, y = data[0][:8], data[1][:8]
    with pytest.raises(GradientMaskingError, match=r"no gradient w\.r\.t\. its input"):
        ATTACKS[name].run(Detached(model).eval(), x, y, EPS, seed=0)
