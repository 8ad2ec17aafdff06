"""Gradient-masking diagnostics (common/diagnostics.py, simulation/diagnostics.py): a model
that hides its gradient is flagged, a normally trained one passes; the noise defence's EOT gap;
diagnostics.csv cached per settings, in `evaluate` and in the report's flag column and figure.

The trained model is conftest's session fixture (shared with the AutoAttack tests); the
checks run on N of its test images with fewer steps (unbounded PGD-10, PGD-20 for PGD-100) and
Square queries (100) than the defaults: about 7 s of one core per model instead of 16 s, and
the same verdicts (measured on 40 and 48 images, and on 200 with the defaults).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from torch import nn

from common.config import ExperimentConfig
from common.diagnostics import (
    CHECKS, DiagnosticSettings, diagnose, eps_curve, masking_flags, tolerance)
from common.evaluation import EvalSettings
from . import toys

N = 40
CHEAP = DiagnosticSettings(unbounded_steps=10, many_steps=20, square_queries=100)


class Quantized(nn.Module):
    """The trained model behind an 8-bit quantization of its input: exactly the same
    predictions on (uint8) images and the same true robustness, but torch.round has a zero
    gradient, so every gradient attack sees a flat loss (the masking that Athalye et al.
    broke with BPDA)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 255) / 255)


def by_check(rows: list[dict]) -> dict[str, dict]:
    return {r["check"]: r for r in rows}


@pytest.fixture(scope="module")
def test_images(cifar):
    return cifar.test_x[:N], cifar.test_y[:N]


def test_tolerance_is_a_few_images_growing_with_the_square_root():
    assert [round(tolerance(n) * n) for n in (16, 32, 200, 1000)] == [2, 3, 8, 16]


def test_a_normally_trained_model_passes_every_check(trained_model, test_images):
    with toys.single_thread():
        rows = diagnose(trained_model, *test_images, EvalSettings(()), seed=1, checks=CHEAP)
    assert [r["check"] for r in rows] == list(CHECKS[:4])  # no noise: no EOT check
    assert masking_flags(rows) == "ok", rows
    found = by_check(rows)
    curve = eps_curve(rows)[1]
    assert curve[0] > 0.2 and curve[-1] < curve[0]  # it learnt something, eps hurts it
    assert json.loads(found["unbounded"]["measured"])[f"pgd{CHEAP.unbounded_steps}_acc"] == 0


def test_a_model_that_masks_its_gradient_is_flagged(trained_model, test_images):
    masked = Quantized(trained_model)
    images, labels = test_images
    with torch.no_grad():  # the same classifier on clean images
        assert torch.equal(masked(images.float() / 255).argmax(1),
                           trained_model(images.float() / 255).argmax(1))
    with toys.single_thread():
        rows = by_check(diagnose(masked, images, labels, EvalSettings(()), seed=1,
                                 checks=CHEAP))
    # PGD only ever sees its random start: even an eps of 0.5 leaves the images that survive
    # random noise (20 of 40 here), and Square, which needs no gradient, fools 10 more than
    # PGD. Random noise does not weaken with more steps or grow weaker with eps: those two
    # checks pass, and the flag comes from the other two.
    assert masking_flags(list(rows.values())) == "unbounded,black_box", rows
    assert rows["unbounded"]["value"] > 5 * rows["unbounded"]["threshold"]
    assert rows["black_box"]["value"] > 1.5 * rows["black_box"]["threshold"]


class LinearToy(toys._Toy):
    """An honest gradient: class-1 logit 4 (s - 0.6), fooled once s > 0.6."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = 4 * (self.offset(x) - 0.6)
        return torch.stack([torch.zeros_like(g), g], 1)


class ThroughTheBand(toys._Toy):
    """Fooled only for s in (0.6, 1.5), but the gradient always points to larger s (its
    value and gradient disagree, as in a defence with a non-differentiable part): PGD walks
    through the adversarial band and out of it whenever it may go further."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.offset(x)
        inside = torch.minimum(s - 0.6, 1.5 - s)  # > 0 in the band
        g = inside.detach() + s - s.detach()  # the value of `inside`, the gradient of s
        return torch.stack([torch.zeros_like(g), g], 1)


@pytest.mark.parametrize("model, flagged", [(ThroughTheBand(), True), (LinearToy(), False)])
def test_accuracy_that_rises_with_eps_or_steps_is_flagged(model, flagged):
    # The eps sweep (PGD-4, step 2.5 eps / 4) ends at s = eps / (8/255): the band only at
    # 8/255, so accuracy 1, 1, 1, 0, 1 over (0, 2, 4, 8, 16)/255. At eps 16/255 with step
    # 2/255 from a random start, PGD-4 ends at s = 0.875 on average (in the band), PGD-10 at
    # 1.72 (past it). LinearToy, fooled for any s > 0.6, is monotone in both.
    n = 16
    quick = DiagnosticSettings(unbounded_steps=2, few_steps=4, many_steps=10, square_queries=10)
    with toys.single_thread():
        rows = by_check(diagnose(model, toys.grey_uint8(n), torch.zeros(n, dtype=torch.long),
                                 EvalSettings((), eps=2 * toys.EPS), seed=0, checks=quick))
    curve = eps_curve(list(rows.values()))[1]
    if flagged:
        assert curve == [1, 1, 1, 0, 1]
        assert not rows["eps_monotone"]["passed"] and rows["eps_monotone"]["value"] == 1
        assert not rows["steps_monotone"]["passed"] and rows["steps_monotone"]["value"] == 1
    else:
        assert curve == [1, 1, 1, 0, 0]
        assert rows["eps_monotone"]["passed"] and rows["steps_monotone"]["passed"]


