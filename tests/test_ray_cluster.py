"""The harness on an existing Ray cluster (--ray-address): a head and a second node, started as
separate `ray start` processes on this machine the way docs/deploy.md starts them on several.

Checked: the clients run on both nodes (Ray's own records, read from its GCS), they see the
harness's client variables there, the results land in the harness's out.dir, the harness leaves
the cluster running and no actor of its own behind; then the test stops exactly the cluster it
started (by a marker in the environment of its processes: `ray stop` would stop every Ray on the
machine).

Everything runs in a network namespace of the test's own whose only address is loopback: Ray
turns 127.0.0.1 into the machine's network address, and tests talk to loopback only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from common.device import CLIENT_GPUS_ENV
from simulation import cli
from simulation.engine import (PRIVATE_RAY, RAY_ADDRESS_ENV, RAY_JOB_CONFIG_ENV, flower_env,
                               free_port)

from .processes import kill_all, processes_with, wait_until_gone
from .test_deploy_docs import documented_commands
from .test_simulation import harness, sets

RAY_START_TIMEOUT = 180  # one `ray start` (about 30 s on a busy 2-core machine)
QUERY_TIMEOUT = 120
# The resources of the documented cluster (docs/deploy.md); the test's nodes have 1 CPU each.
DOC_HEAD, DOC_PORT = "10.0.0.5", 6379
DOC_NODE = {"cpus": 16, "gpus": 2}
DOC_CLIENT = {"num_supernodes": 10, "cpus": 2, "gpus": 0.25}


def ray_start_head(port: int, cpus: int, gpus: float, ray: str = "ray") -> list[str]:
    return [ray, "start", "--head", "--port", str(port), "--num-cpus", str(cpus),
            "--num-gpus", f"{gpus:g}", "--disable-usage-stats"]


def ray_start_worker(address: str, cpus: int, gpus: float, ray: str = "ray") -> list[str]:
    return [ray, "start", "--address", address, "--num-cpus", str(cpus),
            "--num-gpus", f"{gpus:g}", "--disable-usage-stats"]


def cluster_sweep_args(address: str, num_supernodes: int, cpus: int, gpus: float) -> list[str]:
    """The options a sweep on the cluster takes (the rest of its command line is the study's)."""
    return ["--ray-address", address, "--num-supernodes", str(num_supernodes),
            "--cpus-per-client", str(cpus), "--gpus-per-client", f"{gpus:g}"]


def on_one_machine(temp_dir: Path, head: bool) -> list[str]:
    """What two nodes on one shared machine need besides the documented options: loopback,
    their own folder (its socket paths must stay under 108 characters), small memory, no
    dashboard, and free ports instead of the fixed defaults (8265, 10001, 52365) that another
    Ray on the machine may hold."""
    # Loopback, the only address in the test's network namespace.
    extra = ["--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
             "--object-store-memory", str(100 * 1024**2), "--dashboard-agent-listen-port", "0"]
    if head:
        extra += ["--include-dashboard=false",
                  "--dashboard-port", str(free_port()),
                  "--ray-client-server-port", str(free_port())]
    return extra


# Ray's GCS tables without the dashboard (ray.util.state needs its state API server).
QUERY = """
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps({
    "nodes": {n["NodeID"]: {"alive": n["Alive"], "resources": n["Resources"]}
              for n in ray.nodes()},
    "actors": [{"class": a["ActorClassName"], "state": a["State"], "job": a["JobID"],
                "node": a["Address"]["NodeID"]} for a in state.actors().values()],
    "jobs": {j["JobID"]: {"entrypoint": j["Entrypoint"], "dead": j["IsDead"]}
             for j in state.state.job_table()},
}))
"""


class Netns:
    """A network namespace with loopback only, made and removed by the test (needs root)."""

    def __init__(self) -> None:
        self.name = f"robustfl-{uuid.uuid4().hex[:8]}"
        made = subprocess.run(["ip", "netns", "add", self.name], capture_output=True,
                              text=True, timeout=30)
        if made.returncode != 0:
            pytest.skip(f"cannot make a network namespace (`ip netns add` needs root): "
                        f"{made.stderr.strip()}")
        subprocess.run(self.prefix + ["ip", "link", "set", "lo", "up"], check=True,
                       timeout=30)

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)


