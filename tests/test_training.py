import copy
import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from common import schedules
from common.data import NUM_CLASSES
from common.evaluation import EvalSettings, evaluate, parse_attacks
from common.models import build_model
from common.training import FastPath, train

from .conftest import train_settings


def test_part_weights_follow_the_config():
    assert train_settings(lr=0.1).part_weights() == pytest.approx(
        {"clean": 1 / 3, "adv": 1 / 3, "noise": 1 / 3})
    assert train_settings(lr=0.1, adversarial=False, noise_std=0).part_weights() == {"clean": 1}
    assert train_settings(lr=0.1, weight_clean=0, weight_adv=3, weight_noise=1).part_weights() \
        == pytest.approx({"adv": 0.75, "noise": 0.25})


def test_every_training_key_reaches_the_round_settings():
    """The config is the one source of TrainSettings: each train.* and attack.* key is the
    field of its name (train.local-epochs is epochs), filled per round by train_settings."""
    from common.config import AttackConfig, TrainConfig
    from common.training import TrainSettings

    keys = {f.name for c in (TrainConfig, AttackConfig) for f in dataclasses.fields(c)}
    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    assert keys - {"local_epochs"} <= fields
    assert fields - keys == {"epochs", "progress_start", "progress_end"}


def test_same_seed_same_first_epoch_loss(cifar):
    x, y = cifar.train_x[:256], cifar.train_y[:256]
    settings = train_settings(lr=0.05, batch_size=64, steps=2)

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
    settings = train_settings(lr=0.1, schedule="cosine", progress_start=0.5, progress_end=1.0,
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


# What one training step feeds the model, observed through a forward hook on a real run:
# PGD runs the model in eval mode, so the training-mode forwards are exactly the batches.
ONE_STEP = train_settings(lr=0.1, batch_size=16, momentum=0.0, weight_decay=0.0,
                          label_smoothing=0.2, noise_std=0.1, weight_clean=0.2, weight_adv=0.5,
                          weight_noise=0.3, eps=8 / 255, step=2 / 255, steps=3, amp=False)


def _training_forwards(model):
    """(input, output) of every training-mode forward of `model`, as they happen."""
    seen = []

    def hook(module, inputs, output):
        if module.training:
            seen.append((inputs[0].detach().clone(), output.detach().clone()))

    model.register_forward_hook(hook)
    return seen


def _crop_flip_sources(batch, originals):
    """For each float image of `batch`, the index of the uint8 original it is a 4-padded
    crop (maybe flipped) of."""
    padded = F.pad(originals, (4, 4, 4, 4)).float() / 255
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1).permute(0, 2, 3, 1, 4, 5)
    windows = torch.cat([windows, windows.flip(-1)], 1).flatten(3)  # (n, 18, 9, 3072)
    sources = []
    for image in batch:
        hits = (windows == image.flatten()).all(-1).flatten(1).any(1).nonzero().flatten()
        assert hits.numel(), "a training image is no crop/flip of any original"
        sources.append(int(hits[0]))
    return sources


@pytest.fixture(scope="module")
def one_step(cifar):
    """One real training step on 16 images: the model before, after, the batch, the stats."""
    images, labels = cifar.train_x[:16], cifar.train_y[:16]
    torch.manual_seed(0)
    model = build_model("relu", 8)
    before = copy.deepcopy(model)
    seen = _training_forwards(model)
    stats = train(model, images, labels, ONE_STEP, seed=0, fast=FastPath())
    assert len(seen) == 1, "one step, one training forward"
    batch, logits = seen[0]
    order = _crop_flip_sources(batch[:16], images)
    return SimpleNamespace(images=images, before=before, after=model, stats=stats,
                           batch=batch, logits=logits, order=order, y=labels[order])