@pytest.mark.parametrize("model, flagged", [(toys.NoisyGradient(), True), (LinearToy(), False)])
def test_noise_that_masks_the_gradient_opens_an_eot_gap(model, flagged):
    # toys.NoisyGradient: one draw's gradient sign is right on 69% of the pixels (a step to
    # the ball's edge reaches s = 0.38, not the 0.7 that fools it), the mean of 16 draws on
    # 98% (s = 0.95). Through (negligible) fresh noise the check compares the two.
    n = 16
    settings = EvalSettings((), noise_std=1e-3, step=2 * toys.EPS, eot_samples=16,
                            noise_draws=1)
    quick = DiagnosticSettings(unbounded_steps=2, few_steps=2, many_steps=3, square_queries=10,
                               eps_grid=(0.0, toys.EPS))
    with toys.single_thread():
        rows = by_check(diagnose(model, toys.grey_uint8(n), torch.zeros(n, dtype=torch.long),
                                 settings, seed=0, checks=quick))
    gap = rows["eot_gap"]
    assert gap["passed"] is not flagged, gap
    measured = json.loads(gap["measured"])
    if flagged:
        assert measured["pgd2_noise_acc"] == 1.0 and measured["eot_pgd2_noise_acc"] == 0.0
    else:
        assert measured["pgd2_noise_acc"] == measured["eot_pgd2_noise_acc"] == 0.0
    # Fixed noise shows the attacker the classifier's draw: nothing to average, no check.
    fixed = diagnose(model, toys.grey_uint8(n), torch.zeros(n, dtype=torch.long),
                     EvalSettings((), noise_std=1e-3, noise_protocol="fixed"), checks=quick)
    assert "eot_gap" not in by_check(fixed)


def test_bad_diagnostic_settings_are_refused():
    with pytest.raises(ValueError, match="few steps < many steps"):
        DiagnosticSettings(few_steps=10, many_steps=10)
    with pytest.raises(ValueError, match="no images"):
        diagnose(LinearToy(), toys.grey_uint8(0), torch.zeros(0, dtype=torch.long),
                 EvalSettings(()))


def test_evaluate_and_the_report_write_diagnostics_once_per_setting(data_dir, tmp_path,
                                                                    capsys):
    from common.models import build_model
    from common.run_folder import RunStore
    from simulation import cli
    from simulation.diagnostics import FIGURE, diagnose_run
    from simulation.final_eval import FinalEval
    from simulation.report import CellRun, write_report
    from simulation.studies import STUDIES, Cell
    from simulation.sweep import evaluate_runs

    run = tmp_path / "run"
    run.mkdir()
    RunStore(run).write_config(ExperimentConfig.from_flat({
        "data.dir": str(data_dir), "data.val-size": 0, "data.eval-limit": 8,
        "eval.noise-std": 0.0, "eval.diagnostic-queries": 20}))
    torch.manual_seed(0)
    torch.save(build_model("relu", 8).state_dict(), run / "final.pt")

    def evaluate_cli(*extra):
        args = cli._parser().parse_args(["evaluate", str(run), "--attacks", "fgsm", *extra])
        with toys.single_thread():
            assert cli.cmd_evaluate(args) == 0
        return capsys.readouterr().out

    assert "diagnostics.csv" not in evaluate_cli("--no-diagnostics")
    assert not (run / "diagnostics.csv").exists()
    printed = evaluate_cli()
    assert "black_box" in printed and "diagnostics.csv" in printed
    first = pd.read_csv(run / "diagnostics.csv")
    assert list(first["check"]) == list(CHECKS[:4])
    assert (first["images"] == 8).all() and (first["model"] == "final").all()
    assert (first["square_queries"] == 20).all()
    # Cached: the sweep's evaluation and the report reuse the rows; a smaller eval limit is a
    # new setting.
    outcomes = [CellRun(Cell("c", {}, True, 1), run, "finished")]
    final = FinalEval(attacks="fgsm", noise_attacks="fgsm", eval_limit=8)
    evaluate_runs(outcomes, final)
    report = write_report(STUDIES["grid"], outcomes, tmp_path, final)
    assert pd.read_csv(run / "diagnostics.csv").equals(first)
    table = pd.read_csv(report / "results.csv")
    assert table["masking_flags"].tolist() == [masking_flags(first.to_dict("records"))]
    assert [c for c in table if c.startswith("eps_sweep_acc@")] == [
        "eps_sweep_acc@0/255", "eps_sweep_acc@2/255", "eps_sweep_acc@4/255",
        "eps_sweep_acc@8/255", "eps_sweep_acc@16/255"]
    assert (report / FIGURE).is_file()
    tables = (report / "tables.md").read_text()
    assert "| masking_flags |" in tables and f"({FIGURE})" in tables
    # Another setting (fewer images, fewer steps): the rows are computed again and replace
    # the old ones.
    tiny = DiagnosticSettings(unbounded_steps=1, few_steps=1, many_steps=2, square_queries=5)
    again = diagnose_run(run, images=4, checks=tiny)
    assert (again["images"] == 4).all() and (again["many_steps"] == 2).all()
    assert pd.read_csv(run / "diagnostics.csv")[["images", "many_steps"]].values.tolist() \
        == [[4, 2]] * len(first)
