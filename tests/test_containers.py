"""The project's docker-compose.yml, run for real: podman serves the Docker API, docker-compose
starts the SuperLink, the ServerApp executor and three SuperNodes with their ClientApp
executors on the file's internal network, and the flwr CLI submits the app from a one-shot
container in that network. Then a SuperNode is stopped in the middle of a round.

Only the image and the Python mounts are swapped (tests/containers.py); everything else is the
checked-in file. ROBUSTFL_TEST_COMPOSE_EXTRA=<file> adds a compose file before that override,
to try a broken variant by hand: every wait is bounded, so it fails instead of hanging.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from . import containers
from .test_deployment import assert_two_good_rounds, tiny_run_config

pytestmark = [pytest.mark.containers, pytest.mark.flower]

NODES = 3
CLIENTAPP_STARTED = "Start `flwr-clientapp` process"


@pytest.fixture(scope="module")
def engine():
    reason = containers.missing_requirements()
    if reason:
        pytest.skip(reason)
    tarball = containers.base_tarball()  # cached: built once per package list
    engine = containers.Engine()
    try:
        engine.start()
        engine.import_image(tarball)
        yield engine
    finally:
        engine.stop()
    assert not engine.leftovers(), f"left behind: {engine.leftovers()}"


@pytest.fixture(scope="module")
def deployment(engine, data_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("compose")
    extra = os.environ.get("ROBUSTFL_TEST_COMPOSE_EXTRA")
    compose = containers.Compose(engine, work, data_dir, work / "results",
                                 extra_files=(Path(extra),) if extra else ())
    try:
        compose.up()
        compose.wait_nodes(NODES, timeout=120)
        yield compose
    finally:
        compose.down()
    assert not compose.leftovers(), f"left behind: {compose.leftovers()}"


def submit(deployment, run_config: str) -> int:
    data = deployment.cli_json("flwr", "run", "/app", "local", "--run-config", run_config)
    return int(data["run-id"])


def run_status(deployment, run_id: int) -> str:
    data = deployment.cli_json("flwr", "list", "local", "--run-id", str(run_id))
    return data["runs"][0]["status"]


def test_compose_deployment_trains_two_rounds(deployment):
    run_id = submit(deployment, tiny_run_config("/data", "/results", "compose"))
    status = deployment.wait_run(run_id, "compose", timeout=420)
    assert status["status"] == "finished", status
    assert_two_good_rounds(deployment.results / "compose")
    assert run_status(deployment, run_id) == "finished:completed"


def test_a_supernode_stopped_mid_round_is_recorded_and_the_run_goes_on(deployment):
    # Partition 1 sleeps before training, so it certainly holds an unanswered message when
    # its SuperNode stops; fl.min-nodes=2 lets the next round go on with the other two.
    config = tiny_run_config("/data", "/results", "node-down",
                             extra="fault.mode='delay' fault.partitions='1' fault.delay=60.0 "
                                   "fl.round-timeout=150.0")
    executor = "superexec-clientapp-1"
    started = deployment.log(executor).count(CLIENTAPP_STARTED)
    run_id = submit(deployment, config.replace("fl.min-nodes=3", "fl.min-nodes=2"))
    # Its executor starts one ClientApp process per message: the greeting, then round 1.
    containers.wait(lambda: deployment.log(executor).count(CLIENTAPP_STARTED) >= started + 2,
                    180, "round 1 to reach partition 1", lambda: deployment.logs(tail=40))
    deployment("stop", "--timeout", "10", "supernode-1", timeout=60)
    status = deployment.wait_run(run_id, "node-down", timeout=420,
                                 allowed_down=("supernode-1", executor))
    assert status["status"] == "finished", status

    run = deployment.results / "node-down"
    rounds = pd.read_csv(run / "rounds.csv")
    assert rounds["round"].tolist() == [1, 2]
    assert rounds["natural_acc"].map(math.isfinite).all()
    assert rounds["clients_ok"].tolist() == [2, 2]
    clients = pd.read_csv(run / "clients.csv")
    stopped = clients[clients["partition_id"] == 1]
    assert stopped["round"].tolist() == [1], clients  # not sampled again once offline
    assert stopped["status"].iloc[0] in ("failed", "timeout"), stopped.to_dict("records")
    others = clients[clients["partition_id"] != 1]
    assert (others["status"] == "ok").all() and len(others) == 4, clients
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert run_status(deployment, run_id) == "finished:completed"
