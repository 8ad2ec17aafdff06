"""A private Flower simulation SuperLink and `flwr run` against it.

`flwr run` on its own starts a detached local SuperLink that outlives the run and listens on
fixed ports; the harness instead starts its own `flower-superlink --simulation` on a free
loopback port, with its own FLWR_HOME, and stops its whole process group afterwards (also on
Ctrl-C or failure). The run itself is Flower's: FAB, run config, Ray engine.

With a Ray cluster address (--ray-address or RAY_ADDRESS), Flower's Ray backend joins that
cluster instead of starting a private Ray: its `ray.init()` reads RAY_ADDRESS. The cluster's
processes come from `ray start`, outside the SuperLink's process tree, so stopping that tree
never reaches them, and Flower's closing `ray.shutdown()` only disconnects its driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from common.device import CLIENT_GPUS_ENV

from .procs import stop_tree

CONNECTION = "robustfl-sim"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
PRIVATE_RAY = "local"  # Ray's address for "start a new instance on this machine"
# Ray's job manager passes a job's runtime environment to its driver in this variable and
# ray.init() gives it to every worker of the job, on every node. A `ray start` node's workers
# inherit that node's environment, not the harness's, so this is how the client variables
# (flower_env) reach ClientApps on a cluster.
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
ADDRESS_CHECK_TIMEOUT = 5.0
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 20


class EngineError(RuntimeError):
    """The simulation SuperLink could not be started or the run could not be submitted."""


def project_dir() -> Path:
    """The RobustFL checkout that `flwr run` packages (the folder with pyproject.toml)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise EngineError(f"no pyproject.toml next to {root}/simulation; run the harness from "
                          "a RobustFL checkout installed with `pip install -e .`")
    return root


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(client_gpus: float) -> dict[str, str]:
    """What the ClientApps' processes must see, on this machine or on a Ray cluster's nodes."""
    return {
        # Clients with no GPU share must not land on cuda:0 unaccounted: Ray hides the GPUs
        # from 0-GPU actors only while this is 1 (its default is to flip), and the clients
        # read their share from CLIENT_GPUS_ENV (common.device) whatever Ray does.
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1" if client_gpus == 0 else "0",
        CLIENT_GPUS_ENV: f"{client_gpus:g}",
    }


def job_config_with(job_config_json: str | None, env_vars: dict[str, str]) -> str:
    """Ray's job config (RAY_JOB_CONFIG_ENV) with env_vars added to its runtime environment;
    a config already there (the harness submitted as a Ray job) keeps everything else."""
    try:
        config = json.loads(job_config_json) if job_config_json else {}
    except json.JSONDecodeError as exc:
        config = exc
    if not isinstance(config, dict):
        raise EngineError(f"{RAY_JOB_CONFIG_ENV} is not a JSON object ({config}); unset it")
    runtime_env = config.get("runtime_env") or {}
    runtime_env["env_vars"] = {**(runtime_env.get("env_vars") or {}), **env_vars}
    return json.dumps({**config, "runtime_env": runtime_env})


def flower_env(flwr_home: Path, client_gpus: float = 0.0,
               ray_address: str | None = None) -> dict[str, str]:
    """The environment of the SuperLink and everything it starts. ray_address (else the
    caller's RAY_ADDRESS): the Ray cluster the simulation joins; None: a private Ray."""
    env = dict(os.environ)
    # This interpreter's console scripts first: the SuperLink starts `flower-superexec` by
    # name, and IDEs, cron and batch jobs run .venv/bin/python without an activated venv.
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env["PATH"]]) if env.get("PATH") else scripts
    clients = client_env(client_gpus)
    env.update({
        "FLWR_HOME": str(flwr_home),
        # The app's dependencies are installed already; no per-run `uv sync`, no network.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        **clients,
        "PYTHONUNBUFFERED": "1",
    })
    address = cluster_address(ray_address)
    if address:
        env[RAY_ADDRESS_ENV] = address
        env[RAY_JOB_CONFIG_ENV] = job_config_with(env.get(RAY_JOB_CONFIG_ENV), clients)
    else:
        # A bare ray.init() joins the cluster a `ray start` on this machine recorded (or
        # fails on a stale record of one): without an address, a private Ray it is.
        env[RAY_ADDRESS_ENV] = PRIVATE_RAY
    return env


