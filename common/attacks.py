"""L-inf attacks on models that map [0,1] images to logits, and a test-time noise defence.

Every attack runs the model in eval mode (RReLU is random in training mode) and restores the
mode it found. Results always lie in the eps-ball around x and in [0, 1]. The PGD loop does no
host synchronisation: no .item(), no data-dependent Python branches, buffers updated in place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode and restore each submodule's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in modes:
            module.training = was_training


class GaussianNoise(nn.Module):
    """Test-time noise defence: x -> model(clip(x + sigma * N(0, I), 0, 1)).

    The noise is drawn afresh in every forward pass (the `fresh` noise protocol): the
    attacker's gradients and the classifier see independent draws. It stays random in eval
    mode.
    """

    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model = model
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma > 0:
            x = (x + self.sigma * torch.randn_like(x)).clamp_(0.0, 1.0)
        return self.model(x)


class FixedNoise(nn.Module):
    """Test-time noise drawn once per image (the `fixed` noise protocol): x -> model(clip(x +
    n_i, 0, 1)), where n_i ~ sigma * N(0, I) belongs to clean image i of `anchors`, so the
    attacker and the classifier see the same draw. A whole batch keeps its order (the draws
    follow it position by position); a part of it, as AutoAttack passes the images it still
    attacks, takes the draws of the nearest anchors (an attack stays in a small ball around
    its clean image; exact duplicates share the first one's draw there).
    """

    def __init__(self, model: nn.Module, sigma: float, anchors: torch.Tensor,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.model = model
        self.sigma = float(sigma)
        self.anchors = anchors.detach().flatten(1)
        self.noise = self.sigma * torch.randn(anchors.shape, generator=generator,
                                              device=anchors.device, dtype=anchors.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.anchors.shape[0]:
            noise = self.noise
        else:
            with torch.no_grad():
                noise = self.noise[torch.cdist(x.detach().flatten(1), self.anchors).argmin(1)]
        return self.model((x + noise).clamp(0.0, 1.0))


def cross_entropy_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="sum")


def cw_margin_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin: best other logit minus the true logit, summed over the batch."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return (others - true).sum()


LOSSES: dict[str, LossFn] = {"ce": cross_entropy_sum, "cw": cw_margin_sum}


def _input_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: LossFn):
    x_adv.requires_grad_(True)
    loss = loss_fn(model(x_adv), y)
    (grad,) = torch.autograd.grad(loss, x_adv)
    x_adv.requires_grad_(False)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method: one step of size eps from x."""
    with eval_mode(model):
        grad = _input_grad(model, x.detach().clone(), y, cross_entropy_sum)
    return (x + eps * grad.sign()).clamp_(0.0, 1.0).detach()


def _pgd_once(model, x, y, eps, step, steps, random_start, loss_fn, eot_samples, generator):
    if random_start:
        delta = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        delta.mul_(2 * eps).sub_(eps)
    else:
        delta = torch.zeros_like(x)
    x_adv = (x + delta).clamp_(0.0, 1.0)
    grad = torch.empty_like(x)
    for _ in range(steps):
        grad.zero_()
        for _ in range(eot_samples):  # EOT: average the gradient over the model's randomness
            grad.add_(_input_grad(model, x_adv, y, loss_fn))
        # Step, then project back onto the eps-ball around x and onto [0, 1], in place.
        x_adv.add_(grad.sign_(), alpha=step)
        torch.minimum(torch.maximum(x_adv, x - eps), x + eps, out=x_adv)
        x_adv.clamp_(0.0, 1.0)
    return x_adv


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    step: float,
    steps: int,
    random_start: bool = True,
    restarts: int = 1,
    loss: str = "ce",
    eot_samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Projected gradient descent under an L-inf budget eps.

    With restarts > 1, each example keeps the first restart that fools the model (or the
    last one if none does), so the attack is at least as strong as any single restart.
    `eot_samples` > 1 averages the gradient over that many forward passes per step
    (Expectation over Transformation), the adaptive attack against a randomized model.
    """
    loss_fn = LOSSES[loss]
    x = x.detach()
    with eval_mode(model):
        best = None
        fooled = None
        for _ in range(restarts):
            x_adv = _pgd_once(
                model, x, y, eps, step, steps, random_start, loss_fn, eot_samples, generator
            )
            if restarts == 1:
                return x_adv.detach()
            with torch.no_grad():
                wrong = model(x_adv).argmax(1) != y
            if best is None:
                best, fooled = x_adv, wrong
            else:
                take = wrong & ~fooled
                best = torch.where(take[:, None, None, None], x_adv, best)
                fooled = fooled | wrong
    return best.detach()


def deepfool(
    model: nn.Module,
    x: torch.Tensor,
    steps: int = 50,
    overshoot: float = 0.02,
) -> torch.Tensor:
    """DeepFool (Moosavi-Dezfooli et al. 2016): a minimal L2 perturbation that flips the label.

    Returns the perturbed images, clipped to [0, 1]. It needs no true label: every example is
    pushed across the boundary of the label the model gives it, and stops moving once that
    label flips. Iterates until every example is flipped or `steps` is reached. Every class
    the model scores (its logits' width) is a candidate.
    """
    x = x.detach()
    with eval_mode(model):
        with torch.no_grad():
            label = model(x).argmax(1)
        r_total = torch.zeros_like(x)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        for _ in range(steps):
            x_adv = (x + (1 + overshoot) * r_total).clamp(0.0, 1.0).requires_grad_(True)
            logits = model(x_adv)
            active = active & (logits.argmax(1) == label)
            if not bool(active.any()):  # one sync per iteration; DeepFool is eval-only
                break
            true = logits.gather(1, label[:, None]).squeeze(1)
            grads_true = torch.autograd.grad(true.sum(), x_adv, retain_graph=True)[0]
            best_ratio = torch.full_like(true, float("inf"))
            best_step = torch.zeros_like(x)
            for k in range(logits.shape[1]):
                other = logits[:, k]
                grad_k = torch.autograd.grad(other.sum(), x_adv, retain_graph=True)[0]
                w = grad_k - grads_true
                f = (other - true).detach()
                w_norm = w.flatten(1).norm(dim=1) + 1e-8
                ratio = f.abs() / w_norm
                ratio = torch.where(label == k, torch.full_like(ratio, float("inf")), ratio)
                better = ratio < best_ratio
                best_ratio = torch.where(better, ratio, best_ratio)
                step_k = (ratio + 1e-4)[:, None, None, None] * w / w_norm[:, None, None, None]
                best_step = torch.where(better[:, None, None, None], step_k, best_step)
            r_total = r_total + best_step * active[:, None, None, None]
        return (x + (1 + overshoot) * r_total).clamp(0.0, 1.0).detach()
