import hashlib
import subprocess
import sys

import numpy as np
import pytest

from common.config import ExperimentConfig
from common.partition import (
    NUM_CLASSES,
    PartitionError,
    check_split,
    class_assignment,
    eval_indices,
    make_plan,
    shared_plan,
    split_for,
)

LABELS = np.repeat(np.arange(10), 500)[np.random.default_rng(0).permutation(5000)]


def plan(scheme, n=10, **kw):
    kw.setdefault("shared_fraction", 0.1)
    return make_plan(LABELS, scheme, n, seed=7, **kw)


@pytest.mark.parametrize("scheme", ["iid", "classes", "dirichlet"])
def test_partitions_are_disjoint_cover_the_pool_and_exclude_g(scheme):
    p = plan(scheme, min_partition_size=10)
    joined = np.concatenate(p.partitions)
    assert joined.size == np.unique(joined).size  # disjoint
    assert np.intersect1d(joined, p.shared).size == 0  # G is disjoint from every client
    assert np.array_equal(np.sort(np.concatenate([joined, p.shared])), np.arange(5000))


def test_shared_pool_is_class_uniform_and_sized_by_beta():
    p = plan("iid", shared_fraction=0.1)
    assert p.shared.size == 500
    assert np.bincount(LABELS[p.shared], minlength=10).tolist() == [50] * 10


@pytest.mark.parametrize("n, k", [(10, 2), (5, 2), (3, 4), (20, 1)])
def test_classes_scheme_gives_exactly_k_classes(n, k):
    p = plan("classes", n=n, classes_per_client=k)
    for part in p.partitions:
        assert np.unique(LABELS[part]).size == k
    if n * k >= 10:  # enough slots to cover every class
        assert np.unique(LABELS[np.concatenate(p.partitions)]).size == 10


