"""AutoAttack through pyautoattack (common/autoattack.py): as strong as PGD and C&W on a
briefly trained model, equal to pyautoattack run directly, the rand version through fresh
noise, and the majority vote in AutoAttack's decisions.

On the trained model, both sides of each comparison run the standard version less FAB-T,
with 500 Square queries: FAB-T alone took 24 s of 42 for a handful of robust images on one
core, and Square's 5,000 queries take 30 s more.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from pyautoattack import AutoAttack
from torch import nn

from common import autoattack
from common.data import to_float
from common.evaluation import EvalSettings, columns, evaluate, parse_attacks

from .toys import single_thread

N = 24  # test images; AutoAttack's cost goes to the robust ones (a handful here)
SEED = 11
EPS = 8 / 255
QUERIES = 500


@contextlib.contextmanager
def standard_without_fab():
    """pyautoattack's standard version less FAB-T, wherever it is built meanwhile."""
    original = AutoAttack._set_version

    def set_version(self, version="standard"):
        original(self, version)
        self.attacks_to_run = [a for a in self.attacks_to_run if a != "fab-t"]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoAttack, "_set_version", set_version)
        yield


@pytest.fixture
def one_thread():
    with single_thread():
        yield


def test_autoattack_names_parse_to_their_columns():
    specs = parse_attacks("aa, apgd-ce,apgd-t,square")
    assert [(s.kind, s.column) for s in specs] == [
        ("aa", "aa"), ("apgd-ce", "apgd_ce"), ("apgd-t", "apgd_t"), ("square", "square")]
    assert columns(EvalSettings(specs[:1], noise_std=0.05)) == [
        "natural_acc", "aa_acc", "worst_acc", "natural_noise_acc", "aa_noise_acc",
        "worst_noise_acc"]
    for bad in ("aa2", "apgd", "apgd-dlr", "square5"):
        with pytest.raises(ValueError, match="unknown attack"):
            parse_attacks(bad)