class Cluster:
    """A head and a worker node on this machine; every process carries `marker`."""

    def __init__(self, temp_dir: Path, netns: Netns) -> None:
        self.netns = netns
        self.temp_dir = temp_dir
        self.marker = f"robustfl-ray-cluster-{uuid.uuid4().hex}"
        self.env = {**os.environ, "ROBUSTFL_RAY_CLUSTER": self.marker,
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop(RAY_ADDRESS_ENV, None)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.ray = str(Path(sys.executable).parent / "ray")

    def start(self) -> None:
        self._ray_start(ray_start_head(self.port, 1, 0, self.ray) +
                        on_one_machine(self.temp_dir, head=True) +
                        ["--resources", json.dumps({"head_node": 1})])
        self._ray_start(ray_start_worker(self.address, 1, 0, self.ray) +
                        on_one_machine(self.temp_dir, head=False) +
                        ["--resources", json.dumps({"worker_node": 1})])

    def _ray_start(self, cmd: list[str]) -> None:
        proc = subprocess.run(self.netns.prefix + cmd, env=self.env, capture_output=True,
                              text=True, timeout=RAY_START_TIMEOUT)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"

    def daemons(self) -> dict[int, str]:
        """pid -> command of the cluster's own GCS server and raylets."""
        return {pid: cmd for pid, cmd in processes_with(self.marker).items()
                if "gcs_server" in cmd or "raylet/raylet" in cmd}

    def query(self) -> dict:
        proc = subprocess.run(self.netns.prefix + [sys.executable, "-c", QUERY, self.address],
                              env=self.env, capture_output=True, text=True,
                              timeout=QUERY_TIMEOUT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        """SIGTERM, then (bounded) SIGKILL, exactly this cluster's processes."""
        for pid in processes_with(self.marker):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        wait_until_gone(self.marker, timeout=5)  # the raylets end their workers first
        kill_all(self.marker)  # the GCS server does not always end on SIGTERM
        left = wait_until_gone(self.marker, timeout=10)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not left, f"cluster processes survived SIGKILL: {left}"


class ActorEnvironments:
    """Samples, while the harness runs, the environment of the cluster's ClientApp actor
    processes (Ray names them ray::ClientAppActor)."""

    KEYS = (CLIENT_GPUS_ENV, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO")

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.seen: dict[int, dict[str, str | None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ActorEnvironments:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for pid, cmd in processes_with(self.marker).items():
                if pid not in self.seen and cmd.startswith("ray::ClientAppActor"):
                    try:
                        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                    except OSError:
                        continue
                    env = dict(e.decode(errors="replace").split("=", 1) for e in raw if b"=" in e)
                    self.seen[pid] = {k: env.get(k) for k in self.KEYS}


@pytest.fixture
def cluster():
    # Not tmp_path: Ray's socket paths under it would pass the 108-character limit.
    netns = Netns()
    temp_dir = Path(tempfile.mkdtemp(prefix="rf-ray-", dir="/tmp"))
    running = Cluster(temp_dir, netns)
    try:
        running.start()
        yield running
    finally:
        try:
            running.stop()
        finally:
            netns.remove()


@pytest.mark.flower
@pytest.mark.slow
def test_a_sweep_runs_its_clients_on_both_nodes_of_a_ray_cluster_and_leaves_it_running(
        data_dir, cluster, tmp_path):
    out = tmp_path / "sweep"
    daemons = cluster.daemons()
    assert sum("raylet/raylet" in cmd for cmd in daemons.values()) == 2, daemons
    started = time.monotonic()
    with ActorEnvironments(cluster.marker) as actors:
        # 2 clients of 1 CPU each on nodes of 1 CPU each: Ray must put one on each node.
        proc = harness(["sweep", "grid", "--scale", "toy", "--grid", "model.width=8",
                        "--out", str(out), *cluster_sweep_args(cluster.address, 2, 1, 0),
                        "--attacks", "fgsm", "--noise-attacks", "fgsm",
                        "--final-eval-limit", "50", *sets(
                            f"data.dir={data_dir}", "data.train-limit=200",
                            "data.eval-limit=50", "eval.attacks=fgsm", "fl.min-nodes=2")],
                       prefix=cluster.netns.prefix)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    assert f"on the Ray cluster at {cluster.address}" in proc.stdout

    # The results are complete, in out.dir on this machine (the ServerApp ran here).
    run = out / "cells" / "width=8"
    assert pd.read_csv(run / "rounds.csv")["round"].tolist() == [1]
    assert (run / "final.pt").is_file()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert sorted(pd.read_csv(run / "clients.csv")["status"]) == ["ok", "ok"]
    assert (out / "report" / "tables.md").is_file()

    # The harness stopped only what it owned: the cluster's GCS and raylets still run ...
    assert all(Path(f"/proc/{pid}").exists() for pid in daemons), (
        f"cluster processes gone after the harness: "
        f"{set(daemons) - set(cluster.daemons())}")
    state = cluster.query()
    assert len(state["nodes"]) == 2 and all(n["alive"] for n in state["nodes"].values()), state
    # ... and by Ray's records Flower's driver (flwr-simulation) was a job of this cluster
    # whose client actors ran on both nodes and are gone with it.
    flower_jobs = {job for job, info in state["jobs"].items()
                   if "flwr-simulation" in info["entrypoint"]}
    assert len(flower_jobs) == 1 and all(state["jobs"][j]["dead"] for j in flower_jobs), state
    clients = [a for a in state["actors"]
               if a["class"] == "ClientAppActor" and a["job"] in flower_jobs]
    nodes = {node_id: "head" if "head_node" in n["resources"] else "worker"
             for node_id, n in state["nodes"].items()}
    assert sorted(nodes[a["node"]] for a in clients) == ["head", "worker"], (clients, nodes)
    assert all(a["state"] == "DEAD" for a in clients), clients
    # The client processes, which a `ray start` node forks from its own environment, got the
    # harness's client variables (CPU only here) through the job's runtime environment.
    assert len(actors.seen) == 2 and all(
        env == {CLIENT_GPUS_ENV: "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
        for env in actors.seen.values()), actors.seen
    print(f"sweep of one cell on a two-node Ray cluster: {took:.0f} s")


def test_the_harness_refuses_a_ray_address_where_no_cluster_answers(tmp_path, capsys):
    port = free_port()  # nothing listens there
    out = tmp_path / "runs"
    assert cli.main(["run", "--ray-address", f"127.0.0.1:{port}", "--set", f"out.dir={out}"]) == 2
    err = capsys.readouterr().err
    assert f"no Ray cluster answers at 127.0.0.1:{port} (--ray-address)" in err
    assert "ray start --head" in err
    assert not out.exists()


def test_a_ray_client_address_in_the_environment_is_refused_for_sweeps(tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv(RAY_ADDRESS_ENV, "ray://10.0.0.5:10001")
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "grid", "--scale", "toy", "--grid", "model.width=8",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "RAY_ADDRESS='ray://10.0.0.5:10001'" in err
    assert "run the harness on a machine of the cluster" in err
    assert not out.exists()


def test_flower_gets_the_cluster_address_and_the_clients_variables(monkeypatch, tmp_path):
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    monkeypatch.setenv(RAY_JOB_CONFIG_ENV, json.dumps(
        {"runtime_env": {"env_vars": {"OTHER": "1"}, "pip": ["x"]}, "metadata": {"a": "b"}}))
    env = flower_env(tmp_path, client_gpus=0.5, ray_address="10.0.0.5:6379")
    assert env[RAY_ADDRESS_ENV] == "10.0.0.5:6379"
    job = json.loads(env[RAY_JOB_CONFIG_ENV])
    assert job == {"runtime_env": {"env_vars": {"OTHER": "1", CLIENT_GPUS_ENV: "0.5",
                                                "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"},
                                   "pip": ["x"]},
                   "metadata": {"a": "b"}}
    # RAY_ADDRESS set by the user means the same as --ray-address
    monkeypatch.delenv(RAY_JOB_CONFIG_ENV)
    monkeypatch.setenv(RAY_ADDRESS_ENV, "10.0.0.5:6379")
    job = json.loads(flower_env(tmp_path)[RAY_JOB_CONFIG_ENV])
    assert job["runtime_env"]["env_vars"][CLIENT_GPUS_ENV] == "0"


def test_without_an_address_flower_starts_a_private_ray(monkeypatch, tmp_path):
    """A bare ray.init() would join a cluster that `ray start` recorded on this machine."""
    for value in (None, PRIVATE_RAY):
        if value is None:
            monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
        else:
            monkeypatch.setenv(RAY_ADDRESS_ENV, value)
        env = flower_env(tmp_path)
        assert env[RAY_ADDRESS_ENV] == PRIVATE_RAY
        assert RAY_JOB_CONFIG_ENV not in env


def test_docs_show_the_cluster_commands_this_test_runs():
    """docs/deploy.md starts the cluster and runs the sweep with the options the two-node
    test uses (without on_one_machine's), at the documented cluster's size."""
    commands = documented_commands()
    address = f"{DOC_HEAD}:{DOC_PORT}"
    assert ray_start_head(DOC_PORT, **DOC_NODE) in commands
    assert ray_start_worker(address, **DOC_NODE) in commands
    sweep = cluster_sweep_args(address, DOC_CLIENT["num_supernodes"], DOC_CLIENT["cpus"],
                               DOC_CLIENT["gpus"])
    documented = [c for c in commands if c[:4] == ["python", "-m", "simulation", "sweep"]]
    assert any(_contains(c, sweep) for c in documented), documented


def _contains(tokens: list[str], part: list[str]) -> bool:
    return any(tokens[i:i + len(part)] == part for i in range(len(tokens) - len(part) + 1))
