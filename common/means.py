"""fl.sharing=means: FedMix's NaiveMix (Yoon et al., ICLR 2021, "FedMix: Approximation of Mixup
under Mean Augmented Federated Learning"), adversarially trained.

A client averages groups of fl.means-size of its own images (and their one-hot labels) and
sends only the averages; the server pools every client's averages and sends the pool to the
clients; each client then mixes every training batch with pooled averages drawn at random:
x' = (1 - lambda) x + lambda x_bar, y' = (1 - lambda) y + lambda y_bar (lambda =
fl.mix-weight). The adversarial objective sees the mixed batch: its PGD and noise copies are
made from x', and every copy's loss is the cross-entropy against y'.

The soft target y' is not handed to the objective: cross-entropy is linear in its target, so
CE(z, (1 - lambda) t + lambda y_bar) = (1 - lambda) CE(z, t) + lambda CE(z, y_bar), where t is
the objective's own (label-smoothed) target. That holds for every term of train.objective=mixed,
the one objective the config lets this mode use. PGD ascends the cross-entropy of the batch's
own labels, the dominant class of y' for lambda < 0.5.
"""

from __future__ import annotations

import numpy as np
import torch

from .data import NUM_CLASSES

_TAG_MEANS = 103  # the seed stream that groups a client's images (see common.protocol's seeds)


class MeansError(ValueError):
    """A client holds fewer images than one average needs."""


def group_count(num_images: int, size: int) -> int:
    """How many averages a client of `num_images` sends: floor(n / M), one of all when M = 0
    (the images left over after the last whole group are in no average)."""
    if size == 0:
        return 1 if num_images else 0
    return num_images // size


def client_means(images: torch.Tensor, labels: torch.Tensor, size: int, seed: int,
                 key: int) -> tuple[np.ndarray, np.ndarray]:
    """The averages a client sends: (float32 (k, 3, 32, 32) in [0, 1], float32 (k, 10)
    averaged one-hot labels), each over `size` of its uint8 images (all of them when 0),
    grouped by a seeded shuffle (seed, client key): the same on every call, so a restarted
    node or a resumed run sends the same averages."""
    n = int(images.shape[0])
    count = group_count(n, size)
    if count == 0:
        raise MeansError(f"fl.means-size={size} is more than the {n} images of this client: it "
                         "would send no average; lower fl.means-size (0 = one average of all)")
    per_group = n if size == 0 else size
    rng = np.random.default_rng([seed, _TAG_MEANS, key])
    order = torch.from_numpy(rng.permutation(n)[:count * per_group].reshape(count, per_group))
    x = torch.stack([_mean_image(images, group) for group in order])
    onehot = torch.nn.functional.one_hot(labels.long(), NUM_CLASSES).double()
    y = onehot[order].mean(1)
    return x.numpy().astype(np.float32), y.numpy().astype(np.float32)


def _mean_image(images: torch.Tensor, group: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """The mean of images[group] in [0, 1], summed in chunks: an average of a whole client
    never holds all of its images as floats at once."""
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for first in range(0, group.numel(), chunk):
        total += images[group[first:first + chunk]].sum(0, dtype=torch.float64)
    return (total / (255.0 * group.numel())).float()


class MeansMix:
    """NaiveMix of a training batch with the pooled averages (on the training device)."""

    def __init__(self, pool_x: torch.Tensor, pool_y: torch.Tensor, weight: float) -> None:
        if pool_x.shape[0] == 0 or pool_x.shape[0] != pool_y.shape[0]:
            raise ValueError(f"the pool of averages holds {pool_x.shape[0]} images and "
                             f"{pool_y.shape[0]} labels; it needs the same number, at least 1")
        self.pool_x, self.pool_y, self.weight = pool_x.float(), pool_y.float(), float(weight)

    def mix(self, x: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x', y_bar): the batch mixed with one pooled average per image, drawn with
        replacement from `gen`, and those averages' labels."""
        pick = torch.randint(0, self.pool_x.shape[0], (x.shape[0],), device=x.device,
                             generator=gen)
        mixed = (1 - self.weight) * x + self.weight * self.pool_x[pick]
        return mixed, self.pool_y[pick]

    def terms(self, own_terms: torch.Tensor, logits: torch.Tensor,
              y_bar: torch.Tensor) -> torch.Tensor:
        """Each copy's loss against y' (see the module docstring): the objective's terms
        against the batch's own labels, mixed with each copy's cross-entropy against y_bar.
        The logits hold the copies one after another, each as long as y_bar."""
        parts = own_terms.numel()
        soft = -(logits.log_softmax(1) * y_bar.repeat(parts, 1)).sum(1)
        return (1 - self.weight) * own_terms + self.weight * soft.view(parts, -1).mean(1)