@pytest.fixture(scope="module")
def evaluated(trained_model, cifar):
    """`evaluate`'s accuracies, and the adversarial images `aa` returned to it."""
    settings = EvalSettings(parse_attacks("pgd20,cw20,apgd-ce,aa"), square_queries=QUERIES,
                            batch_size=N)
    returned = {}

    def record(model, x, y, name, **kw):  # the real adapter runs; this keeps its output
        returned[name] = autoattack_run(model, x, y, name, **kw)
        return returned[name]

    autoattack_run = autoattack.run
    with single_thread(), standard_without_fab(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(autoattack, "run", record)
        out = evaluate(trained_model, cifar.test_x[:N], cifar.test_y[:N], settings, seed=SEED)
    return out, returned["aa"]


@pytest.fixture(scope="module")
def strong(evaluated):
    return evaluated[0]


def test_aa_is_at_least_as_strong_as_pgd_and_cw(strong):
    robust = {k: round(v * N) for k, v in strong.items()}
    assert robust["natural_acc"] > robust["pgd20_acc"] > 0, robust  # the check can fail
    assert robust["aa_acc"] <= min(robust["pgd20_acc"], robust["cw20_acc"]) + 1, robust
    # APGD-CE alone is AutoAttack's first stage, with the same seed and settings.
    assert robust["aa_acc"] <= robust["apgd_ce_acc"], robust
    assert robust["worst_acc"] <= min(v for k, v in robust.items() if k != "natural_acc")


def test_aa_equals_pyautoattack_run_directly(trained_model, cifar, evaluated):
    strong, x_adv_evaluated = evaluated
    x, y = to_float(cifar.test_x[:N]), cifar.test_y[:N]
    with single_thread(), standard_without_fab():
        direct = AutoAttack(trained_model.eval(), eps=EPS, seed=SEED, version="standard")
        assert direct.attacks_to_run == ["apgd-ce", "apgd-t", "square"]
        direct.square.n_queries = QUERIES
        x_adv, _ = direct.run_standard_evaluation(x, y, batch_size=N)
        with torch.no_grad():
            robust = int((trained_model(x_adv).argmax(1) == y).sum())
    assert robust == round(strong["aa_acc"] * N)
    assert not torch.equal(x_adv, x)  # some images were attacked ...
    assert torch.equal(x_adv_evaluated, x_adv)  # ... and evaluate's are the very same


def test_randomized_models_get_the_rand_version_and_eot():
    model = nn.Flatten()
    rand = autoattack.build(model, "aa", eps=EPS, seed=0, randomized=True)
    assert rand.version == "rand" and rand.attacks_to_run == ["apgd-ce", "apgd-dlr"]
    assert rand.apgd.eot_iter == autoattack.RAND_EOT_DRAWS == 20
    standard = autoattack.build(model, "aa", eps=EPS, seed=0, randomized=False)
    assert standard.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert standard.square.n_queries == 5000 and standard.apgd.eot_iter == 1
    for name, randomized in [("apgd-ce", True), ("apgd-t", True), ("square", False)]:
        single = autoattack.build(model, name, eps=EPS, seed=0, randomized=randomized,
                                  square_queries=300)
        assert single.attacks_to_run == [name]
        # as in the standard version: one APGD run, nine target classes
        assert single.apgd.n_restarts == single.apgd_targeted.n_restarts == 1
        assert single.apgd_targeted.n_target_classes == 9
        assert single.square.n_queries == 300
        draws = autoattack.RAND_EOT_DRAWS if randomized else 1
        assert single.apgd.eot_iter == single.apgd_targeted.eot_iter == draws


class Linear(nn.Module):
    """Ten classes, linear in the image; class 0 wins at grey by a margin that a quarter of
    eps undoes (towards the class whose weights differ most from class 0's)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(10, 48, generator=torch.Generator().manual_seed(0)))

    def forward(self, x):
        logits = (x.flatten(1) - 0.5) @ self.w.t()
        w0 = self.w[0]
        ahead = (w0 - self.w).abs().sum(1) * EPS / 4  # class 0 wins by this at grey
        return logits - logits[:, :1] + (torch.arange(10) == 0) * ahead.max()


def test_autoattack_decides_correct_by_the_given_classifier(one_thread):
    model = Linear()
    x = torch.full((6, 3, 4, 4), 0.5)
    y = torch.zeros(6, dtype=torch.long)
    assert (model(x).argmax(1) == 0).all()
    # The classifier calls images 0-2 wrong already: AutoAttack leaves them as they are.
    called_wrong = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)

    def classify(images):
        scores = model(images).detach()
        if images.shape[0] == 6 and torch.equal(images, x):
            scores[called_wrong, 1] = scores[called_wrong].max(1).values + 1
        return scores

    x_adv = autoattack.run(model, x, y, "apgd-ce", eps=EPS, seed=0, randomized=False,
                           classify=classify)
    assert torch.equal(x_adv[:3], x[:3])
    assert (model(x_adv[3:]).argmax(1) != 0).all()


@pytest.mark.parametrize("protocol", ["fresh", "fixed"])
def test_autoattack_runs_through_both_noise_protocols(protocol, one_thread):
    n = 4
    images = torch.full((n, 3, 4, 4), 128, dtype=torch.uint8)
    settings = EvalSettings(parse_attacks("aa,square"), noise_std=0.01, noise_protocol=protocol,
                            noise_draws=3, square_queries=100, batch_size=n)
    out = evaluate(Linear(), images, torch.zeros(n, dtype=torch.long), settings, seed=0)
    assert out["natural_acc"] == 1.0 and out["natural_noise_acc"] >= 0.5, out
    assert out["aa_acc"] == out["aa_noise_acc"] == out["worst_noise_acc"] == 0.0, out
    assert out["square_acc"] == 0.0, out
