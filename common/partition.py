"""Client partitions and the shared pool G, as pure functions of the labels and the seed.

Every node calls these with the same labels, scheme, seed and num-partitions and so derives the
same split without talking to the others. All indices refer to the full training set.

  val       = class-balanced, seeded subset (data.val-size) of the training set: the
              server's validation split, held out before anything else is drawn
  available = class-balanced subset (data.train-limit) of the training set minus val
  G         = class-uniform, seeded, size beta*|available|   (the shared pool, server-side)
  pool      = available minus G                               (what clients split)
  partition = IID | k classes per client | Dirichlet(alpha) split of pool
  share_i   = seeded alpha-fraction of G for partition i      (sent by the server)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import NUM_CLASSES

SCHEMES = ("iid", "classes", "dirichlet")
DIRICHLET_MAX_ATTEMPTS = 1000

# Tags keep the random streams of different purposes independent for one seed.
_TAG_SUBSET, _TAG_POOL, _TAG_SPLIT, _TAG_SHARE, _TAG_CLASSES, _TAG_EVAL = 11, 12, 13, 14, 15, 16
_TAG_VAL = 17


def _rng(seed: int, tag: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng([seed, tag, *extra])


class PartitionError(ValueError):
    """The requested split cannot be made from these labels."""


def validation_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The validation split: `size` class-balanced training images (sorted) that no client
    and no shared pool ever holds; checkpoints are selected on it, never on the test set."""
    if size <= 0:
        return np.empty(0, dtype=np.int64)
    if size >= labels.size:
        raise PartitionError(
            f"data.val-size={size} would take all {labels.size:,} training images of this data "
            "folder and leave none to train on; lower data.val-size (e.g. 500), or 0 to select "
            "no checkpoint and evaluate on the test subset during the run"
        )
    return balanced_subset(labels, size, _rng(seed, _TAG_VAL))


def available_indices(labels: np.ndarray, limit: int, seed: int,
                      val_size: int = 0) -> np.ndarray:
    """The training images a run trains on: a balanced subset of size `limit` (all when 0 or
    more than there are) of the images outside the validation split. With val_size 0 this is
    the subset of earlier versions, image for image."""
    rest = np.setdiff1d(np.arange(labels.size), validation_indices(labels, val_size, seed),
                        assume_unique=True)
    return rest[balanced_subset(labels[rest], limit, _rng(seed, _TAG_SUBSET))]


