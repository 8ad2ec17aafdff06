import pytest
import torch

from common.evaluation import EvalSettings, columns, evaluate, parse_attacks
from common.models import build_model


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
