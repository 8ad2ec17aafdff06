"""The evaluation's convention, on hand-built models whose outcomes are known in closed form:
clean-and-robust counting, the worst case over attacks, the majority vote through fresh
noise, the two noise protocols, DeepFool's median. Images are the grey image of tests.toys
(uint8 128), every true label is 0; `evaluate` takes any image size, and the models that do
not need 32 x 32 get 4 x 4 images, which keeps the many noise draws cheap."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from common.attacks import FixedNoise, GaussianNoise, fgsm
from common.config import ConfigError, ExperimentConfig
from common.evaluation import EvalSettings, evaluate, parse_attacks
from . import toys

SIGMA = 0.05


def small_grey(n: int) -> torch.Tensor:
    return torch.full((n, 3, 4, 4), 128, dtype=torch.uint8)


@pytest.fixture(autouse=True)
def one_thread():
    """The toy models' tensors are small: a second thread only adds waits on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _binomial_tail(n: int, p: float, k: int) -> float:
    """P(Binomial(n, p) >= k)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


class Overshoot(toys._Toy):
    """Wrong when clean, right after FGSM: class-1 logit 1 + s - 3 s^2 is 1 at s = 0, its
    slope 1 sends FGSM to s = +1, where the logit is -1 and class 0 wins."""

    def forward(self, x):
        s = self.offset(x)
        g = 1 + s - 3 * s * s
        return torch.stack([torch.zeros_like(g), g], 1)


class CoinUnderNoise(nn.Module):
    """Under Gaussian noise of SIGMA, class 1 wins one draw with probability P_WRONG.

    z = mean(x - GREY) / (SIGMA / sqrt(D)) over the D values of an image is exactly N(0, 1)
    for noisy grey images (the clamp to [0, 1] is 10 sigma away); class 1 wins when z > C.
    The gradient is zero, so an attack leaves x where it is.
    """

    C = 0.2533  # 1 - Phi(C) = 0.4
    P_WRONG = 0.4

    def forward(self, x):
        z = ((x - toys.GREY).flatten(1).mean(1) / (SIGMA / x[0].numel() ** 0.5)).detach()
        g = z - self.C + 0 * x.flatten(1).sum(1)  # in the graph, gradient zero
        return torch.stack([torch.zeros_like(g), g], 1)


def test_an_example_wrong_when_clean_is_never_robust():
    model = Overshoot()
    x = toys.grey_images(8)
    y = torch.zeros(8, dtype=torch.long)
    # The case is what it claims: wrong clean, right under FGSM.
    assert (model(x).argmax(1) == 1).all()
    assert (model(fgsm(model, x, y, toys.EPS)).argmax(1) == 0).all()
    out = evaluate(model, toys.grey_uint8(8), y, EvalSettings(parse_attacks("fgsm")))
    assert out["natural_acc"] == 0.0
    assert out["fgsm_acc"] == 0.0
    assert out["worst_acc"] == 0.0


def test_worst_case_is_the_union_of_the_attacks_not_the_strongest_one():
    # Each attack's random start decides which half of the images it fools (toys.TwoBasins);
    # the two attacks start independently, so together they fool about three quarters.
    n = 64
    settings = EvalSettings(parse_attacks("pgd5,cw5"), step=toys.EPS / 2, batch_size=n)
    out = evaluate(toys.TwoBasins(), toys.grey_uint8(n), torch.zeros(n, dtype=torch.long),
                   settings, seed=3)
    pgd, cw, worst = (round(out[k] * n) for k in ("pgd5_acc", "cw5_acc", "worst_acc"))
    assert 16 <= pgd <= 48 and 16 <= cw <= 48, out
    assert worst < min(pgd, cw)
    assert worst >= pgd + cw - n  # the examples both attacks missed, at least


def test_fresh_noise_classifies_by_the_majority_over_draws():
    n, draws = 200, 101
    model = CoinUnderNoise()
    images, labels = small_grey(n), torch.zeros(n, dtype=torch.long)

    def run(noise_draws):
        settings = EvalSettings(parse_attacks("fgsm"), noise_std=SIGMA, plain=False,
                                noise_draws=noise_draws, batch_size=n)
        return evaluate(model, images, labels, settings, seed=1)

    # One draw: each image is right with probability 0.6, clean and after FGSM (which does
    # not move it) independently: 0.36 of them count as robust.
    single = run(1)
    assert abs(single["natural_noise_acc"] - 0.6) < 4 * (0.24 / n) ** 0.5
    assert abs(single["fgsm_noise_acc"] - 0.36) < 4 * (0.36 * 0.64 / n) ** 0.5
    # The majority of 101 draws is wrong with probability P(Bin(101, 0.4) >= 51) = 0.021.
    majority_right = 1 - _binomial_tail(draws, CoinUnderNoise.P_WRONG, draws // 2 + 1)
    voted = run(draws)
    spread = 4 * (majority_right * (1 - majority_right) / n) ** 0.5
    assert abs(voted["natural_noise_acc"] - majority_right) < spread
    assert abs(voted["fgsm_noise_acc"] - majority_right**2) < 2 * spread


def test_fixed_noise_shows_attacker_and_classifier_the_same_draw():
    n = 200
    model = CoinUnderNoise()
    settings = EvalSettings(parse_attacks("fgsm"), noise_std=SIGMA, plain=False,
                            noise_protocol="fixed", noise_draws=101, batch_size=n)
    out = evaluate(model, small_grey(n), torch.zeros(n, dtype=torch.long), settings, seed=1)
    # One draw per image, no vote: right with probability 0.6 ...
    assert abs(out["natural_noise_acc"] - 0.6) < 4 * (0.24 / n) ** 0.5
    # ... and FGSM, which does not move x, meets the same draw: exactly the same images.
    assert out["fgsm_noise_acc"] == out["natural_noise_acc"]


def test_fixed_noise_follows_each_image_through_slices_and_perturbations():
    gen = torch.Generator().manual_seed(0)
    anchors = torch.rand(6, 3, 32, 32, generator=gen)
    fixed = FixedNoise(nn.Identity(), SIGMA, anchors, generator=gen)
    seen = fixed(anchors)
    assert torch.equal(seen, (anchors + fixed.noise).clamp(0, 1))
    assert 0.8 * SIGMA < fixed.noise.std() < 1.2 * SIGMA
    # An attack's subset, reordered and moved inside the eps-ball, keeps each image's draw.
    order = torch.tensor([4, 1, 5])
    step = toys.EPS * torch.sign(torch.randn(3, 3, 32, 32, generator=gen))
    moved = (anchors[order] + step).clamp(0, 1)
    assert torch.equal(fixed(moved), (moved + fixed.noise[order]).clamp(0, 1))
    assert torch.equal(fixed(anchors), seen)  # deterministic: no new draw
    fresh = GaussianNoise(nn.Identity(), SIGMA)
    assert not torch.equal(fresh(anchors), fresh(anchors))


class Flippable(nn.Module):
    """DeepFool flips an image only if its first pixel is bright: class-1 logit
    40 (mean(x) - GREY) - 1 needs a mean shift of 1/40, an L2 norm of sqrt(D) / 40 over the
    D values of an image; a dark first pixel makes the logit a constant -1 (gradient zero,
    DeepFool cannot move). Ten classes, as DeepFool expects; classes 2-9 never win."""

    def forward(self, x):
        flippable = (x[:, 0, 0, 0] > 0.25).float().detach()
        g = flippable * 40 * (x.flatten(1).mean(1) - toys.GREY) - 1
        rest = torch.full((x.shape[0], 8), -10.0)
        return torch.cat([torch.zeros_like(g)[:, None], g[:, None], rest], 1)


@pytest.mark.parametrize("unflippable", [1, 2, 3])
def test_deepfool_median_counts_unflipped_images_as_infinitely_far(unflippable):
    images = small_grey(4)
    images[:unflippable, 0, 0, 0] = 0
    labels = torch.zeros(4, dtype=torch.long)
    needed = 48**0.5 / 40  # DeepFool overshoots by 2%
    out = evaluate(Flippable(), images, labels,
                   EvalSettings(parse_attacks("deepfool"), deepfool_l2=2 * needed))
    assert out["natural_acc"] == 1.0
    # The flipped ones needed less than the bound: only the unflipped ones count as robust.
    assert out["deepfool_acc"] == unflippable / 4
    if unflippable == 3:
        assert out["deepfool_median_l2"] == math.inf  # only one of four was flipped
    else:  # two or three of four: the lower middle value is a flipped one
        assert needed < out["deepfool_median_l2"] < 1.05 * needed


def test_noise_settings_are_checked_before_any_work():
    for key, value in [("eval.noise-draws", 0), ("eval.noise-protocol", "both"),
                       ("eval.square-queries", 0)]:
        with pytest.raises(ConfigError, match=key):
            ExperimentConfig.from_flat({key: value})
    with pytest.raises(ValueError, match="at least 1 draw"):
        EvalSettings((), noise_draws=0)
    with pytest.raises(ValueError, match="fresh, fixed"):
        EvalSettings((), noise_protocol="shared")


def test_final_evaluation_and_report_name_their_noise_protocol(data_dir, tmp_path, capsys):
    import pandas as pd

    from common.models import build_model
    from common.run_folder import RunStore
    from simulation import cli
    from simulation.final_eval import FinalEval
    from simulation.report import CellRun, write_report
    from simulation.studies import STUDIES, Cell
    from simulation.sweep import evaluate_runs

    run = tmp_path / "run"
    run.mkdir()
    RunStore(run).write_config(ExperimentConfig.from_flat({
        "data.dir": str(data_dir), "data.eval-limit": 16, "eval.noise-protocol": "fixed",
        "eval.noise-draws": 3, "eval.square-queries": 20,
        "eval.diagnostic-queries": 20}))  # diagnostics.csv: tests/test_diagnostics.py
    torch.manual_seed(0)
    torch.save(build_model("relu", 8).state_dict(), run / "final.pt")
    # A row cached before the convention named its settings: kept, never reused.
    old = pd.DataFrame([{"noise_std": 0.0, "attacks": "apgd-ce", "eval_limit": 16,
                         "natural_acc": 0.5, "apgd_ce_acc": 0.5}])
    old.to_csv(run / "final_eval.csv", index=False)

    def evaluate_cli(*extra):
        args = cli._parser().parse_args(["evaluate", str(run), "--attacks", "apgd-ce",
                                         "--noise-attacks", "square", "--noise-std", "0,0.05",
                                         *extra])
        assert cli.cmd_evaluate(args) == 0
        return pd.read_csv(run / "final_eval.csv")

    first = evaluate_cli()  # the run's protocol
    printed = capsys.readouterr().out
    assert "noise_protocol" in printed and "fixed" in printed and "0.500" not in printed
    assert first[["noise_std", "noise_protocol"]].fillna("old").values.tolist() == [
        [0.0, "none"], [0.0, "old"], [0.05, "fixed"]]
    assert {"apgd_ce_acc", "worst_acc", "square_noise_acc", "worst_noise_acc"} \
        <= set(first.columns)
    both = evaluate_cli("--noise-protocol", "fresh")  # only the noisy row is new
    assert sorted(both["noise_protocol"].dropna()) == ["fixed", "fresh", "none"]
    assert evaluate_cli().equals(both)  # cached: nothing evaluated again

    outcomes = [CellRun(Cell("c", {}, True, 1), run, "finished")]
    final = FinalEval(attacks="apgd-ce", noise_attacks="square", eval_limit=16)
    evaluate_runs(outcomes, final)
    report = write_report(STUDIES["grid"], outcomes, tmp_path, final)
    assert pd.read_csv(report / "results.csv")["noise_protocol"].tolist() == ["fixed"]
    tables = (report / "tables.md").read_text()
    assert "Noise protocol: `fixed`" in tables and "upper bound" in tables
    assert pd.read_csv(run / "final_eval.csv").equals(both)  # the report reused the rows


@pytest.mark.parametrize("flag", ["--attacks", "--noise-attacks"])
def test_a_sweep_refuses_a_bad_final_attack_list_before_it_starts(tmp_path, flag):
    from simulation import cli
    from simulation.overrides import UsageError

    args = cli._parser().parse_args(["sweep", "grid", "--scale", "toy", "--grid",
                                     "model.activation=relu", "--out", str(tmp_path / "sweep"),
                                     flag, "pgd20,autoattack"])
    with pytest.raises(UsageError, match="unknown attack 'autoattack'.*aa, apgd-ce"):
        cli.cmd_sweep(args)
    assert not (tmp_path / "sweep").exists()
