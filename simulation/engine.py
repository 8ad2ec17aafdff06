"""A private Flower simulation SuperLink and `flwr run` against it.

`flwr run` on its own starts a detached local SuperLink that outlives the run and listens on
fixed ports; the harness instead starts its own `flower-superlink --simulation` on a free
loopback port, with its own FLWR_HOME, and stops its whole process group afterwards (also on
Ctrl-C or failure). The run itself is Flower's: FAB, run config, Ray engine.
"""

from __future__ import annotations

import contextlib
import os
import queue
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

from .procs import stop_tree

CONNECTION = "robustfl-sim"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


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


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "FLWR_HOME": str(flwr_home),
        # The app's dependencies are installed already; no per-run `uv sync`, no network.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "PYTHONUNBUFFERED": "1",
    })
    return env


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

    @property
    def env(self) -> dict[str, str]:
        return flower_env(self.home)


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def simulation_link(log_dir: Path | None = None) -> Iterator[SimulationLink]:
    """Start a private simulation SuperLink; stop it and everything it spawned on exit."""
    home = Path(tempfile.mkdtemp(prefix="robustfl-flwr-"))
    port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log_path = (log_dir or home) / "superlink.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            [bin_path("flower-superlink"), "--insecure", "--simulation",
             "--host", "127.0.0.1", "--port", str(port),
             "--disable-runtime-dependency-installation"],
            env=flower_env(home), stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=home,
        )
    link = SimulationLink(home, port, proc, log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _healthy(port):
            if proc.poll() is not None:
                raise EngineError(f"flower-superlink exited with code {proc.returncode}; "
                                  f"see {log_path}")
            if time.monotonic() > deadline:
                raise EngineError(f"flower-superlink did not answer on 127.0.0.1:{port} "
                                  f"within {START_TIMEOUT:.0f} s; see {log_path}")
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