def cluster_address(ray_address: str | None = None) -> str | None:
    """The Ray cluster to join: ray_address, else $RAY_ADDRESS; None (neither, or Ray's
    "local"): a private Ray on this machine, which Flower starts and stops."""
    address = ray_address or os.environ.get(RAY_ADDRESS_ENV) or None
    return None if address == PRIVATE_RAY else address


def check_ray_address(address: str, source: str = "--ray-address") -> None:
    """Refuse, before anything starts, a Ray address the simulation cannot join: Flower's
    driver joins as a local Ray process, so it needs a cluster's GCS address (HOST:PORT, the
    head's `ray start --port`) or "auto" (the cluster `ray start` left on this machine)."""
    fix = ("run the harness on a machine of the cluster (e.g. its head) with the head's "
           "address, HEAD_IP:6379 for `ray start --head --port 6379` (docs/deploy.md)")
    if address == "auto":
        return
    if "://" in address:
        raise EngineError(f"{source}={address!r}: Ray Client and dashboard addresses are not "
                          f"supported; {fix}")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"{source}={address!r} is not HOST:PORT; {fix}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), ADDRESS_CHECK_TIMEOUT).close()
    except OSError as exc:
        raise EngineError(f"no Ray cluster answers at {address} ({source}): "
                          f"{exc.strerror or exc}; start one with `ray start --head --port "
                          f"{port}` or fix the address") from None


def bin_path(name: str) -> str:
    """A console script of this Python environment (works without an activated venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class SimulationLink:
    home: Path
    port: int
    process: subprocess.Popen
    log_path: Path
    client_gpus: float = 0.0
    ray_address: str | None = None

    @property
    def env(self) -> dict[str, str]:
        return flower_env(self.home, self.client_gpus, self.ray_address)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log, indented, without terminal colours (for error messages)."""
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError as exc:
        return f"  ({path} cannot be read: {exc.strerror or exc})"
    return "\n".join("  " + re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text) or "  (empty)"


@contextlib.contextmanager
def simulation_link(log_dir: Path, client_gpus: float = 0.0,
                    ray_address: str | None = None) -> Iterator[SimulationLink]:
    """Start a private simulation SuperLink; stop it and everything it spawned on exit.

    Its log goes to log_dir/superlink.log, which outlives the link (the run folder), so an
    error can point at it; client_gpus is the GPU share per client (common.device);
    ray_address the Ray cluster to run the clients on (flower_env)."""
    home = Path(tempfile.mkdtemp(prefix="robustfl-flwr-"))
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log_path = log_dir / "superlink.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [bin_path("flower-superlink"), "--insecure", "--simulation",
             "--host", "127.0.0.1", "--port", str(port),
             "--disable-runtime-dependency-installation"],
            env=flower_env(home, client_gpus, ray_address), stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True, cwd=home,
        )
    link = SimulationLink(home, port, proc, log_path, client_gpus, ray_address)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(port):
            if proc.poll() is not None:
                raise EngineError(f"flower-superlink exited with code {proc.returncode}; "
                                  f"the end of {log_path}:\n{log_tail(log_path)}")
            if time.monotonic() > deadline:
                raise EngineError(f"flower-superlink did not answer on 127.0.0.1:{port} "
                                  f"within {START_TIMEOUT:.0f} s; the end of {log_path}:\n"
                                  f"{log_tail(log_path)}")
            time.sleep(0.2)
        yield link
    finally:
        stop_tree(proc)
        shutil.rmtree(home, ignore_errors=True)


def run_app(
    link: SimulationLink,
    overrides_file: Path,
    federation: dict[str, object],
    on_line: Callable[[str], None],
    timeout: float,
) -> int:
    """`flwr run <project> --stream` against the link; each output line goes to on_line.

    Returns flwr's exit code. The stream ends when the run ends.
    """
    fed = " ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                   for k, v in federation.items())
    cmd = [bin_path("flwr"), "run", str(project_dir()), CONNECTION, "--stream",
           "--run-config", str(overrides_file), "--federation-config", fed]
    proc = subprocess.Popen(cmd, env=link.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            cwd=link.home)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # a thread, so that a silent hang still meets the deadline below
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError(f"the run exceeded its time limit of {timeout:.0f} s "
                                  "(--timeout)")
            try:
                line = lines.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if line is None:
                return proc.wait(timeout=STOP_TIMEOUT)
            on_line(line)
    finally:
        stop_tree(proc)
