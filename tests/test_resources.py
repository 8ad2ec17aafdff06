"""How many cores the harness gives each simulated client."""

from __future__ import annotations

import os

import pytest

from simulation.runner import Resources


def test_a_single_client_gets_every_core_and_many_clients_one_each():
    cores = len(os.sched_getaffinity(0))
    assert Resources.for_clients(1).cpus_per_client == cores  # the centralized baseline
    assert Resources.for_clients(10).cpus_per_client == 1
    assert Resources.for_clients(10, 2).federation_config()["client-resources-num-cpus"] == 2


def test_fewer_than_one_core_per_client_is_refused():
    with pytest.raises(ValueError, match="cpus per client must be >= 1"):
        Resources.for_clients(3, 0)
