"""The eleven activation functions studied in the paper, by name.

Every factory returns a fresh module, so a model can hold one instance per use (RReLU keeps
no state, but a user-supplied activation might).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class TeLU(nn.Module):
    """TeLU(x) = x * tanh(exp(x)) (Fernandez & Mali, arXiv 2402.02790).

    exp(x) overflows to inf for x > ~88 (float32), and tanh(inf) = 1 is still right, but the
    backward pass would multiply inf by sech^2(inf) = 0 and give NaN. Clamping the argument
    of exp at 20 is exact in float32 and bfloat16: tanh(exp(20)) == 1.0 there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(torch.exp(torch.clamp(x, max=20.0)))


# Only ReLU runs in place: its backward needs just its output, which in-place keeps intact.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "rrelu": nn.RReLU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "celu": nn.CELU,
    "silu": nn.SiLU,
    "hardsilu": nn.Hardswish,
    "hardtanh": nn.Hardtanh,
    "telu": TeLU,
    "mish": nn.Mish,
}
NAMES: tuple[str, ...] = tuple(ACTIVATIONS)


def make_activation(name: str) -> nn.Module:
    """A new activation module for `name` (lower case, one of NAMES)."""
    try:
        factory = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; valid names are: {', '.join(NAMES)}"
        ) from None
    return factory()
