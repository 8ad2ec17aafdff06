"""AutoAttack (Croce and Hein 2020) through `pyautoattack`, the authors' reference code.

The one home of the adapter: `evaluation` names the attacks, this module runs them.

  aa        AutoAttack's standard version (APGD-CE, APGD-T, FAB-T, Square); against a model
            whose every forward pass draws fresh noise, its `rand` version (APGD-CE and
            APGD-DLR with the gradient averaged over 20 draws, EOT)
  apgd-ce   APGD on the cross-entropy, as in the standard version (one run of 100 steps)
  apgd-t    targeted APGD on the DLR loss, as in the standard version (9 target classes)
  square    Square, a black-box attack that only queries the model's scores

Against a randomized model, the single attacks average APGD's gradient over the same 20 draws
as the `rand` version. AutoAttack attacks only the examples that the model classifies
correctly, keeps attacking an example until the model gets it wrong, and returns the others
unchanged; `classify` replaces the model in those decisions, so that a randomized model is
judged by the same majority vote as everywhere in `evaluation`. (Inside each stage, APGD
still checks its start with one forward pass and skips an image that one draw misclassifies;
the image stays in play for the next stage. EOT-PGD beside `aa` covers that gap.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

NAMES = ("aa", "apgd-ce", "apgd-t", "square")
STANDARD_SQUARE_QUERIES = 5000  # AutoAttack's standard version
RAND_EOT_DRAWS = 20  # AutoAttack's rand version: gradient draws per APGD step


def build(model: nn.Module, name: str, *, eps: float, seed: int, randomized: bool,
          square_queries: int = STANDARD_SQUARE_QUERIES,
          device: torch.device | str = "cpu"):
    """The configured `pyautoattack.AutoAttack` for one of NAMES (L-inf budget eps on [0, 1]
    images)."""
    from pyautoattack import AutoAttack  # only evaluations that run it need it loaded

    if name not in NAMES:
        raise ValueError(f"unknown AutoAttack attack {name!r}; one of: {', '.join(NAMES)}")
    if name == "aa":
        attack = AutoAttack(model, eps=eps, norm="Linf", seed=seed, device=device,
                            version="rand" if randomized else "standard")
    else:
        attack = AutoAttack(model, attacks=[name], eps=eps, norm="Linf", seed=seed,
                            device=device, version="custom")
        # The custom version keeps pyautoattack's constructor defaults (5 APGD restarts);
        # set what the standard version sets, so that apgd-ce is aa's first stage.
        attack.apgd.n_restarts = 1
        attack.apgd_targeted.n_restarts = 1
        attack.apgd_targeted.n_target_classes = 9
        if randomized:
            attack.apgd.eot_iter = RAND_EOT_DRAWS
            attack.apgd_targeted.eot_iter = RAND_EOT_DRAWS
    attack.square.n_queries = square_queries
    return attack


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, name: str, *, eps: float,
        seed: int, randomized: bool, square_queries: int = STANDARD_SQUARE_QUERIES,
        classify: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Adversarial examples for [0, 1] images x with labels y, in one batch.

    `classify` (images -> class scores) decides which examples count as correct, in place
    of one forward pass of `model`; the attacks themselves query `model`.
    """
    attack = build(model, name, eps=eps, seed=seed, randomized=randomized,
                   square_queries=square_queries, device=x.device)
    if classify is not None:
        attack.get_logits = classify  # AutoAttack uses it to decide correct or not, and in checks
    # pyautoattack views gradients as (batch, -1): it needs the contiguous layout.
    x_adv, _ = attack.run_standard_evaluation(x.contiguous(), y, batch_size=x.shape[0])
    return x_adv.detach().contiguous(memory_format=torch.channels_last)
