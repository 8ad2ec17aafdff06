import pytest
import torch

from common.evaluation import EvalSettings, columns, evaluate, parse_attacks
from common.models import build_model

from . import toys


def test_attack_specs_parse():
    specs = parse_attacks("fgsm, pgd20,pgd50x5,eot-pgd20,cw30,deepfool")
    assert [(s.kind, s.steps, s.restarts) for s in specs] == [
        ("fgsm", 0, 1), ("pgd", 20, 1), ("pgd", 50, 5), ("eot-pgd", 20, 1), ("cw", 30, 1),
        ("deepfool", 0, 1)]
    assert [s.column for s in specs][3] == "eot_pgd20"


@pytest.mark.parametrize("bad", ["pgd", "pgd0", "fgsm2", "autoattack", "pgd10x0", "fgsm,fgsm"])
def test_bad_attack_specs_are_named(bad):
    with pytest.raises(ValueError, match="attack"):
        parse_attacks(bad)


def test_evaluate_returns_exactly_the_declared_columns(cifar):
    settings = EvalSettings(parse_attacks("fgsm,pgd2,eot-pgd1,cw1,deepfool"), noise_std=0.05,
                            eot_samples=2, batch_size=16)
    model = build_model("relu", 8)
    out = evaluate(model, cifar.test_x[:20], cifar.test_y[:20], settings, seed=0)
    assert list(out) == columns(settings)
    assert all(0 <= v <= 1 for k, v in out.items() if k.endswith("_acc"))


def test_evaluation_is_deterministic_for_a_seed(cifar):
    settings = EvalSettings(parse_attacks("pgd3"), noise_std=0.1, batch_size=32)
    torch.manual_seed(0)
    model = build_model("relu", 8)
    a = evaluate(model, cifar.test_x[:64], cifar.test_y[:64], settings, seed=5)
    b = evaluate(model, cifar.test_x[:64], cifar.test_y[:64], settings, seed=5)
    assert a == b


# Each attack column runs its own attack with its own parameters: on the toy models of
# tests/toys.py one parameter decides the outcome. Four batches of 16 check that the counts
# add up over batches.
def _evaluate_toy(model, attacks, images=None, **settings):
    images = toys.grey_uint8(64) if images is None else images
    labels = torch.zeros(images.shape[0], dtype=torch.long)
    s = EvalSettings(parse_attacks(attacks), eps=toys.EPS, batch_size=16, **settings)
    return evaluate(model, images, labels, s, seed=0)


def test_pgd_columns_take_their_steps_and_restarts():
    out = _evaluate_toy(toys.TwoBasins(), "pgd1,pgd8,pgd8x8", step=2 / 255)
    assert out["natural_acc"] == 1
    assert out["pgd1_acc"] == 1  # one step of eps/4 cannot reach the adversarial basin
    assert 0.25 <= out["pgd8_acc"] <= 0.75  # one random start: a coin flip per image
    assert out["pgd8x8_acc"] <= 2 / 64  # eight: all but ~1/256 of the images fooled


def test_fgsm_column_steps_by_eps():
    model = toys.TwoBasins()
    tilted = (128 + model.direction).to(torch.uint8).repeat(16, 1, 1, 1)  # s = +1/8
    out = _evaluate_toy(model, "fgsm", images=tilted, step=2 / 255)
    assert out["natural_acc"] == 1 and out["fgsm_acc"] == 0


def test_cw_column_attacks_the_margin():
    out = _evaluate_toy(toys.Decoy(), "pgd1,cw1", step=2 * toys.EPS)
    assert out["pgd1_acc"] == 1 and out["cw1_acc"] == 0


def test_eot_column_averages_the_gradient_of_the_noise_wrapped_model():
    out = _evaluate_toy(toys.NoisyGradient(), "pgd1,eot-pgd1", images=toys.grey_uint8(32),
                        step=2 * toys.EPS, noise_std=1e-3, eot_samples=32)
    assert out["natural_noise_acc"] == 1
    assert out["pgd1_noise_acc"] == 1  # one draw per step: the wrong way on 31% of pixels
    assert out["eot_pgd1_noise_acc"] == 0


def test_noise_columns_classify_through_the_noise():
    out = _evaluate_toy(toys.NoiseDetector(), "", noise_std=0.2)
    assert out["natural_acc"] == 1 and out["natural_noise_acc"] == 0


def test_deepfool_columns_count_flips_within_the_l2_bound_and_their_median():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    images = torch.randint(64, 192, (32, 3, 32, 32), dtype=torch.uint8)  # nothing clips
    with torch.no_grad():
        logits = model(images.float() / 255)
    label = logits.argmax(1)
    # DeepFool on an affine model: 1.02 x (the distance to the nearest boundary + its 1e-4
    # nudge), as tests/test_attacks.py checks.
    gaps = logits.gather(1, label[:, None]) - logits
    dists = gaps / (model[1].weight[label][:, None] - model[1].weight[None]).norm(dim=2)
    dists[torch.arange(32), label] = float("inf")
    needed = 1.02 * (dists.min(1).values.detach() + 1e-4)
    wrong = torch.arange(32) % 4 == 0  # these labels disagree with the model
    labels = torch.where(wrong, (label + 1) % 10, label)
    ranked = needed[~wrong].sort().values
    bound = float(ranked[10] + ranked[11]) / 2  # 11 of the 24 right ones flip within it

    def run(l2):
        s = EvalSettings(parse_attacks("deepfool"), deepfool_l2=l2, batch_size=16)
        return evaluate(model, images, labels, s, seed=0)

    out = run(bound)
    assert out["natural_acc"] == 24 / 32
    assert out["deepfool_acc"] == 13 / 32
    assert out["deepfool_median_l2"] == pytest.approx(float(ranked[11]), rel=1e-4)
    assert run(1e-6)["deepfool_acc"] == 24 / 32 and run(1e6)["deepfool_acc"] == 0
