"""Natural and robust accuracy of a model under a list of attacks, with and without noise.

Attack specs (comma-separated in `eval.attacks`):
  fgsm          one signed-gradient step of size eps
  pgd<k>        k-step PGD with random start, e.g. pgd20
  pgd<k>x<r>    k-step PGD with r random restarts (worst case per example), e.g. pgd50x5
  eot-pgd<k>    k-step PGD whose gradient averages eval.eot-samples noise draws (adaptive
                attack on the test-time noise defence)
  cw<k>         k-step PGD on the Carlini-Wagner margin loss, same L-inf budget
  deepfool      minimal L2 perturbation: accuracy under an L2 bound and median norm
Every attack gives a column "<name>_acc" against the plain model and, when the test-time
noise sigma is > 0, "<name>_noise_acc" against the noise-wrapped model (noise drawn before
the attacker's gradient, the paper's protocol).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .attacks import GaussianNoise, deepfool, eval_mode, fgsm, pgd
from .data import to_float

SPEC_SYNTAX = "fgsm, pgd<k>, pgd<k>x<r>, eot-pgd<k>, cw<k>, deepfool (e.g. fgsm,pgd20,pgd50x5)"
_PATTERN = re.compile(r"^(fgsm|deepfool|pgd(\d+)(?:x(\d+))?|eot-pgd(\d+)|cw(\d+))$")


@dataclass(frozen=True)
class AttackSpec:
    text: str  # as written, e.g. "pgd50x5"
    kind: str  # fgsm | pgd | eot-pgd | cw | deepfool
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
        if item in ("fgsm", "deepfool"):
            spec = AttackSpec(item, item)
        elif m.group(2):
            spec = AttackSpec(item, "pgd", int(m.group(2)), int(m.group(3) or 1))
        elif m.group(4):
            spec = AttackSpec(item, "eot-pgd", int(m.group(4)))
        else:
            spec = AttackSpec(item, "cw", int(m.group(5)))
        if spec.kind != "fgsm" and spec.kind != "deepfool" and spec.steps < 1:
            raise ValueError(f"attack {item!r} needs at least one step")
        if spec.restarts < 1:
            raise ValueError(f"attack {item!r} needs at least one restart")
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

    def suffixes(self) -> list[str]:
        """Column suffixes: "" for the plain model, "_noise" for the noise-wrapped one."""
        if self.noise_std <= 0:
            return [""]
        return ([""] if self.plain else []) + ["_noise"]


def _attack(spec: AttackSpec, model, x, y, s: EvalSettings, randomized: bool, gen):
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
    raise ValueError(spec.kind)


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (model(x).argmax(1) == y).sum()


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    settings: EvalSettings,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracies (fractions in [0, 1]) on uint8 `images`, already on the model's device."""
    device = images.device
    torch.manual_seed(seed)  # the noise wrapper draws from the global stream
    gen = torch.Generator(device=device).manual_seed(seed)
    targets = [(suffix, GaussianNoise(model, settings.noise_std) if suffix else model,
                 bool(suffix)) for suffix in settings.suffixes()]
    counts: dict[str, torch.Tensor] = {}
    norms: dict[str, list[torch.Tensor]] = {}

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
            for suffix, target, randomized in targets:
                add(f"natural{suffix}_acc", _correct(target, x, y))
                for spec in settings.attacks:
                    column = f"{spec.column}{suffix}"
                    if spec.kind == "deepfool":
                        x_adv = deepfool(target, x)
                        dist = (x_adv - x).flatten(1).norm(dim=1)
                        with torch.no_grad():
                            clean_ok = target(x).argmax(1) == y
                            fooled = target(x_adv).argmax(1) != y
                        robust = clean_ok & (~fooled | (dist > settings.deepfool_l2))
                        add(f"{column}_acc", robust.sum())
                        norms.setdefault(f"{column}_median_l2", []).append(dist[clean_ok])
                        continue
                    x_adv = _attack(spec, target, x, y, settings, randomized, gen)
                    add(f"{column}_acc", _correct(target, x_adv, y))
    n = images.shape[0]
    result = {k: float(v) / n for k, v in counts.items()}
    for k, parts in norms.items():
        all_norms = torch.cat(parts)
        result[k] = float(all_norms.median()) if all_norms.numel() else float("nan")
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
    return names
