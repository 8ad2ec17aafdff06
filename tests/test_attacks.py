import pytest
import torch
import torch.nn.functional as F

from common.attacks import GaussianNoise, deepfool, eval_mode, fgsm, pgd
from common.data import to_float
from common.models import build_model
from . import toys

EPS = 8 / 255


@pytest.fixture(scope="module")
def batch(cifar):
    return to_float(cifar.test_x[:200]), cifar.test_y[:200]


def _in_ball(x_adv, x, eps):
    return ((x_adv - x).abs().max() <= eps + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "pgd-restarts", "cw", "eot"])
def test_outputs_stay_in_the_eps_ball_and_in_unit_range(attack):
    torch.manual_seed(0)
    model = build_model("rrelu", 8)
    x = torch.rand(8, 3, 32, 32)
    x[:, :, :4] = 0.0  # pixels at the box edges must stay inside [0, 1]
    x[:, :, -4:] = 1.0
    y = torch.randint(0, 10, (8,))
    make = {
        "fgsm": lambda: fgsm(model, x, y, EPS),
        "pgd": lambda: pgd(model, x, y, EPS, 2 / 255, 5),
        "pgd-restarts": lambda: pgd(model, x, y, EPS, 2 / 255, 3, restarts=3),
        "cw": lambda: pgd(model, x, y, EPS, 2 / 255, 3, loss="cw"),
        "eot": lambda: pgd(GaussianNoise(model, 0.1), x, y, EPS, 2 / 255, 3, eot_samples=3),
    }
    assert _in_ball(make[attack](), x, EPS)


def test_attacks_use_eval_mode_and_restore_each_module_mode():
    model = build_model("rrelu", 8).train()
    model.stages[0].eval()  # a mixed state must come back exactly
    seen = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append(m.training))
    before = {name: m.training for name, m in model.named_modules()}
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    pgd(model, x, y, EPS, 2 / 255, 2)
    fgsm(model, x, y, EPS)
    assert seen and not any(seen)
    assert {name: m.training for name, m in model.named_modules()} == before


def test_pgd_loop_makes_no_host_synchronisation(monkeypatch):
    # Every host sync in torch goes through one of these; count them during PGD.
    calls = []
    for name in ("item", "tolist", "cpu", "numpy", "__bool__"):
        original = getattr(torch.Tensor, name)

        def spy(self, *a, _original=original, _name=name, **k):
            calls.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    model = build_model("relu", 8)
    pgd(model, torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]), EPS, 2 / 255, 5)
    assert calls == []


def test_pgd_reuses_its_buffers_in_place():
    model = build_model("relu", 8)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([0, 1])
    ptrs = []
    original = torch.Tensor.add_

    def spy(self, *a, **k):
        ptrs.append(self.data_ptr())
        return original(self, *a, **k)

    torch.Tensor.add_ = spy
    try:
        pgd(model, x, y, EPS, 2 / 255, 6, random_start=False)
    finally:
        torch.Tensor.add_ = original
    assert len(set(ptrs)) <= 2  # the gradient accumulator and x_adv, every step


def test_robust_accuracy_ordering_on_a_trained_model(trained_model, batch):
    x, y = batch
    model = trained_model

    def acc(images):
        with torch.no_grad():
            return (model(images).argmax(1) == y).float().mean().item()

    torch.manual_seed(0)
    natural = acc(x)
    fgsm_acc = acc(fgsm(model, x, y, EPS))
    pgd_acc = acc(pgd(model, x, y, EPS, 2 / 255, 10))
    assert natural > 0.2  # the model learned something, so the ordering means something
    assert pgd_acc <= fgsm_acc <= natural
    assert pgd_acc < natural


