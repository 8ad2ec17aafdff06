"""A real Flower deployment on 127.0.0.1 for tests: SuperLink, SuperNodes, flwr CLI.

Processes start with the command lines of deploy.commands, in their own sessions, with an
isolated FLWR_HOME and free ports; `stop_all` ends every process tree, also on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from deploy import commands
from simulation.engine import free_port
from simulation.procs import alive, cmdline, descendants, stop_tree

from .conftest import ROOT
from .processes import wait_for

CONNECTION = "test"
BIN = Path(sys.executable).parent


def _resolve(argv: list[str]) -> list[str]:
    """Run the console scripts of this environment (no activated venv needed)."""
    head = BIN / argv[0]
    return [str(head) if head.exists() else argv[0], *argv[1:]]


@dataclass
class Deployment:
    workdir: Path
    tls: commands.Tls | None = None
    node_auth: bool = False
    env_extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = self.workdir / "flwr-home"
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        self.port = free_port()
        self.superlink_proc: subprocess.Popen | None = None
        self.nodes: dict[str, subprocess.Popen] = {}
        self._all: list[subprocess.Popen] = []

    # --- processes ---------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "FLWR_HOME": str(self.home),
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
                "PYTHONUNBUFFERED": "1",
                # The SuperLink starts flower-superexec by name: this environment's first.
                "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
                # Several ClientApps share 2 cores here: one thread each avoids thrashing.
                "OMP_NUM_THREADS": "1", **self.env_extra}

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(_resolve(argv), env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=self.workdir)
        self._all.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_superlink(self, timeout: float = 60) -> None:
        self.superlink_proc = self.spawn("superlink", commands.superlink(
            database=str(self.workdir / "state.db"), host="127.0.0.1", port=self.port,
            tls=self.tls, node_auth=self.node_auth))
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            + commands.connection(CONNECTION, f"127.0.0.1:{self.port}", self.tls))
        self.wait(lambda: self._healthy(), timeout, "the SuperLink to answer /health",
                  lambda: self.log("superlink")[-2000:])

    def _healthy(self) -> bool:
        assert self.superlink_proc is not None
        if self.superlink_proc.poll() is not None:
            raise AssertionError(f"flower-superlink exited:\n{self.log('superlink')[-3000:]}")
        scheme = "https" if self.tls else "http"
        import ssl

        context = ssl.create_default_context(cafile=str(self.tls.ca)) if self.tls else None
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health",
                                        timeout=2, context=context) as r:
                return r.status == 200
        except OSError:
            return False

    def start_supernode(self, name: str, partition_id: int, num_partitions: int,
                        data_dir: Path | None = None, auth_key: Path | None = None
                        ) -> subprocess.Popen:
        proc = self.spawn(name, commands.supernode(
            f"127.0.0.1:{self.port}", partition_id, num_partitions,
            str(data_dir) if data_dir else None, port=free_port(), tls=self.tls,
            auth_key=auth_key))
        self.nodes[name] = proc
        return proc

    def stop_node(self, name: str, sig: int | None = None) -> None:
        """Stop one SuperNode: SIGTERM/SIGKILL its whole process group (node, executor and
        running ClientApp), as a machine going down would."""
        proc = self.nodes[name]
        if sig is None:
            stop_tree(proc)
            return
        for pid in [proc.pid, *descendants(proc.pid)]:
            try:
                os.killpg(os.getpgid(pid), sig)
            except OSError:
                pass

    def running(self, name: str, program: str) -> list[int]:
        """Live processes named `program` under the process `name` ("superlink" or a node)."""
        root = self.superlink_proc if name == "superlink" else self.nodes[name]
        assert root is not None
        return [p for p in descendants(root.pid) if alive(p) and program in cmdline(p)]

    def stop_all(self) -> None:
        for proc in reversed(self._all):
            stop_tree(proc, timeout=10)
        leftovers = [p.pid for p in self._all if alive(p.pid)]
        assert not leftovers, f"processes still alive: {leftovers}"

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    # --- flwr CLI ------------------------------------------------------------------------------

    def cli(self, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(_resolve(argv), env=self.env, capture_output=True, text=True,
                              timeout=timeout, cwd=self.workdir)

    def cli_json(self, argv: list[str], timeout: float = 60) -> dict:
        out = self.cli(argv, timeout)
        try:
            data = json.loads(out.stdout[out.stdout.index("{"):])
        except ValueError:
            raise AssertionError(f"{argv} printed no JSON:\n{out.stdout}\n{out.stderr}")
        # JSON mode exits 0 even on errors: the "success" field tells.
        assert data.get("success"), f"{argv} failed: {data}"
        return data

    def online_nodes(self) -> list[int]:
        data = self.cli_json(["flwr", "supernode", "list", CONNECTION, "--format", "json"])
        rows = data.get("nodes", data.get("supernodes", []))
        return [int(r["node-id"]) for r in rows if r.get("status") == "online"]

    def wait_nodes(self, count: int, timeout: float = 120) -> None:
        self.wait(lambda: len(self.online_nodes()) >= count, timeout,
                  f"{count} SuperNodes to be online",
                  lambda: "\n".join(self.log(n)[-800:] for n in self.nodes), interval=2.0)

    def register(self, public_key: Path) -> int:
        return int(self.cli_json(commands.register_node(public_key, CONNECTION))["node-id"])

    def submit(self, run_config: str) -> int:
        data = self.cli_json(commands.flwr_run(str(ROOT), CONNECTION, run_config), timeout=120)
        return int(data["run-id"])

    def run_info(self, run_id: int) -> dict:
        data = self.cli_json(["flwr", "list", CONNECTION, "--run-id", str(run_id),
                              "--format", "json"])
        return data["runs"][0]

    def run_log(self, run_id: int) -> str:
        return self.cli(["flwr", "log", str(run_id), CONNECTION, "--show"], timeout=60).stdout

    def wait_run(self, run_id: int, timeout: float, run_dir: Path | None = None) -> dict:
        """Until Flower reports the run finished. Each flwr CLI call costs a second of CPU,
        so the SuperLink is asked every 5 s, or as soon as the run's own status.json (when
        run_dir is given) says the ServerApp is done."""
        info: dict = {}
        last_ask = 0.0

        def finished() -> bool:
            nonlocal info, last_ask
            status = run_dir / "status.json" if run_dir else None
            done_on_disk = bool(status and status.exists() and json.loads(
                status.read_text()).get("status") in ("finished", "stopped", "failed"))
            if not done_on_disk and time.monotonic() - last_ask < 5:
                return False
            last_ask = time.monotonic()
            info = self.run_info(run_id)
            return info["status"].startswith("finished")

        self.wait(finished, timeout, f"run {run_id} to finish",
                  lambda: f"{info}\n{self.run_log(run_id)[-4000:]}", interval=0.5)
        return info

    wait = staticmethod(wait_for)
