"""Gradient-masking diagnostics of one model (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; Athalye et al. 2018, "Obfuscated Gradients Give a False Sense of Security").

A defence that hides its gradient looks robust to gradient attacks without being robust. Each
check compares attacks whose order is known when the gradient is honest:

  unbounded       PGD with eps 0.5 (any image can be made into almost any other) leaves
                  about 0% accuracy
  eps_monotone    PGD accuracy does not rise with eps over (0, 2, 4, 8, 16)/255
  steps_monotone  PGD with many steps (100) is not weaker than with few (10)
  black_box       Square, which only queries the scores, is not stronger than the strongest
                  white-box attack (PGD-10 and PGD-100 at eval eps)
  eot_gap         through fresh test-time noise (eval.noise-std > 0, protocol `fresh`):
                  single-draw PGD is not weaker than EOT-PGD, whose gradient averages
                  eval.eot-samples draws; a gap means the noise masks the single-draw
                  gradient, and single-draw numbers (the paper's protocol) overstate
                  robustness. Under `fixed` noise the attacker sees the classifier's draw:
                  there is nothing to average, and the check does not run.

Every accuracy is `evaluate`'s: clean-and-robust (RobustBench's convention), a majority vote
through fresh noise. Each row's `value` is a statistic where smaller is better and the check
passes when value <= threshold. The comparisons between attacks allow a tolerance of
ceil(sqrt(n) / 2) of the n images (`tolerance`): attacks with random starts disagree on the
borderline images, and if up to an eighth of them are borderline (each a coin flip), the
paired difference of two attacks has a standard deviation of at most sqrt(n / 16) images, so
the tolerance is two standard deviations: 8 images (4%) of 200, 16 (1.6%) of 1,000. The
unbounded check has its own fixed bound (5%).

A check that fails names a symptom, not a proof: with few images or a barely trained model,
read the numbers in `measured` before blaming the defence.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .evaluation import EvalSettings, evaluate, parse_attacks

CHECKS = ("unbounded", "eps_monotone", "steps_monotone", "black_box", "eot_gap")
EPS_GRID = tuple(k / 255 for k in (0, 2, 4, 8, 16))
COLUMNS = ("check", "passed", "value", "threshold", "measured", "explanation")


@dataclass(frozen=True)
class DiagnosticSettings:
    """How hard each check attacks; the defaults fit a CPU (see docs/performance.md)."""

    eps_grid: tuple[float, ...] = EPS_GRID
    unbounded_eps: float = 0.5
    unbounded_steps: int = 20
    unbounded_max_acc: float = 0.05
    few_steps: int = 10
    many_steps: int = 100
    square_queries: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.few_steps < self.many_steps:
            raise ValueError(f"steps {self.few_steps} vs {self.many_steps}: the steps check "
                             "needs 0 < few steps < many steps")
        if self.square_queries < 1 or self.unbounded_steps < 1:
            raise ValueError("Square needs at least 1 query and PGD at least 1 step")


def tolerance(n: int) -> float:
    """The accuracy two attacks may differ by on n images before a check fails: ceil(sqrt(n)
    / 2) images (see the module docstring)."""
    return math.ceil(math.sqrt(n) / 2) / n


def _pgd_step(eps: float, steps: int) -> float:
    """Madry et al.'s step, 2.5 eps / steps: the attack can cross the ball within its steps
    at every eps of the sweep (eval.step is fixed, tuned to eval.eps)."""
    return 2.5 * eps / steps


def _row(check: str, value: float, threshold: float, measured: dict[str, Any],
         ok_text: str, bad_text: str) -> dict[str, Any]:
    passed = bool(value <= threshold)
    return {"check": check, "passed": passed, "value": float(value),
            "threshold": float(threshold), "measured": json.dumps(measured),
            "explanation": ok_text if passed else bad_text}


def _pct(acc: float) -> str:
    return f"{100 * acc:.1f}%"


def diagnose(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             settings: EvalSettings, seed: int = 0,
             checks: DiagnosticSettings = DiagnosticSettings()) -> list[dict[str, Any]]:
    """Rows (COLUMNS, one per check of CHECKS that applies) for uint8 `images` on the model's
    device. `settings` gives eval eps and step, the noise and the batch size; its attacks are
    not used."""
    n = images.shape[0]
    if n == 0:
        raise ValueError("no images to diagnose")
    tol = tolerance(n)
    plain = EvalSettings((), eps=settings.eps, step=settings.step,
                         batch_size=settings.batch_size)

    def acc(attack: str, **kw) -> dict[str, float]:
        kw.setdefault("attacks", parse_attacks(attack))
        return evaluate(model, images, labels, EvalSettings(**{**vars(plain), **kw}), seed)

    rows = []
    few, many = f"pgd{checks.few_steps}", f"pgd{checks.many_steps}"

    big = f"pgd{checks.unbounded_steps}"
    out = acc(big, eps=checks.unbounded_eps,
              step=_pgd_step(checks.unbounded_eps, checks.unbounded_steps))
    rows.append(_row(
        "unbounded", out[f"{big}_acc"], checks.unbounded_max_acc,
        {"eps": checks.unbounded_eps, "natural_acc": out["natural_acc"],
         f"{big}_acc": out[f"{big}_acc"]},
        f"PGD at eps {checks.unbounded_eps:g} leaves {_pct(out[f'{big}_acc'])}: the gradient "
        "leads the attack anywhere",
        f"PGD at eps {checks.unbounded_eps:g} leaves {_pct(out[f'{big}_acc'])} (> "
        f"{_pct(checks.unbounded_max_acc)}): the gradient does not lead to the boundary"))

    curve = []
    for eps in checks.eps_grid:
        if eps == 0:  # nothing to attack: the clean accuracy
            curve.append(acc("", eps=0.0)["natural_acc"])
        else:
            curve.append(acc(few, eps=eps, step=_pgd_step(eps, checks.few_steps))[f"{few}_acc"])
    rise = max([0.0] + [curve[j] - min(curve[:j]) for j in range(1, len(curve))])
    rows.append(_row(
        "eps_monotone", rise, tol, {"eps": list(checks.eps_grid), f"{few}_acc": curve},
        f"{few} accuracy does not rise with eps (largest rise {_pct(rise)})",
        f"{few} accuracy rises by {_pct(rise)} with a larger eps: the attack gets lost"))

    out = acc(f"{few},{many},square", square_queries=checks.square_queries)
    gain = out[f"{many}_acc"] - out[f"{few}_acc"]
    rows.append(_row(
        "steps_monotone", gain, tol,
        {"eps": settings.eps, f"{few}_acc": out[f"{few}_acc"], f"{many}_acc": out[f"{many}_acc"]},
        f"{many} ({_pct(out[f'{many}_acc'])}) is not weaker than {few} "
        f"({_pct(out[f'{few}_acc'])})",
        f"{many} leaves {_pct(gain)} more than {few}: more steps do not help the attack"))
    white = min(out[f"{few}_acc"], out[f"{many}_acc"])
    lead = white - out["square_acc"]
    rows.append(_row(
        "black_box", lead, tol,
        {"eps": settings.eps, "square_queries": checks.square_queries,
         "square_acc": out["square_acc"], "white_box_acc": white},
        f"Square ({_pct(out['square_acc'])}) is not stronger than white-box PGD "
        f"({_pct(white)})",
        f"Square, without gradients, leaves {_pct(lead)} less than white-box PGD "
        f"({_pct(out['square_acc'])} vs {_pct(white)}): the gradient is masked"))

    if settings.noise_std > 0 and settings.noise_protocol == "fresh":
        eot = f"eot-{few}"
        out = acc(f"{few},{eot}", noise_std=settings.noise_std, plain=False,
                  noise_protocol="fresh", eot_samples=settings.eot_samples,
                  noise_draws=settings.noise_draws)
        single, averaged = out[f"{few}_noise_acc"], out[f"eot_{few}_noise_acc"]
        rows.append(_row(
            "eot_gap", single - averaged, tol,
            {"noise_std": settings.noise_std, "eot_samples": settings.eot_samples,
             f"{few}_noise_acc": single, f"eot_{few}_noise_acc": averaged},
            f"through noise {settings.noise_std:g}, single-draw {few} ({_pct(single)}) is as "
            f"strong as EOT ({_pct(averaged)})",
            f"through noise {settings.noise_std:g}, EOT leaves {_pct(single - averaged)} less "
            f"than single-draw {few} ({_pct(averaged)} vs {_pct(single)}): the noise masks "
            "the gradient and single-draw attacks overstate robustness"))
    return rows


def masking_flags(rows: list[dict[str, Any]]) -> str:
    """"ok", or the failed checks' names, comma-separated: the study tables' flag."""
    failed = [r["check"] for r in rows if not _truthy(r["passed"])]
    return ",".join(failed) or "ok"


def _truthy(value: Any) -> bool:
    # A CSV read back may hold the strings "True"/"False".
    return value is True or str(value).strip().lower() in ("true", "1", "1.0")


def eps_curve(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(eps, accuracy) of the eps_monotone check, for the accuracy-vs-eps figure."""
    for r in rows:
        if r["check"] == "eps_monotone":
            measured = json.loads(r["measured"])
            acc = next(v for k, v in measured.items() if k != "eps")
            return list(measured["eps"]), list(acc)
    return [], []