def test_restarts_are_at_least_as_strong_as_one_run(trained_model, batch):
    x, y = batch
    gen = torch.Generator().manual_seed(1)
    single = pgd(trained_model, x, y, EPS, 2 / 255, 3, generator=gen)
    gen = torch.Generator().manual_seed(1)
    multi = pgd(trained_model, x, y, EPS, 2 / 255, 3, restarts=4, generator=gen)
    with torch.no_grad():
        wrong_single = trained_model(single).argmax(1) != y
        wrong_multi = trained_model(multi).argmax(1) != y
    # Same first restart: every example fooled by it stays fooled.
    assert bool((wrong_multi | ~wrong_single).all())
    assert wrong_multi.sum() >= wrong_single.sum()


def test_eot_pgd_is_at_least_as_strong_as_plain_pgd_through_noise(trained_model, batch):
    x, y = batch
    noisy = GaussianNoise(trained_model, sigma=0.1)

    def noisy_acc(images, draws=8):  # average over noise draws: the defence is random
        with torch.no_grad():
            return sum((noisy(images).argmax(1) == y).float().mean().item()
                       for _ in range(draws)) / draws

    torch.manual_seed(0)
    plain = noisy_acc(pgd(noisy, x, y, EPS, 2 / 255, 10))
    torch.manual_seed(0)
    eot = noisy_acc(pgd(noisy, x, y, EPS, 2 / 255, 10, eot_samples=8))
    assert eot <= plain + 0.01


def test_deepfool_flips_labels_with_small_l2_perturbations(trained_model, batch):
    x, y = batch[0][:40], batch[1][:40]
    adv = deepfool(trained_model, x, steps=30)
    with torch.no_grad():
        before = trained_model(x).argmax(1)
        after = trained_model(adv).argmax(1)
    assert (after != before).float().mean() > 0.9
    norms = (adv - x).flatten(1).norm(dim=1)
    assert norms.median() < 2.0  # far below the L2 size of an image (~30)
    assert adv.min() >= 0 and adv.max() <= 1


def test_noise_wrapper_is_random_in_eval_mode():
    model = build_model("relu", 8).eval()
    noisy = GaussianNoise(model, 0.1).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad(), eval_mode(noisy):
        assert not torch.equal(noisy(x), noisy(x))
        assert torch.equal(GaussianNoise(model, 0.0)(x), model(x))


# Each test below pins one attack feature to a property that a broken version fails; the
# toy models (tests/toys.py) make one feature decide the outcome.

def _ce(model, images, y):
    with torch.no_grad():
        return F.cross_entropy(model(images), y, reduction="none")


@pytest.fixture(scope="module")
def init_model():
    torch.manual_seed(0)
    return build_model("relu", 8).eval()


def _interior(x, margin):
    """Pixels that no clipping to [0, 1] can touch within `margin`."""
    return (x >= margin) & (x <= 1 - margin)


def test_fgsm_moves_every_pixel_by_eps_up_the_loss_gradient(init_model, batch):
    x, y = batch[0][:16], batch[1][:16]
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(init_model(x_req), y, reduction="sum"), x_req)
    step = fgsm(init_model, x, y, EPS) - x
    inside = _interior(x, EPS) & (grad != 0)
    assert inside.float().mean() > 0.5
    assert torch.allclose(step[inside], EPS * grad[inside].sign(), atol=1e-6)
    assert (_ce(init_model, x + step, y) > _ce(init_model, x, y)).float().mean() > 0.9


def test_one_pgd_step_from_x_is_fgsm_with_the_step_size(init_model, batch):
    x, y = batch[0][:16], batch[1][:16]
    one = pgd(init_model, x, y, EPS, EPS / 4, 1, random_start=False)
    assert torch.allclose(one, fgsm(init_model, x, y, EPS / 4), atol=1e-6)


