"""The losses of local training (`train.objective`), each with the adversarial copies it needs.

An objective turns a batch (x, y) into the copies that go through the model in training mode
as ONE concatenated batch (`copies`, attacks included), then turns the logits of that batch
into its terms (`terms`): the loss is the weighted sum of the terms, and the terms are what
TrainStats reports as clean_loss / adv_loss / noise_loss. Every attack here runs the model in
eval mode, as the project's PGD does (RReLU is random in training mode), and never syncs
with the host.

  mixed    the paper's recipe: clean + PGD + Gaussian-noise copies, soft-label CE each,
           weights train.weight-clean/-adv/-noise normalized to sum 1.
  trades   Zhang et al. 2019 (TRADES), as trades.py of yaodongyu/TRADES computes it:
           CE(f(x), y) + beta * KL(p(x) || p(x')), where x' maximizes that KL by signed-
           gradient ascent from x + 0.001 N(0, I). beta = train.trades-beta (6).
  mart     Wang et al. 2020 (MART), as mart.py of YisenWang/MART computes it:
           BCE(f(x'), y) + beta * KL(p(x) || p(x')) * (1 - p_y(x)), where BCE is the CE of x'
           plus -log(1 - max_{k != y} p_k(x')) and x' is CE-PGD from x + 0.001 N(0, I).
           beta = train.mart-beta (6).
  fgsm-rs  Wong, Rice and Kolter 2020, "Fast is better than free", as train_fgsm.py of
           locuslab/fast_adversarial does it: one FGSM step of train.fgsm-rs-step * eps
           (1.25 eps) from a uniform start in the eps-ball, projected onto the ball and
           [0, 1]; CE of x'.
  calfat   Chen et al., NeurIPS 2022 (CalFAT). Followed: the authors' code (cc233/CalFAT:
           utils.py maxMarginLoss, maxMarginLoss_kl, kl_adv; fat.py pgd_train); the paper's
           method text was not available to check its equation numbers. Logits calibrated
           with the client's label prior pi, z~ = z + log(pi) / s; x' maximizes TRADES' KL
           between the calibrated predictions, KL(p~(x) || p~(x')), from x + 0.001 N(0, I);
           the loss is the calibrated CE of x', CE(s z~(x'), y) = CE(s z(x') + log pi, y)
           (logit adjustment). The code has no clean term and no separate KL term in its
           loss; neither has this. s = train.calfat-scale: 1 (default) is the unscaled
           calibrated CE, CE(z + log pi, y); the code's s = 10 (with its lr 0.01 and a small
           CNN) trains this project's BN ResNet far worse (measured in docs/performance.md),
           so it is opt-in.
           pi is the label distribution of everything the client trains on in the call
           (its partition plus its share of G): the prior of the data the loss sees,
           computed from the labels `train` receives, on the client.

Combinations: label smoothing (train.label-smoothing) applies to every CE term of every
objective (never to KL terms, which compare two predictions); Gaussian-noise copies
(train.noise-std > 0, train.weight-noise > 0) add a soft-label CE term of noisy copies to
every objective, weighted by train.weight-noise (normalized with the others only in mixed).
train.adversarial and train.weight-clean/-adv belong to mixed; the config refuses them
with another objective (common.config).

`OverfitWatch` is fgsm-rs' guard against catastrophic overfitting (Wong et al. 2020).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .attacks import eval_mode, pgd

if TYPE_CHECKING:  # training imports this module
    import pandas as pd

    from .training import TrainSettings

NAMES = ("mixed", "trades", "mart", "fgsm-rs", "calfat")
START_STD = 0.001  # TRADES', MART's and CalFAT's start: x + 0.001 N(0, I)
PRIOR_FLOOR = 1e-7  # CalFAT's code: log(count + 1e-7) for a class the client lacks


def noise_copy(x: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(x.shape, device=x.device, generator=gen)
    return (x + std * noise).clamp_(0.0, 1.0)


def ascend(model: nn.Module, x: torch.Tensor, start: torch.Tensor, objective, eps: float,
           step: float, steps: int) -> torch.Tensor:
    """Signed-gradient ascent of objective(logits) (a sum over the batch) from `start`,
    projected onto the eps-ball around x and onto [0, 1] after each step, in eval mode."""
    x = x.detach()
    x_adv = start.detach().clamp(0.0, 1.0)
    with eval_mode(model):
        for _ in range(steps):
            x_adv.requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(model(x_adv).float()), x_adv)
            x_adv.requires_grad_(False)
            x_adv.add_(grad.sign_(), alpha=step)
            torch.minimum(torch.maximum(x_adv, x - eps), x + eps, out=x_adv)
            x_adv.clamp_(0.0, 1.0)
    return x_adv.detach()


def small_start(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return x + START_STD * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=gen)


def kl_sum(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Sum over the batch of KL(p || q), both given as log-probabilities."""
    return F.kl_div(log_q, log_p, reduction="sum", log_target=True)


def kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each row."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(1)


def kl_attack(model, x, log_p_clean, eps, step, steps, gen, shift=None) -> torch.Tensor:
    """TRADES' inner maximization: x' in the eps-ball maximizing KL(p(x) || p(x')), from x +
    0.001 N(0, I); `shift` is added to the logits of x' first (CalFAT's calibration)."""
    def objective(logits):
        return kl_sum(log_p_clean, (logits if shift is None else logits + shift).log_softmax(1))

    return ascend(model, x, small_start(x, gen), objective, eps, step, steps)


def clean_log_probs(model: nn.Module, x: torch.Tensor, shift=None) -> torch.Tensor:
    """log p(x) in eval mode, without gradient: the fixed target of the KL attacks."""
    with torch.no_grad(), eval_mode(model):
        logits = model(x).float()
    return (logits if shift is None else logits + shift).log_softmax(1)


def label_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The fraction of each class among `labels`, on their device (index_add_, unlike
    bincount, needs no host sync to size its result)."""
    counts = torch.zeros(num_classes, device=labels.device)
    counts.index_add_(0, labels, torch.ones(labels.shape, device=labels.device))
    return counts / labels.numel()


@dataclass
class Objective:
    """One objective's copies and terms; `weights` (part -> weight) give the loss."""

    s: TrainSettings
    num_classes: int
    weights: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self.weights = self.term_weights()
        self.noise = "noise" in self.weights

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=self.s.label_smoothing)

    def with_noise(self, x, gen, copies: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.noise:
            copies.append(noise_copy(x, self.s.noise_std, gen))
        return copies

    def noise_weight(self) -> dict[str, float]:
        used = self.s.noise_std > 0 and self.s.weight_noise > 0
        return {"noise": self.s.weight_noise} if used else {}

    def noise_term(self, logits, y, first_copies: int) -> list[torch.Tensor]:
        if not self.noise:
            return []
        return [self.ce(logits[first_copies * y.numel():], y)]

    def term_weights(self) -> dict[str, float]:
        raise NotImplementedError

    def copies(self, model, x, y, gen) -> list[torch.Tensor]:
        raise NotImplementedError

    def terms(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The terms in the order of `weights`, from the logits of the concatenated copies."""
        raise NotImplementedError


class Mixed(Objective):
    """The paper's recipe (see the module docstring); unchanged from before objectives."""

    def term_weights(self):
        return self.s.part_weights()

    def copies(self, model, x, y, gen):
        s, inputs = self.s, [x]
        if "adv" in self.weights:
            inputs.append(pgd(model, x, y, s.eps, s.step, s.steps, s.random_start,
                              generator=gen))
        if "noise" in self.weights:
            inputs.append(noise_copy(x, s.noise_std, gen))
        if "clean" not in self.weights:
            inputs.pop(0)
        return inputs

    def terms(self, logits, y):
        parts = len(self.weights)
        per_sample = F.cross_entropy(
            logits, y.repeat(parts), label_smoothing=self.s.label_smoothing, reduction="none",
        ).view(parts, -1)
        return per_sample.mean(1)


class Trades(Objective):
    def term_weights(self):
        return {"clean": 1.0, "adv": self.s.trades_beta, **self.noise_weight()}

    def copies(self, model, x, y, gen):
        s = self.s
        x_adv = kl_attack(model, x, clean_log_probs(model, x), s.eps, s.step, s.steps, gen)
        return self.with_noise(x, gen, [x, x_adv])

    def terms(self, logits, y):
        b = y.numel()
        clean, adv = logits[:b], logits[b:2 * b]
        kl = kl_sum(clean.log_softmax(1), adv.log_softmax(1)) / b
        return torch.stack([self.ce(clean, y), kl, *self.noise_term(logits, y, 2)])


class Mart(Objective):
    def term_weights(self):
        return {"adv": 1.0, **self.noise_weight()}

    def copies(self, model, x, y, gen):
        s = self.s

        def objective(logits):
            return F.cross_entropy(logits, y, reduction="sum")

        start = small_start(x, gen) if s.random_start else x
        x_adv = ascend(model, x, start, objective, s.eps, s.step, s.steps)
        return self.with_noise(x, gen, [x, x_adv])

    def terms(self, logits, y):
        b = y.numel()
        clean, adv = logits[:b], logits[b:2 * b]
        p_adv = adv.softmax(1)
        # The most probable wrong class of x' (MART's "new_y").
        wrong = p_adv.scatter(1, y[:, None], -1.0).argmax(1)
        margin = -torch.log(1.0001 - p_adv.gather(1, wrong[:, None]).squeeze(1)).mean()
        boosted_ce = self.ce(adv, y) + margin
        log_p_clean = clean.log_softmax(1)
        p_true = log_p_clean.gather(1, y[:, None]).squeeze(1).exp()
        weighted_kl = (kl_rows(log_p_clean, adv.log_softmax(1)) * (1 - p_true)).mean()
        return torch.stack([boosted_ce + self.s.mart_beta * weighted_kl,
                            *self.noise_term(logits, y, 2)])


class FgsmRs(Objective):
    def term_weights(self):
        return {"adv": 1.0, **self.noise_weight()}

    def copies(self, model, x, y, gen):
        s = self.s  # one PGD step from a uniform start is exactly FGSM-RS
        x_adv = pgd(model, x, y, s.eps, s.fgsm_rs_step * s.eps, 1, True, generator=gen)
        return self.with_noise(x, gen, [x_adv])

    def terms(self, logits, y):
        return torch.stack([self.ce(logits[:y.numel()], y), *self.noise_term(logits, y, 1)])


class CalFat(Objective):
    def __init__(self, s: TrainSettings, num_classes: int, labels: torch.Tensor) -> None:
        super().__init__(s, num_classes)
        self.prior = label_prior(labels, num_classes)
        self.log_prior = self.prior.clamp_min(PRIOR_FLOOR).log()

    def term_weights(self):
        return {"adv": 1.0, **self.noise_weight()}

    def copies(self, model, x, y, gen):
        s, shift = self.s, self.log_prior / self.s.calfat_scale
        x_adv = kl_attack(model, x, clean_log_probs(model, x, shift), s.eps, s.step, s.steps,
                          gen, shift)
        return self.with_noise(x, gen, [x_adv])

    def terms(self, logits, y):
        calibrated = self.s.calfat_scale * logits[:y.numel()] + self.log_prior
        return torch.stack([self.ce(calibrated, y), *self.noise_term(logits, y, 1)])


def build(settings: TrainSettings, labels: torch.Tensor, num_classes: int) -> Objective:
    """The objective of `settings`; `labels` are all labels the call trains on (CalFAT's
    prior)."""
    kinds = {"mixed": Mixed, "trades": Trades, "mart": Mart, "fgsm-rs": FgsmRs}
    if settings.objective == "calfat":
        return CalFat(settings, num_classes, labels)
    if settings.objective not in kinds:
        raise ValueError(f"unknown objective {settings.objective!r}; one of {', '.join(NAMES)}")
    return kinds[settings.objective](settings, num_classes)


# --- fgsm-rs' guard -------------------------------------------------------------------------

CHECK_IMAGES = 256  # Wong et al. check one minibatch (128); two keep the estimate steadier
CHECK_ATTACKS = "fgsm,pgd10"
FALL = 0.2  # Wong et al.'s early stop: PGD accuracy fell by more than 20 points
GAP = 0.2  # or, in any one check, PGD accuracy 20 points below FGSM accuracy


@dataclass
class OverfitWatch:
    """Catastrophic overfitting of fgsm-rs (Wong, Rice and Kolter 2020): the model
    learns to defeat FGSM while PGD accuracy collapses within an epoch or two.

    Each round the global model meets FGSM and PGD-10 (eval.eps, eval.step, random start)
    on the first CHECK_IMAGES of the in-run evaluation images. Their early stop (the
    --early-stop of train_fgsm.py, there on one training minibatch per epoch) flags a
    fall of PGD accuracy by more than 20 points since the previous check; a collapsed model
    also stands out within one check, its PGD accuracy more than 20 points below its FGSM
    accuracy (healthy adversarial training keeps the two within a few points). A resumed
    run takes its previous check from rounds.csv (`resume`).
    """

    images: torch.Tensor  # uint8, on the model's device
    labels: torch.Tensor
    eps: float
    step: float
    previous: float | None = None
    last: str = ""

    @classmethod
    def for_run(cls, cfg, images: torch.Tensor, labels: torch.Tensor) -> OverfitWatch | None:
        """The watch of a run whose objective is fgsm-rs, else None."""
        if cfg.train.objective != "fgsm-rs":
            return None
        return cls(images[:CHECK_IMAGES], labels[:CHECK_IMAGES], cfg.eval.eps, cfg.eval.step)

    def __call__(self, model: nn.Module, state_dict: dict[str, torch.Tensor],
                 seed: int) -> dict[str, float | int]:
        """The check of the global model `state_dict`, loaded into `model`: rounds.csv's
        co_check_pgd10_acc, co_check_fgsm_acc and catastrophic_overfitting (0 or 1)."""
        from .evaluation import EvalSettings, evaluate, parse_attacks  # imports autoattack

        model.load_state_dict(state_dict)
        settings = EvalSettings(parse_attacks(CHECK_ATTACKS), eps=self.eps, step=self.step,
                                batch_size=CHECK_IMAGES)
        acc = evaluate(model, self.images, self.labels, settings, seed=seed)
        pgd_acc, fgsm_acc = acc["pgd10_acc"], acc["fgsm_acc"]
        collapsed = overfitting(pgd_acc, fgsm_acc, self.previous)
        self.last = (f"catastrophic overfitting of fgsm-rs: PGD-10 accuracy {100 * pgd_acc:.1f}% "
                     f"(previous check: {_percent(self.previous)}), FGSM {100 * fgsm_acc:.1f}% "
                     f"on {self.images.shape[0]} evaluation images; Wong et al. stop "
                     "training here and keep the model of the previous check")
        self.previous = pgd_acc
        return {"co_check_pgd10_acc": pgd_acc, "co_check_fgsm_acc": fgsm_acc,
                "catastrophic_overfitting": int(collapsed)}

    def warning(self) -> str:
        return self.last

    def resume(self, rounds: pd.DataFrame, start_round: int) -> None:
        """Take the last check before start_round from rounds.csv, so that a resumed run
        still sees a fall across the interruption."""
        column = "co_check_pgd10_acc"
        if column not in rounds.columns:
            return
        before = rounds[(rounds["round"] < start_round) & rounds[column].notna()]
        if not before.empty:
            self.previous = float(before.sort_values("round")[column].iloc[-1])


def _percent(value: float | None) -> str:
    return "none" if value is None else f"{100 * value:.1f}%"


def overfitting(pgd_acc: float, fgsm_acc: float, previous: float | None) -> bool:
    fell = previous is not None and not math.isnan(previous) and previous - pgd_acc > FALL
    return fell or fgsm_acc - pgd_acc > GAP