def test_the_batch_is_augmented_clean_then_pgd_then_noise_copies(one_step):
    s = one_step
    assert s.batch.shape == (48, 3, 32, 32)
    clean, adv, noise = s.batch[:16], s.batch[16:32], s.batch[32:]
    assert sorted(s.order) == list(range(16))  # every image once, as a crop/flip of itself
    unchanged = sum(torch.equal(clean[i], s.images[j].float() / 255)
                    for i, j in enumerate(s.order))
    assert unchanged <= 4  # 1 in 162 crop/flip draws is the identity

    moved = (adv - clean).abs()
    assert moved.max() <= ONE_STEP.eps + 1e-6
    assert moved.mean() > ONE_STEP.eps / 2  # random start plus 3 steps: most pixels at the edge
    before = copy.deepcopy(s.before).eval()
    with torch.no_grad():  # PGD raised the loss of the model it attacked, image by image
        raised = F.cross_entropy(before(adv), s.y, reduction="none") > F.cross_entropy(
            before(clean), s.y, reduction="none")
    assert raised.float().mean() >= 0.9

    offset = (noise - clean)[(clean > 0.3) & (clean < 0.7)]  # no clipping within 3 sigma
    assert offset.std().item() == pytest.approx(ONE_STEP.noise_std, rel=0.05)
    assert abs(offset.mean().item()) < 0.01


def test_one_step_descends_the_weighted_soft_label_loss_of_that_batch(one_step):
    s = one_step
    model = copy.deepcopy(s.before).train()
    logits = model(s.batch)
    assert torch.allclose(logits, s.logits, atol=1e-5)
    alpha, n = ONE_STEP.label_smoothing, NUM_CLASSES
    targets = F.one_hot(s.y, n).float() * (1 - alpha) + alpha / n
    parts = [-(targets * part.log_softmax(1)).sum(1).mean() for part in logits.view(3, 16, n)]
    weights = (0.2, 0.5, 0.3)  # clean, adv, noise: already normalized
    loss = sum(w * part for w, part in zip(weights, parts))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for p_before, p_after, g in zip(s.before.parameters(), s.after.parameters(), grads):
        expected = p_before.detach() - ONE_STEP.lr * g
        torch.testing.assert_close(p_after.detach(), expected, rtol=1e-4, atol=1e-6)
    got = (s.stats.clean_loss, s.stats.adv_loss, s.stats.noise_loss, s.stats.loss)
    assert got == pytest.approx([p.item() for p in parts] + [loss.item()], rel=1e-5)
    clean_acc = (logits[:16].argmax(1) == s.y).float().mean().item()
    assert s.stats.clean_acc == pytest.approx(clean_acc)


@pytest.mark.parametrize("changes, parts", [
    ({}, 3),
    ({"adversarial": False}, 2),
    ({"noise_std": 0.0}, 2),
    ({"weight_clean": 0.0}, 2),
    ({"adversarial": False, "noise_std": 0.0}, 1),
])
def test_a_part_enters_the_batch_exactly_when_it_has_weight(cifar, changes, parts):
    settings = dataclasses.replace(ONE_STEP, batch_size=8, steps=1, **changes)
    model = build_model("relu", 8)
    seen = _training_forwards(model)
    stats = train(model, cifar.train_x[:8], cifar.train_y[:8], settings, seed=0,
                  fast=FastPath())
    assert [inputs.shape[0] for inputs, _ in seen] == [8 * parts]
    for name in settings.part_weights():
        assert getattr(stats, f"{name}_loss") > 0, name
    for name in {"clean", "adv", "noise"} - set(settings.part_weights()):
        assert getattr(stats, f"{name}_loss") == 0, name


def test_pgd_copies_cost_a_trained_model_more_than_clean_and_noisy_ones(trained_model, cifar):
    model = copy.deepcopy(trained_model)
    settings = train_settings(lr=0.0, batch_size=64, steps=3, step=2.5 * 8 / 255 / 3,
                              noise_std=0.05, amp=False)
    stats = train(model, cifar.train_x[:128], cifar.train_y[:128], settings, seed=0)
    assert stats.adv_loss > stats.clean_loss + 0.1, stats
    assert stats.adv_loss > stats.noise_loss + 0.1, stats