def test_pgd_takes_as_many_steps_as_asked(init_model, batch):
    x, y = batch[0][:16], batch[1][:16]
    moved = (pgd(init_model, x, y, EPS, EPS / 8, 3, random_start=False) - x).abs()
    # Three signed steps of eps/8 from x: pixels whose gradient sign holds end 3 steps away.
    inside = _interior(x, EPS)
    assert moved[inside].max() == pytest.approx(3 * EPS / 8, abs=1e-6)
    assert pgd(init_model, x, y, EPS, EPS / 8, 12, random_start=False)[inside].sub(
        x[inside]).abs().max() == pytest.approx(EPS, abs=1e-6)  # more steps hit the ball's edge


def test_random_start_is_uniform_in_the_ball_and_follows_the_generator(init_model):
    x, y = torch.full((4, 3, 32, 32), 0.5), torch.zeros(4, dtype=torch.long)

    def start(seed, random_start=True):  # zero steps: the start itself
        return pgd(init_model, x, y, EPS, 2 / 255, 0, random_start=random_start,
                   generator=torch.Generator().manual_seed(seed))

    delta = start(1) - x
    assert delta.abs().max() <= EPS + 1e-6
    assert delta.mean().abs() < 0.02 * EPS
    assert delta.std() == pytest.approx(EPS / 3**0.5, rel=0.02)  # uniform on [-eps, eps]
    assert torch.equal(start(1), start(1)) and not torch.equal(start(1), start(2))
    assert torch.equal(start(1, random_start=False), x)


def test_restarts_find_the_adversarial_example_that_one_start_misses():
    model, x = toys.TwoBasins(), toys.grey_images(64)
    y = torch.zeros(64, dtype=torch.long)

    def fooled(restarts):
        gen = torch.Generator().manual_seed(0)
        x_adv = pgd(model, x, y, EPS, 2 / 255, 8, restarts=restarts, generator=gen)
        with torch.no_grad():
            return model(x_adv).argmax(1) != y

    single, multi = fooled(1), fooled(8)
    assert 16 <= single.sum() <= 48  # one start: a coin flip per image
    assert multi.sum() >= 62  # eight: all but ~1/256 of them
    assert bool((multi | ~single).all())  # the first restart's successes are kept


def test_eot_steps_along_the_mean_gradient_where_one_draw_does_not():
    model, x = toys.NoisyGradient(), toys.grey_images(4)
    y = torch.zeros(4, dtype=torch.long)
    torch.manual_seed(0)
    one = pgd(model, x, y, EPS, 2 * EPS, 1, eot_samples=1)
    averaged = pgd(model, x, y, EPS, 2 * EPS, 1, eot_samples=32)
    assert (model.offset(one) < 0.5).all()  # one draw: 69% of the signs right, s ~ 0.38
    assert (model.offset(averaged) > 0.95).all()  # 32 draws: 99.8% right, s ~ 0.996
    with torch.no_grad():
        assert (model(one).argmax(1) == 0).all() and (model(averaged).argmax(1) == 1).all()


def test_eot_gradient_through_the_noise_wrapper_varies_less_between_runs(init_model, batch):
    noisy = GaussianNoise(init_model, 0.1)
    x, y = batch[0][:4], batch[1][:4]

    def agreement(samples):  # fraction of pixels where two independent one-step runs agree
        torch.manual_seed(0)
        a = pgd(noisy, x, y, EPS, EPS, 1, random_start=False, eot_samples=samples)
        b = pgd(noisy, x, y, EPS, EPS, 1, random_start=False, eot_samples=samples)
        inside = _interior(x, EPS)
        return ((a - x).sign() == (b - x).sign())[inside].float().mean().item()

    single, averaged = agreement(1), agreement(16)
    assert averaged > single + 0.1, (single, averaged)


