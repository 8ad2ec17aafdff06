import pytest
import torch
import torch.nn.functional as F

from common import schedules
from common.evaluation import EvalSettings, evaluate, parse_attacks
from common.models import build_model
from common.training import TrainSettings, soft_labels, train


def test_soft_labels_sum_to_one_with_the_stated_values():
    y = torch.tensor([0, 3, 9])
    t = soft_labels(y, alpha=0.05)
    assert torch.allclose(t.sum(1), torch.ones(3))
    assert torch.allclose(t[1, 3], torch.tensor(1 - 0.05 * 9 / 10))
    assert torch.allclose(t[1, 0], torch.tensor(0.05 / 10))


def test_soft_labels_equal_what_the_loss_uses():
    logits, y = torch.randn(5, 10), torch.randint(0, 10, (5,))
    by_hand = -(soft_labels(y, 0.05) * logits.log_softmax(1)).sum(1).mean()
    assert torch.allclose(by_hand, F.cross_entropy(logits, y, label_smoothing=0.05))


def test_part_weights_follow_the_config():
    assert TrainSettings(lr=0.1).part_weights() == pytest.approx(
        {"clean": 1 / 3, "adv": 1 / 3, "noise": 1 / 3})
    assert TrainSettings(lr=0.1, adversarial=False, noise_std=0).part_weights() == {"clean": 1}
    assert TrainSettings(lr=0.1, weight_clean=0, weight_adv=3, weight_noise=1).part_weights() \
        == pytest.approx({"adv": 0.75, "noise": 0.25})


def test_same_seed_same_first_epoch_loss(cifar):
    x, y = cifar.train_x[:256], cifar.train_y[:256]
    settings = TrainSettings(lr=0.05, batch_size=64, steps=2)

    def once(seed):
        torch.manual_seed(0)
        model = build_model("rrelu", 8)  # RReLU draws from the global stream in training
        return train(model, x, y, settings, seed=seed).loss

    assert once(3) == once(3)
    assert once(3) != once(4)


def test_training_lifts_accuracy_well_above_chance(trained_model, cifar):
    settings = EvalSettings(attacks=parse_attacks("pgd10"), batch_size=500)
    acc = evaluate(trained_model, cifar.test_x[:500], cifar.test_y[:500], settings)
    assert acc["natural_acc"] > 0.25  # chance is 0.10
    assert acc["pgd10_acc"] < acc["natural_acc"]


def test_lr_follows_the_schedule_over_the_call(cifar):
    seen = []
    settings = TrainSettings(lr=0.1, schedule="cosine", progress_start=0.5, progress_end=1.0,
                             batch_size=32, adversarial=False, noise_std=0)
    model = build_model("relu", 8)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    original = optimizer.step

    def step(*a, **k):
        seen.append(optimizer.param_groups[0]["lr"])
        return original(*a, **k)

    optimizer.step = step
    train(model, cifar.train_x[:128], cifar.train_y[:128], settings, 0, optimizer)
    assert seen == pytest.approx([schedules.lr_at("cosine", 0.1, 0.5 + 0.5 * i / 4)
                                  for i in range(4)])


@pytest.mark.parametrize("name", schedules.NAMES)
def test_schedules_start_at_the_base_rate_region_and_never_go_negative(name):
    values = [schedules.lr_at(name, 0.1, p / 100) for p in range(101)]
    assert all(v >= 0 for v in values) and max(values) == pytest.approx(0.1, rel=0.05)
    if name == "fixed":
        assert set(values) == {0.1}
    if name in ("cosine", "onecycle"):
        assert values[-1] == pytest.approx(0.0, abs=1e-9)
    if name == "step":
        assert values[0] == 0.1 and values[60] == pytest.approx(0.01)
        assert values[80] == pytest.approx(0.001)


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="fixed, step, cosine, onecycle"):
        schedules.lr_at("warm", 0.1, 0.5)
