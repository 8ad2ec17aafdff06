"""Natural and robust accuracy of a model under a list of attacks, with and without noise.

Attack specs (comma-separated in `eval.attacks`):
  fgsm          one signed-gradient step of size eps
  pgd<k>        k-step PGD with random start, e.g. pgd20
  pgd<k>x<r>    k-step PGD with r random restarts (worst case per example), e.g. pgd50x5
  eot-pgd<k>    k-step PGD whose gradient averages eval.eot-samples noise draws (adaptive
                attack on the test-time noise defence)
  cw<k>         k-step PGD on the Carlini-Wagner margin loss, same L-inf budget
  aa            AutoAttack (pyautoattack): standard version; against fresh noise its rand
                version (EOT over 20 draws); see common.autoattack
  apgd-ce, apgd-t, square   AutoAttack's parts alone (square: eval.square-queries queries)
  deepfool      minimal L2 perturbation: accuracy under an L2 bound and median norm
Every attack gives a column "<name>_acc" against the plain model and, when the test-time
noise sigma is > 0, "<name>_noise_acc" against the noise-wrapped model, whose noise follows
eval.noise-protocol: `fresh` (a new draw in every forward pass, attacker and classifier see
independent draws) or `fixed` (one draw per image that both see).

One convention, RobustBench's: an example counts as robust only if it is classified
correctly both clean and under the attack. "worst_acc" (and "worst_noise_acc") counts the
examples that survive every L-inf attack that ran: robust accuracy under their union.
A randomized model (fresh noise) classifies by the majority over eval.noise-draws draws,
clean and adversarial alike. DeepFool is an L2 attack and stays out of the worst case; its
accuracy at the L2 bound is an upper bound (DeepFool's perturbations are not minimal), and
its median L2 is over the correctly classified examples, an example it did not flip counting
as infinitely far.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from . import autoattack
from .attacks import FixedNoise, GaussianNoise, deepfool, eval_mode, fgsm, pgd
from .config import MAX_STEPS, STEPS_WHY
from .data import to_float

SPEC_SYNTAX = ("fgsm, pgd<k>, pgd<k>x<r>, eot-pgd<k>, cw<k>, aa, apgd-ce, apgd-t, square, "
               "deepfool (e.g. fgsm,pgd20,pgd50x5,aa)")
MAX_RESTARTS = 100  # each restart runs the whole attack again
NOISE_PROTOCOLS = ("fresh", "fixed")
_PATTERN = re.compile(r"^(fgsm|deepfool|aa|apgd-ce|apgd-t|square|pgd(\d+)(?:x(\d+))?"
                      r"|eot-pgd(\d+)|cw(\d+))$")
_NO_STEPS = ("fgsm", "deepfool", *autoattack.NAMES)  # attacks without a <k> in their name


@dataclass(frozen=True)
class AttackSpec:
    text: str  # as written, e.g. "pgd50x5"
    kind: str  # fgsm | pgd | eot-pgd | cw | deepfool | aa | apgd-ce | apgd-t | square
    steps: int = 0
    restarts: int = 1

    @property
    def column(self) -> str:
        return self.text.replace("-", "_")


def parse_attacks(text: str) -> tuple[AttackSpec, ...]:
    """Parse "fgsm,pgd20,..." into specs; raise ValueError naming a bad entry."""
    specs = []
    for raw in text.split(","):
        item = raw.strip().lower()
        if not item:
            continue
        m = _PATTERN.match(item)
        if not m:
            raise ValueError(f"unknown attack {item!r}; write {SPEC_SYNTAX}")
        if item in _NO_STEPS:
            spec = AttackSpec(item, item)
        elif m.group(2):
            spec = AttackSpec(item, "pgd", int(m.group(2)), int(m.group(3) or 1))
        elif m.group(4):
            spec = AttackSpec(item, "eot-pgd", int(m.group(4)))
        else:
            spec = AttackSpec(item, "cw", int(m.group(5)))
        if spec.kind not in _NO_STEPS and spec.steps < 1:
            raise ValueError(f"attack {item!r} needs at least one step")
        if spec.restarts < 1:
            raise ValueError(f"attack {item!r} needs at least one restart")
        if spec.steps > MAX_STEPS or spec.restarts > MAX_RESTARTS:
            raise ValueError(f"attack {item!r} exceeds {MAX_STEPS:,} steps or {MAX_RESTARTS} "
                             f"restarts ({STEPS_WHY})")
        if spec.text in {s.text for s in specs}:
            raise ValueError(f"attack {item!r} is listed twice")
        specs.append(spec)
    return tuple(specs)


@dataclass(frozen=True)
class EvalSettings:
    attacks: tuple[AttackSpec, ...]
    eps: float = 8 / 255
    step: float = 2 / 255
    noise_std: float = 0.0
    eot_samples: int = 10
    deepfool_l2: float = 0.5
    batch_size: int = 250
    plain: bool = True  # also evaluate without noise (always, when noise_std is 0)
    noise_protocol: str = "fresh"  # see NOISE_PROTOCOLS and the module docstring
    noise_draws: int = 10  # majority vote of a randomized model
    square_queries: int = autoattack.STANDARD_SQUARE_QUERIES

    @classmethod
    def from_config(cls, e, **overrides) -> EvalSettings:
        """Settings from a run config's eval section (`EvalConfig`); `overrides` replace
        fields (e.g. attacks=..., noise_std=...)."""
        values = dict(attacks=parse_attacks(e.attacks), eps=e.eps, step=e.step,
                      noise_std=e.noise_std, eot_samples=e.eot_samples,
                      deepfool_l2=e.deepfool_l2, batch_size=e.batch_size,
                      noise_protocol=e.noise_protocol, noise_draws=e.noise_draws,
                      square_queries=e.square_queries)
        return cls(**(values | overrides))

    def __post_init__(self) -> None:
        if self.noise_protocol not in NOISE_PROTOCOLS:
            raise ValueError(f"noise protocol {self.noise_protocol!r}: write one of "
                             f"{', '.join(NOISE_PROTOCOLS)}")
        if self.noise_draws < 1:
            raise ValueError(f"noise draws = {self.noise_draws}: the majority vote needs at "
                             "least 1 draw")

    def suffixes(self) -> list[str]:
        """Column suffixes: "" for the plain model, "_noise" for the noise-wrapped one."""
        if self.noise_std <= 0:
            return [""]
        return ([""] if self.plain else []) + ["_noise"]

    def worst_case(self) -> bool:
        """Whether a worst-case column exists: at least one L-inf attack runs."""
        return any(spec.kind != "deepfool" for spec in self.attacks)


@torch.no_grad()
def vote_scores(model: nn.Module, x: torch.Tensor, draws: int) -> torch.Tensor:
    """Class scores whose argmax is the majority vote over `draws` forward passes.

    Votes count first; the summed softmax, scaled below one vote, only breaks ties.
    """
    logits = torch.stack([model(x).float() for _ in range(draws)])  # draws x batch x classes
    votes = F.one_hot(logits.argmax(2), logits.shape[2]).sum(0).float()
    return votes + logits.softmax(2).sum(0) / (draws + 1)


def predict(model: nn.Module, x: torch.Tensor, draws: int = 1) -> torch.Tensor:
    """Labels: one forward pass of a deterministic model, a majority vote of a random one."""
    if draws == 1:
        with torch.no_grad():
            return model(x).argmax(1)
    return vote_scores(model, x, draws).argmax(1)


def _attack(spec: AttackSpec, model, x, y, s: EvalSettings, randomized: bool, gen,
            seed: int = 0):
    if spec.kind == "fgsm":
        return fgsm(model, x, y, s.eps)
    if spec.kind == "pgd":
        return pgd(model, x, y, s.eps, s.step, spec.steps, restarts=spec.restarts, generator=gen)
    if spec.kind == "cw":
        return pgd(model, x, y, s.eps, s.step, spec.steps, loss="cw", generator=gen)
    if spec.kind == "eot-pgd":
        # Against a deterministic model every draw is the same: one sample is enough.
        samples = s.eot_samples if randomized else 1
        return pgd(model, x, y, s.eps, s.step, spec.steps, eot_samples=samples, generator=gen)
    if spec.kind in autoattack.NAMES:
        classify = partial(vote_scores, model, draws=s.noise_draws) if randomized else None
        return autoattack.run(model, x, y, spec.kind, eps=s.eps, seed=seed,
                              randomized=randomized, square_queries=s.square_queries,
                              classify=classify)
    raise ValueError(spec.kind)


def _noise_target(model: nn.Module, s: EvalSettings, x: torch.Tensor, gen) -> nn.Module:
    if s.noise_protocol == "fixed":
        return FixedNoise(model, s.noise_std, x, generator=gen)
    return GaussianNoise(model, s.noise_std)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: EvalSettings,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracies (fractions in [0, 1]) on uint8 `images`, already on the model's device."""
    device = images.device
    torch.manual_seed(seed)  # the fresh-noise wrapper draws from the global stream
    gen = torch.Generator(device=device).manual_seed(seed)
    counts: dict[str, torch.Tensor] = {}
    distances: dict[str, list[torch.Tensor]] = {}

    def add(name: str, value: torch.Tensor) -> None:
        counts[name] = counts.get(name, 0) + value

    # channels_last: the same maths with faster convolutions (see FastPath); the attacks'
    # element-wise updates keep the layout of x.
    model.to(memory_format=torch.channels_last)
    with eval_mode(model):
        for first in range(0, images.shape[0], settings.batch_size):
            x = to_float(images[first : first + settings.batch_size])
            x = x.contiguous(memory_format=torch.channels_last)
            y = labels[first : first + settings.batch_size]
            for suffix in settings.suffixes():
                target = _noise_target(model, settings, x, gen) if suffix else model
                # Fixed noise is one deterministic function: nothing to vote or average.
                randomized = bool(suffix) and settings.noise_protocol == "fresh"
                draws = settings.noise_draws if randomized else 1
                clean_ok = predict(target, x, draws) == y
                add(f"natural{suffix}_acc", clean_ok.sum())
                survives_all = clean_ok
                for spec in settings.attacks:
                    column = f"{spec.column}{suffix}"
                    if spec.kind == "deepfool":
                        x_adv = deepfool(target, x)
                        dist = (x_adv - x).flatten(1).norm(dim=1)
                        flipped = predict(target, x_adv, draws) != y
                        robust = clean_ok & (~flipped | (dist > settings.deepfool_l2))
                        add(f"{column}_acc", robust.sum())
                        needed = torch.where(flipped, dist, torch.full_like(dist, float("inf")))
                        distances.setdefault(f"{column}_median_l2", []).append(needed[clean_ok])
                        continue
                    x_adv = _attack(spec, target, x, y, settings, randomized, gen, seed)
                    robust = clean_ok & (predict(target, x_adv, draws) == y)
                    add(f"{column}_acc", robust.sum())
                    survives_all = survives_all & robust
                if settings.worst_case():
                    add(f"worst{suffix}_acc", survives_all.sum())
    n = images.shape[0]
    result = {k: float(v) / n for k, v in counts.items()}
    for k, parts in distances.items():
        needed = torch.cat(parts)
        # torch's median is the lower middle value: inf when DeepFool flipped fewer than half.
        result[k] = float(needed.median()) if needed.numel() else float("nan")
    return {name: result[name] for name in columns(settings)}


def columns(settings: EvalSettings) -> list[str]:
    """The result keys `evaluate` returns for these settings, in order."""
    names = []
    for suffix in settings.suffixes():
        names.append(f"natural{suffix}_acc")
        for spec in settings.attacks:
            names.append(f"{spec.column}{suffix}_acc")
            if spec.kind == "deepfool":
                names.append(f"{spec.column}{suffix}_median_l2")
        if settings.worst_case():
            names.append(f"worst{suffix}_acc")
    return names