def test_cw_margin_is_best_other_minus_true_and_positive_exactly_when_wrong():
    from common.attacks import cw_margin_sum

    logits = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0]])
    assert cw_margin_sum(logits[:1], torch.tensor([0])).item() == pytest.approx(2.0)
    assert cw_margin_sum(logits[:1], torch.tensor([1])).item() == pytest.approx(-1.0)
    assert cw_margin_sum(logits, torch.tensor([0, 1])).item() == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(0)
    many, labels = torch.randn(200, 10, generator=gen), torch.randint(0, 10, (200,), generator=gen)
    margins = torch.stack([cw_margin_sum(many[i:i + 1], labels[i:i + 1]) for i in range(200)])
    assert torch.equal(margins > 0, many.argmax(1) != labels)


def test_cw_follows_the_margin_where_cross_entropy_is_lured_away():
    model, x = toys.Decoy(), toys.grey_images(8)
    y = torch.zeros(8, dtype=torch.long)

    def predicted(loss):
        gen = torch.Generator().manual_seed(0)
        x_adv = pgd(model, x, y, EPS, 2 * EPS, 1, loss=loss, generator=gen)
        with torch.no_grad():
            return model(x_adv).argmax(1)

    assert (predicted("cw") == 1).all()  # the margin reaches the runner-up class
    assert (predicted("ce") == 0).all()  # cross-entropy chases the decoy class 2 instead


def test_cw_raises_the_margin_and_lowers_accuracy_on_a_trained_model(trained_model, batch):
    from common.attacks import cw_margin_sum

    x, y = batch

    def margin_and_acc(images):
        with torch.no_grad():
            logits = trained_model(images)
        return cw_margin_sum(logits, y).item() / len(y), (logits.argmax(1) == y).float().mean()

    margin, acc = margin_and_acc(x)
    gen = torch.Generator().manual_seed(0)
    margin_3, _ = margin_and_acc(pgd(trained_model, x, y, EPS, 2 / 255, 3, loss="cw",
                                     generator=gen))
    margin_10, acc_10 = margin_and_acc(pgd(trained_model, x, y, EPS, 2 / 255, 10, loss="cw",
                                           generator=gen))
    assert margin < margin_3 < margin_10
    assert acc_10 <= acc - 0.04


def test_deepfool_on_an_affine_classifier_lands_just_past_the_nearest_boundary():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    x = 0.4 + 0.2 * torch.rand(16, 3, 32, 32)  # far from 0 and 1: no clipping
    with torch.no_grad():
        logits = model(x)
    label = logits.argmax(1)
    weight = model[1].weight
    # Distance to the boundary with class k: (f_label - f_k) / |w_label - w_k|.
    gaps = logits.gather(1, label[:, None]) - logits
    dists = gaps / (weight[label][:, None, :] - weight[None, :, :]).norm(dim=2)
    dists[torch.arange(16), label] = float("inf")
    nearest, target = dists.min(1)
    x_adv = deepfool(model, x, overshoot=0.02)
    norms = (x_adv - x).flatten(1).norm(dim=1)
    # One exact step, 2% overshoot (plus DeepFool's 1e-4 nudge past the boundary).
    assert (norms >= 1.02 * nearest * (1 - 1e-4)).all()
    assert (norms <= 1.02 * (nearest + 1e-4) * (1 + 1e-4) + 1e-6).all()
    with torch.no_grad():
        assert torch.equal(model(x_adv).argmax(1), target)


def test_noise_wrapper_adds_clipped_gaussian_noise_of_sigma_with_a_gradient():
    noisy = GaussianNoise(torch.nn.Identity(), 0.1)
    torch.manual_seed(0)
    x = torch.full((8, 3, 32, 32), 0.5, requires_grad=True)
    out = noisy(x)
    assert (out - 0.5).mean().abs() < 2e-3
    assert (out - 0.5).std().item() == pytest.approx(0.1, rel=0.02)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.ones_like(grad))  # attackers differentiate through it
    edge = noisy(torch.zeros(8, 3, 32, 32))
    assert edge.min() == 0 and 0.4 < (edge == 0).float().mean() < 0.6  # clipped to [0, 1]
    assert noisy(torch.ones(8, 3, 32, 32)).max() == 1
