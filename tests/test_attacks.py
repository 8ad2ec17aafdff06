import pytest
import torch

from common.attacks import GaussianNoise, deepfool, eot_pgd, eval_mode, fgsm, pgd
from common.data import to_float
from common.models import build_model

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
        "eot": lambda: eot_pgd(GaussianNoise(model, 0.1), x, y, EPS, 2 / 255, 3, samples=3),
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
    eot = noisy_acc(eot_pgd(noisy, x, y, EPS, 2 / 255, 10, samples=8))
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
