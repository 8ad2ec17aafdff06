"""Hand-built models whose attack outcomes are known in closed form.

Each maps (N, 3, 32, 32) images in [0, 1] near the grey image GREY to logits, and the true
class is always 0, so the real attacks and `evaluate` run on them unchanged. Each one makes
exactly one attack feature decide the outcome: restarts, gradient averaging (EOT), the
C&W margin. `s` below is the mean pixel offset from GREY along a fixed +-1 direction, in
units of eps: the L-inf ball maps onto s in [-1, 1].
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

EPS = 8 / 255
GREY = 128 / 255  # uint8 128, so `evaluate` on a constant image sees exactly this


def grey_images(n: int) -> torch.Tensor:
    return torch.full((n, 3, 32, 32), GREY)


def grey_uint8(n: int) -> torch.Tensor:
    return torch.full((n, 3, 32, 32), 128, dtype=torch.uint8)


class _Toy(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        direction = torch.randint(0, 2, (1, 3, 32, 32), generator=gen).float() * 2 - 1
        self.register_buffer("direction", direction)

    def offset(self, x: torch.Tensor) -> torch.Tensor:
        """s: the offset from GREY along the direction, in units of eps."""
        return ((x - GREY) * self.direction).flatten(1).mean(1) / EPS


class TwoBasins(_Toy):
    """Fooled at s = +1 only; gradient ascent from a random start ends at s = +1 or s = -1.

    Class-1 logit g(s) = s^2 + 2 relu(s) - 2: negative at s = 0 and s = -1, positive at
    s = +1. Its slope has the sign of s, so PGD runs away from s = 0 to whichever end its
    random start (s ~ N(0, 0.01)) points to: one restart fools half the images, r restarts
    all but 2^-r of them.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.offset(x)
        g = s * s + 2 * torch.relu(s) - 2
        return torch.stack([torch.zeros_like(g), g], 1)


class NoisyGradient(_Toy):
    """Deterministic logits, random gradient: only the average over draws points the way.

    Class-1 logit 4 (s - 0.7): fooled once s > 0.7. Every forward adds z . (x - GREY) with
    fresh z ~ N(0, I) to the gradient but not to the value, scaled so that one draw's
    gradient sign matches the true one on 69% of the pixels and the mean of 32 draws on
    99.8%. One signed step of 2 eps (to the ball's edge from any start) reaches s = 0.38
    with one draw and s = 0.996 with 32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.offset(x)
        u = (x - GREY).flatten(1)
        # Per pixel, d(logit)/dx = (4 / (eps D)) * (direction + 2 z): signal-to-noise 1/2.
        noise = (torch.randn_like(u) * u).sum(1) * 8 / (EPS * u.shape[1])
        g = 4 * (s - 0.7) + noise - noise.detach()
        return torch.stack([torch.zeros_like(g), g], 1)


class Decoy(_Toy):
    """Three classes; the C&W margin finds the adversarial class, cross-entropy is lured away.

    Class 1 (the runner-up, logit 2s - 1) wins once s > 0.5. Class 2 never wins (logit
    -2 - 1.5 tanh(10 s) < 0) but its steep slope dominates the cross-entropy gradient near
    s = 0, which therefore points to s = -1. The margin (best other logit minus the true
    one) only follows class 1, so one step of eps reaches s = +1.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.offset(x)
        return torch.stack([torch.zeros_like(s), 2 * s - 1, -2 - 1.5 * torch.tanh(10 * s)], 1)


class NoiseDetector(_Toy):
    """Right on the grey image, wrong once Gaussian noise of std > 0.1 is added to it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = (x - GREY).pow(2).flatten(1).mean(1) / 0.1**2 - 1
        return torch.stack([torch.zeros_like(g), g], 1)


@contextlib.contextmanager
def single_thread():
    """Tiny batches: on a busy 2-core machine a second torch thread only waits (10x slower,
    measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