def _check_classes_split(labels, n, k, shared_fraction, seed=7):
    """Every class and every non-G image used; k classes per partition; classes spread."""
    p = make_plan(labels, "classes", n, seed=seed, classes_per_client=k,
                  shared_fraction=shared_fraction)
    joined = np.concatenate(p.partitions)
    pool = np.setdiff1d(np.arange(labels.size), p.shared)
    assert np.array_equal(np.sort(joined), pool), (n, k)  # disjoint, and nothing dropped
    holders = np.zeros(NUM_CLASSES, dtype=int)
    for part in p.partitions:
        classes = np.unique(labels[part])
        assert classes.size == k, (n, k, classes)
        holders[classes] += 1
    assert (holders >= (n * k) // NUM_CLASSES).all(), (n, k, holders)
    assert (holders <= -(-(n * k) // NUM_CLASSES)).all(), (n, k, holders)


@pytest.mark.parametrize("n", range(1, 21))
def test_classes_scheme_covers_every_class_and_image_for_every_n_and_k(n):
    for k in range(1, NUM_CLASSES + 1):
        if n * k < NUM_CLASSES:
            with pytest.raises(PartitionError) as err:
                plan("classes", n=n, classes_per_client=k)
            message = str(err.value)
            assert f"fl.classes-per-client={k}" in message and f"{n} partitions" in message
            assert "at least" in message  # the fix
            continue
        _check_classes_split(LABELS, n, k, shared_fraction=0.1)
        assignment = class_assignment(n, k, seed=7)  # the same, from the assignment itself
        assert all(np.unique(a).size == k for a in assignment)
        counts = np.bincount(np.concatenate(assignment), minlength=NUM_CLASSES)
        assert counts.max() - counts.min() <= 1, (n, k, counts)


@pytest.mark.parametrize("n, k", [(6, 2), (4, 3), (6, 3), (6, 4), (7, 2), (7, 3), (8, 2),
                                  (10, 2), (3, 4)])
def test_classes_scheme_on_the_real_labels(cifar, n, k):
    """The pairs the old stride lost classes on, with the real training labels and a pool."""
    _check_classes_split(cifar.train_y.numpy(), n, k, shared_fraction=0.1)


@pytest.mark.parametrize("n, k", [(6, 2), (7, 3), (13, 1), (20, 7)])
def test_classes_split_is_deterministic_per_seed(n, k):
    a = make_plan(LABELS, "classes", n, seed=3, classes_per_client=k)
    b = make_plan(LABELS, "classes", n, seed=3, classes_per_client=k)
    c = make_plan(LABELS, "classes", n, seed=4, classes_per_client=k)
    assert all(np.array_equal(x, y) for x, y in zip(a.partitions, b.partitions))
    assert not all(np.array_equal(x, y) for x, y in zip(a.partitions, c.partitions))


def test_the_harness_check_refuses_too_few_classes_without_data():
    cfg = ExperimentConfig.from_flat({"fl.partition": "classes", "fl.classes-per-client": 2})
    with pytest.raises(PartitionError, match=r"classes-per-client=2 and 3 partitions.*"
                                             r"at least 4 or use at least 5 partitions"):
        check_split(cfg, 3)
    check_split(cfg, 5)
    check_split(cfg.replace(**{"fl.partition": "iid"}), 3)  # only the classes scheme


def test_the_server_draws_the_same_pool_without_splitting():
    """The ServerApp knows no client count: its G must be the clients' G."""
    cfg = ExperimentConfig.from_flat({"fl.partition": "classes", "fl.shared-pool": 0.1,
                                      "data.train-limit": 3000})
    server = shared_plan(cfg, LABELS)
    assert server.partitions == () and server.shared.size == 300
    assert np.array_equal(server.shared, split_for(cfg, LABELS, 10).shared)


def test_ten_clients_two_classes_form_a_ring():
    assignment = class_assignment(10, 2, seed=7)
    firsts = [a[0] for a in assignment]
    assert sorted(firsts) == list(range(10))
    assert all(assignment[i][1] == assignment[(i + 1) % 10][0] for i in range(10))


def test_dirichlet_respects_the_minimum_size_and_is_skewed():
    p = plan("dirichlet", dirichlet_alpha=0.1, min_partition_size=50)
    assert min(part.size for part in p.partitions) >= 50
    top_share = [np.bincount(LABELS[part], minlength=10).max() / part.size
                 for part in p.partitions]
    assert np.mean(top_share) > 0.4  # alpha = 0.1 concentrates each client on few classes


def test_impossible_dirichlet_minimum_is_a_clear_error():
    with pytest.raises(PartitionError, match="min-partition-size"):
        plan("dirichlet", n=10, min_partition_size=1000)


def test_shares_are_per_client_seeded_subsets_of_g():
    p = plan("classes")
    a, b = p.share(0, 0.4, seed=7), p.share(1, 0.4, seed=7)
    assert a.size == b.size == 200
    assert np.isin(a, p.shared).all() and not np.array_equal(a, b)
    assert np.array_equal(a, p.share(0, 0.4, seed=7))
    assert p.share(0, 0.0, seed=7).size == 0


def test_train_limit_takes_a_balanced_subset():
    p = plan("iid", n=2, train_limit=1000, shared_fraction=0.2)
    used = np.concatenate([*p.partitions, p.shared])
    assert used.size == 1000
    assert np.bincount(LABELS[used], minlength=10).tolist() == [100] * 10


def test_eval_subset_is_balanced_and_fixed():
    a = eval_indices(LABELS, 200, seed=1)
    assert np.array_equal(a, eval_indices(LABELS, 200, seed=1))
    assert np.bincount(LABELS[a], minlength=10).tolist() == [20] * 10


def _digest(p):
    h = hashlib.sha256(p.shared.tobytes())
    for part in p.partitions:
        h.update(part.tobytes())
    return h.hexdigest()


SCRIPT = """
import hashlib, sys, numpy as np
from common.partition import make_plan
labels = np.repeat(np.arange(10), 500)[np.random.default_rng(0).permutation(5000)]
p = make_plan(labels, sys.argv[1], 10, seed=7, shared_fraction=0.1, min_partition_size=10)
h = hashlib.sha256(p.shared.tobytes())
for part in p.partitions:
    h.update(part.tobytes())
print(h.hexdigest())
"""


@pytest.mark.parametrize("scheme", ["iid", "classes", "dirichlet"])
def test_identical_in_a_separate_process(scheme):
    out = subprocess.run([sys.executable, "-c", SCRIPT, scheme], capture_output=True,
                         text=True, timeout=60, check=True)
    assert out.stdout.strip() == _digest(plan(scheme, min_partition_size=10))