def balanced_subset(labels: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a random subset of size `limit`, as class-balanced as the labels
    allow (all indices when limit is 0 or too large)."""
    n = labels.size
    if limit <= 0 or limit >= n:
        return np.arange(n)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in range(NUM_CLASSES)]
    longest = max(p.size for p in per_class)
    table = np.full((longest, NUM_CLASSES), -1)
    for c, p in enumerate(per_class):
        table[: p.size, c] = p
    order = table.reshape(-1)  # round robin over classes: balanced at every prefix length
    return np.sort(order[order >= 0][:limit])


def eval_indices(test_labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """The fixed, class-balanced evaluation subset of an evaluation set (the test set, or the
    validation split during a run)."""
    return balanced_subset(test_labels, limit, _rng(seed, _TAG_EVAL))


def in_run_eval_size(val_size: int, eval_limit: int, test_images: int) -> int:
    """Images of each in-run evaluation (server/central.py): data.eval-limit of the
    validation split, or of the test set when there is no split; 0 = all of it."""
    pool = val_size if val_size > 0 else test_images
    return min(eval_limit, pool) if eval_limit else pool


def shared_pool(labels: np.ndarray, candidates: np.ndarray, beta: float, seed: int) -> np.ndarray:
    """G: beta*|candidates| indices, the same number from every class, seeded."""
    per_class = int(beta * candidates.size) // NUM_CLASSES
    if per_class == 0:
        return np.empty(0, dtype=np.int64)
    rng = _rng(seed, _TAG_POOL)
    chosen = []
    for c in range(NUM_CLASSES):
        members = candidates[labels[candidates] == c]
        if members.size < per_class:
            raise PartitionError(
                f"class {c} has {members.size} images, fewer than the {per_class} the shared "
                f"pool needs (fl.shared-pool={beta}); lower fl.shared-pool or raise "
                "data.train-limit"
            )
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def class_assignment(num_partitions: int, k: int, seed: int) -> list[np.ndarray]:
    """Which k classes each partition holds: windows of k neighbours on a seeded class ring.

    Partition i's window starts at floor(i * C / n), so the n starts spread evenly over the
    ring: every class lies in floor or ceil of n*k/C windows, none is left out when n*k >= C,
    and a window of k <= C neighbours holds k distinct classes. (With n = 10 and k = 2,
    partition i holds classes order[i] and order[i+1]: a ring.)
    """
    check_classes_cover(num_partitions, k)
    order = _rng(seed, _TAG_CLASSES).permutation(NUM_CLASSES)
    return [order[((i * NUM_CLASSES) // num_partitions + np.arange(k)) % NUM_CLASSES]
            for i in range(num_partitions)]


def check_classes_cover(num_partitions: int, k: int) -> None:
    """Refuse a k-classes split whose partitions together hold fewer than all classes: the
    images of the classes nobody holds would silently drop out of training."""
    if not 1 <= k <= NUM_CLASSES:
        raise PartitionError(f"fl.classes-per-client must lie in 1..{NUM_CLASSES}, got {k}")
    if num_partitions * k < NUM_CLASSES:
        need_k = -(-NUM_CLASSES // num_partitions)
        need_n = -(-NUM_CLASSES // k)
        raise PartitionError(
            f"fl.partition=classes with fl.classes-per-client={k} and {num_partitions} "
            f"partitions (clients) holds at most {num_partitions * k} of the {NUM_CLASSES} "
            f"classes, so the images of the others would never be trained on; raise "
            f"fl.classes-per-client to at least {min(need_k, NUM_CLASSES)} or use at least "
            f"{need_n} partitions (--num-supernodes, or num-partitions in the node config)"
        )


def check_split(cfg, num_partitions: int) -> None:
    """What can be checked about a config's split before any data is loaded (the harness
    calls this before Flower starts; the nodes hit the same checks in make_plan)."""
    if cfg.fl.client_data == "local":
        raise PartitionError(
            "fl.client-data=local needs SuperNodes that each hold their own data folder and "
            "node-name (docs/deploy.md, \"Bring your own data\"); the simulation's nodes "
            "share data.dir, so use fl.client-data=partition here"
        )
    if cfg.fl.partition == "classes":
        check_classes_cover(num_partitions, cfg.fl.classes_per_client)


def _split_iid(pool: np.ndarray, n: int, rng) -> list[np.ndarray]:
    return np.array_split(rng.permutation(pool), n)


def _split_classes(pool, labels, n, k, seed, rng) -> list[np.ndarray]:
    assignment = class_assignment(n, k, seed)
    holders = {c: [i for i in range(n) if c in assignment[i]] for c in range(NUM_CLASSES)}
    parts: list[list[np.ndarray]] = [[] for _ in range(n)]
    for c in range(NUM_CLASSES):  # class_assignment gave every class at least one holder
        members = rng.permutation(pool[labels[pool] == c])
        for holder, chunk in zip(holders[c], np.array_split(members, len(holders[c]))):
            parts[holder].append(chunk)
    return [np.concatenate(p) if p else np.empty(0, dtype=np.int64) for p in parts]


def _split_dirichlet(pool, labels, n, alpha, min_size, rng) -> list[np.ndarray]:
    if min_size * n > pool.size:
        raise PartitionError(
            f"cannot give {n} partitions at least {min_size} images each from {pool.size}; "
            "lower fl.min-partition-size or use fewer partitions"
        )
    for _ in range(DIRICHLET_MAX_ATTEMPTS):
        parts: list[list[np.ndarray]] = [[] for _ in range(n)]
        for c in range(NUM_CLASSES):
            members = rng.permutation(pool[labels[pool] == c])
            shares = rng.dirichlet(np.full(n, alpha))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(int)
            for i, chunk in enumerate(np.split(members, cuts)):
                parts[i].append(chunk)
        split = [np.concatenate(p) for p in parts]
        if min(p.size for p in split) >= min_size:
            return split
    raise PartitionError(
        f"Dirichlet(alpha={alpha}) split into {n} partitions did not reach "
        f"fl.min-partition-size={min_size} in {DIRICHLET_MAX_ATTEMPTS} draws; raise "
        "fl.dirichlet-alpha or lower fl.min-partition-size"
    )


@dataclass(frozen=True)
class DataPlan:
    """The split of the training set for one run: shared pool and client partitions."""

    shared: np.ndarray  # G, sorted
    partitions: tuple[np.ndarray, ...]  # one sorted index array per partition

    def share(self, partition_id: int, alpha: float, seed: int) -> np.ndarray:
        """The alpha-fraction of G that partition `partition_id` receives (sorted)."""
        size = int(round(alpha * self.shared.size))
        if size == 0:
            return np.empty(0, dtype=np.int64)
        rng = _rng(seed, _TAG_SHARE, partition_id)
        return np.sort(rng.choice(self.shared, size, replace=False))


def make_plan(
    labels: np.ndarray,
    scheme: str,
    num_partitions: int,
    seed: int,
    *,
    train_limit: int = 0,
    val_size: int = 0,
    shared_fraction: float = 0.0,
    classes_per_client: int = 2,
    dirichlet_alpha: float = 0.5,
    min_partition_size: int = 0,
) -> DataPlan:
    """Split `labels` (the full training labels) deterministically; see the module doc."""
    if scheme not in SCHEMES:
        raise PartitionError(f"unknown partition scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    if num_partitions < 1:
        raise PartitionError(f"num-partitions must be >= 1, got {num_partitions}")
    labels = np.asarray(labels)
    available = available_indices(labels, train_limit, seed, val_size)
    shared = shared_pool(labels, available, shared_fraction, seed)
    pool = np.setdiff1d(available, shared, assume_unique=True)
    rng = _rng(seed, _TAG_SPLIT, num_partitions)
    if scheme == "iid":
        parts = _split_iid(pool, num_partitions, rng)
    elif scheme == "classes":
        parts = _split_classes(pool, labels, num_partitions, classes_per_client, seed, rng)
    else:
        parts = _split_dirichlet(
            pool, labels, num_partitions, dirichlet_alpha, min_partition_size, rng
        )
    return DataPlan(shared=shared, partitions=tuple(np.sort(p) for p in parts))


def shared_plan(cfg, labels: np.ndarray) -> DataPlan:
    """The server's part of a config's DataPlan: G (for the shares), no client partitions."""
    available = available_indices(labels, cfg.data.train_limit, cfg.seed, cfg.data.val_size)
    return DataPlan(shared=shared_pool(labels, available, cfg.fl.shared_pool, cfg.seed),
                    partitions=())


def split_for(cfg, labels: np.ndarray, num_partitions: int) -> DataPlan:
    """The DataPlan of an ExperimentConfig: the one call server and clients both make."""
    fl = cfg.fl
    return make_plan(
        labels, fl.partition, num_partitions, cfg.seed,
        train_limit=cfg.data.train_limit, val_size=cfg.data.val_size,
        shared_fraction=fl.shared_pool,
        classes_per_client=fl.classes_per_client, dirichlet_alpha=fl.dirichlet_alpha,
        min_partition_size=fl.min_partition_size,
    )
