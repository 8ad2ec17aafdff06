"""Run the project's docker-compose.yml for real on a machine without Docker or a registry.

- Engine: rootful podman serving the Docker API on a socket in a temporary folder, with its
  images, containers, volumes and network definitions under that folder too (settings in
  deploy/podman/). `stop()` removes all of it, and the host-wide traces podman's network
  backend leaves (netavark firewall chains, ip_forward, /run/containers), if they are new.
- Base image: Debian minbase from debootstrap plus the shared libraries a host CPython needs,
  cached as a tarball under ~/.cache/robustfl/ and imported for each session.
- Compose: docker-compose (v1) with docker-compose.yml plus an override that only swaps the
  image for the local one and bind-mounts this interpreter and its virtual environment
  read-only at identical paths, so the containers run exactly the Python of the tests. Data
  and results come through the compose file's own ROBUSTFL_DATA/ROBUSTFL_RESULTS variables.

Every call has a timeout; every wait is bounded and fails with the relevant logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from deploy import compose as compose_files

from .conftest import ROOT
from .processes import wait_for

CONF = ROOT / "deploy" / "podman"
IMAGE = "localhost/robustfl-base:test"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "robustfl"
SUITE = os.environ.get("ROBUSTFL_DEBIAN_SUITE", "bookworm")
# What minbase lacks for CPython's extension modules (ssl/hashlib, sqlite3 for the SuperLink
# state database, pyexpat, ctypes, bz2, lzma, uuid, readline, curses) and for HTTPS.
INCLUDE = ["libssl3", "libsqlite3-0", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5",
           "zlib1g", "libuuid1", "libncursesw6", "libreadline8", "libtirpc3", "libnsl2",
           "ca-certificates"]
TOOLS = ("podman", "docker-compose", "debootstrap", "runc", "iptables")


def missing_requirements() -> str | None:
    """Why the container tests cannot run here, or None."""
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if missing:
        return f"{', '.join(missing)} not installed (deploy/ci-apt.sh installs them)"
    if os.geteuid() != 0:
        return "rootful podman and debootstrap need root"
    return None


def run(argv: list[str], timeout: float, env: dict | None = None, check: bool = True,
        **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL, **kwargs)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {out.returncode}:\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def wait(ready, timeout: float, what: str, details=lambda: "", interval: float = 1.0):
    wait_for(ready, timeout, what, details, interval)  # container commands are slower to poll


# --- the host's Python, mounted into the containers -------------------------------------------

def _system_python() -> bool:
    """A distribution Python lives in /usr, which must not be mounted over the image's."""
    return os.path.realpath(sys.base_prefix) == "/usr"


def python_mounts() -> list[str]:
    """The virtual environment and the interpreter it links to, at identical paths."""
    interpreter = Path(os.path.realpath(sys.executable)).parent.parent
    paths = {sys.prefix, os.path.realpath(sys.prefix)}
    if not _system_python():
        paths |= {sys.base_prefix, os.path.realpath(sys.base_prefix), str(interpreter)}
    paths = sorted(p for p in paths if p not in ("/", "/usr"))
    # A folder inside another mounted one is already there.
    return [p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)]


def include_packages() -> list[str]:
    # Debian's own python3.X then comes from the image, at the path the venv expects.
    extra = [f"python{sys.version_info.major}.{sys.version_info.minor}"] if _system_python() else []
    return INCLUDE + extra


# --- the base image ----------------------------------------------------------------------------

def _mirror() -> str:
    if os.environ.get("ROBUSTFL_DEBIAN_MIRROR"):
        return os.environ["ROBUSTFL_DEBIAN_MIRROR"]
    # The mirror apt already uses (deb822 "URIs:" or one-line "deb" entries).
    pattern = re.compile(r"^(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(https?://\S+/debian)/?(?:\s|$)",
                         re.M)
    sources = [*Path("/etc/apt/sources.list.d").glob("*.sources"), Path("/etc/apt/sources.list")]
    for path in sources:
        with contextlib.suppress(OSError):
            found = pattern.search(path.read_text())
            if found:
                return found.group(1)
    return "http://deb.debian.org/debian"


def base_tarball(timeout: float = 900) -> Path:
    """The root file system tarball, built with debootstrap once and cached.

    The file name carries a hash of what goes in, so a changed package list rebuilds."""
    key = hashlib.sha256(f"{SUITE} minbase {','.join(include_packages())}".encode()).hexdigest()
    tarball = CACHE / f"base-{SUITE}-{key[:12]}.tar.gz"
    if tarball.is_file() and tarball.stat().st_size > 0:
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rfl-rootfs-", dir="/tmp") as work:
        rootfs = Path(work) / "rootfs"
        run(["debootstrap", "--variant=minbase", f"--include={','.join(include_packages())}",
             SUITE, str(rootfs), _mirror()], timeout=timeout)
        for junk in ["var/cache/apt/archives", "var/lib/apt/lists"]:  # apt's downloads
            for entry in (rootfs / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = tarball.with_suffix(".partial")
        run(["sh", "-c", f'tar --numeric-owner -C "{rootfs}" -cf - . | gzip -1 > "{partial}"'],
            timeout=300)
        partial.rename(tarball)  # atomic: an interrupted build leaves no truncated cache
    return tarball


# --- the engine ----------------------------------------------------------------------------------

def _podman_bridges() -> list[str]:
    out = run(["ip", "-o", "link", "show"], timeout=10).stdout
    return re.findall(r"^\d+:\s+(podman\d+)[:@]", out, re.M)


def _netavark_chains() -> set[tuple[str, str]]:
    chains = set()
    for table in ("filter", "nat"):
        out = run(["iptables", "-t", table, "-S"], timeout=20, check=False).stdout
        chains |= {(table, c) for c in re.findall(r"^-N (NETAVARK\S*)", out, re.M)}
    return chains


def _nft_tables() -> set[str]:
    if not shutil.which("nft"):
        return set()
    out = run(["nft", "list", "tables"], timeout=20, check=False).stdout
    return set(re.findall(r"^table (\S+ \S+)", out, re.M))


class HostState:
    """The host-wide things podman's network backend changes, to restore what was not ours."""

    PATHS = (Path("/run/containers"), Path("/var/lib/containers"))

    def __init__(self) -> None:
        self.ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        self.paths = {p for p in self.PATHS if p.exists()}
        self.chains = _netavark_chains()
        self.tables = _nft_tables()

    def restore(self) -> None:
        if _podman_bridges():  # someone else's podman network: leave the shared state alone
            return
        for table in ("filter", "nat"):
            ours = {c for t, c in _netavark_chains() - self.chains if t == table}
            rules = run(["iptables", "-t", table, "-S"], timeout=20, check=False).stdout
            for rule in rules.splitlines():  # unhook every jump into one of our chains
                words = shlex.split(rule)
                if words[:1] == ["-A"] and "-j" in words and words[words.index("-j") + 1] in ours \
                        and words[1] not in ours:
                    run(["iptables", "-t", table, "-D", *words[1:]], timeout=20, check=False)
            for verb in ("-F", "-X"):
                for chain in ours:
                    run(["iptables", "-t", table, verb, chain], timeout=20, check=False)
        for table in _nft_tables() - self.tables:  # empty tables iptables-nft created
            run(["nft", "delete", "table", *table.split()], timeout=20, check=False)
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != self.ip_forward:
            Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward)
        for path in self.PATHS:
            if path not in self.paths:
                shutil.rmtree(path, ignore_errors=True)

    def changes(self) -> list[str]:
        now = HostState()
        found = [f"iptables chain {t}/{c}" for t, c in sorted(now.chains - self.chains)]
        found += [f"nft table {t}" for t in sorted(now.tables - self.tables)]
        found += [f"{p} created" for p in sorted(now.paths - self.paths)]
        if now.ip_forward != self.ip_forward:
            found.append(f"ip_forward {self.ip_forward} -> {now.ip_forward}")
        return found


class Engine:
    """podman's Docker API on a private socket, with all its state under one temp folder."""

    def __init__(self) -> None:
        self.host = HostState()
        self.base = Path(tempfile.mkdtemp(prefix="rfl-podman-", dir="/tmp"))  # short: socket path
        for sub in ("storage", "run", "tmp", "netconf"):
            (self.base / sub).mkdir()
        (self.base / "storage.conf").write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{self.base}/storage"\n'
            f'runroot = "{self.base}/run"\n')
        self.socket = self.base / "podman.sock"
        self.env = {**os.environ,
                    "CONTAINERS_CONF": str(CONF / "containers.conf"),
                    "CONTAINERS_REGISTRIES_CONF": str(CONF / "registries.conf"),
                    "CONTAINERS_STORAGE_CONF": str(self.base / "storage.conf"),
                    "DOCKER_HOST": f"unix://{self.socket}"}
        self.service: subprocess.Popen | None = None

    @property
    def podman_argv(self) -> list[str]:
        # libpod's temp files and network definitions go under base too.
        return ["podman", "--tmpdir", str(self.base / "tmp"),
                "--network-config-dir", str(self.base / "netconf")]

    def podman(self, *args: str, timeout: float = 120, check: bool = True):
        return run([*self.podman_argv, *args], timeout=timeout, env=self.env, check=check)

    def start(self, timeout: float = 30) -> None:
        log = (self.base / "service.log").open("ab")
        # --time=0: without it the service exits after 5 s without a client.
        self.service = subprocess.Popen(
            [*self.podman_argv, "system", "service", "--time=0", f"unix://{self.socket}"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        wait(self._ping, timeout, "the podman service to answer",
             lambda: (self.base / "service.log").read_text(errors="replace")[-2000:], 0.2)

    def _ping(self) -> bool:
        if self.service is not None and self.service.poll() is not None:
            raise AssertionError("podman system service exited:\n"
                                 + (self.base / "service.log").read_text(errors="replace"))
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(self.socket))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: podman\r\n\r\n")
            return b" 200 " in s.recv(256)
        return False

    def import_image(self, tarball: Path) -> None:
        # PATH puts the mounted virtual environment's console scripts (flower-superlink, ...)
        # first, as an activated venv would.
        path = f"{sys.prefix}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        self.podman("import", "--quiet", "--change", f"ENV PATH={path}",
                    "--change", 'CMD ["/bin/bash"]', str(tarball), IMAGE, timeout=300)

    def stop(self) -> None:
        """Remove every container, network, volume and the image, stop the service, delete
        the state folder and undo the host-wide changes. Never raises: it runs on failures."""
        for args in (["rm", "--all", "--force", "--time", "2"], ["network", "prune", "--force"],
                     ["volume", "prune", "--force"], ["rmi", "--force", IMAGE]):
            with contextlib.suppress(Exception):
                self.podman(*args, timeout=120, check=False)
        if self.service is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.service.pid, signal.SIGTERM)  # its own session: pgid == pid
            try:
                self.service.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.service.pid, signal.SIGKILL)
                self.service.wait(timeout=15)
        for pid in self._our_processes():  # conmon of exec sessions lingers for minutes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.podman("system", "reset", "--force", timeout=120, check=False)
        with contextlib.suppress(Exception):  # whatever fails here, leftovers() names it
            for mount in self._our_mounts():
                run(["umount", "--lazy", mount], timeout=30, check=False)
            shutil.rmtree(self.base, ignore_errors=True)
            self.host.restore()

    def _our_processes(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if str(self.base).encode() in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
        return pids

    def _our_mounts(self) -> list[str]:
        mounts = Path("/proc/mounts").read_text().splitlines()
        return sorted({m.split()[1] for m in mounts if m.split()[1].startswith(str(self.base))},
                      reverse=True)

    def leftovers(self) -> list[str]:
        found = [f"process {pid}" for pid in self._our_processes()]
        if self.service is not None and self.service.poll() is None:
            found.append(f"podman service {self.service.pid}")
        found += [f"mount {m}" for m in self._our_mounts()]
        found += [f"bridge {b}" for b in _podman_bridges()]
        if self.base.exists():
            found.append(str(self.base))
        return found + self.host.changes()


# --- a compose project -----------------------------------------------------------------------

def override(compose_file: Path, image: str, mounts: list[str]) -> str:
    """Only image sources and mounts change: service names, commands, flags, node configs,
    volumes and networks stay those of the real file."""
    services = yaml.safe_load(compose_file.read_text())["services"]
    local = {name: {"image": image, "volumes": [f"{m}:{m}:ro" for m in mounts]}
             for name in services}
    return yaml.safe_dump({"version": "3.8", "services": local}, sort_keys=False)


class Compose:
    """One docker-compose project: the real file, the local override, private data/results."""

    def __init__(self, engine: Engine, workdir: Path, data_dir: Path, results: Path,
                 extra_files: tuple[Path, ...] = ()) -> None:
        self.engine = engine
        self.project = f"rfltest{os.getpid()}"
        self.results = results
        results.mkdir(parents=True, exist_ok=True)
        local = workdir / "docker-compose.local.yml"
        local.write_text(override(ROOT / compose_files.FILES["base"], IMAGE, python_mounts()))
        self.files = [ROOT / compose_files.FILES["base"], *extra_files, local]
        self.services = list(yaml.safe_load(self.files[0].read_text())["services"])
        # Only the file's own variables, and no COMPOSE_* setting of the caller's shell.
        env = {k: v for k, v in engine.env.items()
               if not k.startswith(("COMPOSE_", "ROBUSTFL_"))}
        self.env = {**env, "ROBUSTFL_DATA": os.path.realpath(data_dir),
                    "ROBUSTFL_RESULTS": str(results)}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True):
        files = [a for f in self.files for a in ("-f", str(f))]
        return run(["docker-compose", *files, "-p", self.project, "--ansi", "never", *args],
                   timeout=timeout, env=self.env, check=check)

    def up(self) -> None:
        self("up", "--detach", "--no-build", timeout=300)

    def logs(self, *services: str, tail: int = 60) -> str:
        out = self("logs", "--no-color", "--tail", str(tail), *services, timeout=60, check=False)
        return "\n".join(line for line in out.stdout.splitlines()
                         if "uvicorn.access" not in line and "GET /health" not in line)

    def log(self, service: str) -> str:
        """One service's whole log, straight from podman: polling docker-compose (a Python
        program) every second would take a good part of a core from the run it watches."""
        out = self.engine.podman("logs", f"{self.project}_{service}_1", timeout=60, check=False)
        return out.stdout + out.stderr

    def containers(self) -> list[dict]:
        out = self.engine.podman("ps", "--all", "--format", "json", "--filter",
                                 f"label=com.docker.compose.project={self.project}", timeout=60)
        return json.loads(out.stdout or "[]")

    def check_running(self, allowed_down: tuple[str, ...] = ()) -> None:
        """Fail at once (with its log) when a service container has exited."""
        for c in self.containers():
            service = c.get("Labels", {}).get("com.docker.compose.service", "")
            if c.get("State") != "running" and service not in allowed_down \
                    and c.get("Labels", {}).get("com.docker.compose.oneoff") != "True":
                raise AssertionError(f"service {service} is {c.get('State')}:\n"
                                     f"{self.logs(service, tail=80)}")

    def activated_nodes(self) -> int:
        log = self.log("superlink")
        return len(set(re.findall(r"\[Fleet\.ActivateNode\] Activated node_id=(\d+)", log)))

    def wait_nodes(self, count: int, timeout: float = 120) -> None:
        def ready() -> bool:
            self.check_running()
            return self.activated_nodes() >= count

        nodes = [s for s in self.services if s.startswith("supernode-")]
        wait(ready, timeout, f"{count} SuperNodes to be activated at the SuperLink",
             lambda: self.logs("superlink", *nodes, tail=15), interval=2)

    def cli(self, *argv: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """The flwr CLI in a one-shot container inside the internal network."""
        return self("run", "--rm", "-T", "flwr-cli", *argv, timeout=timeout)

    def cli_json(self, *argv: str, timeout: float = 180) -> dict:
        out = self.cli(*argv, "--format", "json", timeout=timeout).stdout
        try:
            data = json.loads(out[out.index("{"):])
        except ValueError:
            raise AssertionError(f"flwr {argv} printed no JSON:\n{out}")
        assert data.get("success"), f"flwr {argv} failed: {data}"
        return data

    def status(self, run_name: str) -> dict:
        path = self.results / run_name / "status.json"
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())
        return {}

    def run_log(self, run_id: int) -> str:
        """The ServerApp's own log (it reaches the SuperLink, not the container's output)."""
        with contextlib.suppress(Exception):
            return self.cli("flwr", "log", str(run_id), "local", "--show", timeout=90).stdout
        return "(flwr log failed)"

    def wait_run(self, run_id: int, run_name: str, timeout: float,
                 allowed_down: tuple[str, ...] = ()) -> dict:
        """Wait for the run's status.json (on the bind-mounted results folder) to be final."""
        def done() -> bool:
            self.check_running(allowed_down)
            return self.status(run_name).get("status") in ("finished", "failed", "stopped")

        wait(done, timeout, f"run {run_name} to end",
             lambda: f"{self.status(run_name)}\n{self.run_log(run_id)[-4000:]}", interval=3)
        return self.status(run_name)

    def down(self) -> None:
        self("down", "--volumes", "--remove-orphans", "--timeout", "5", timeout=300, check=False)

    def leftovers(self) -> list[str]:
        label = f"label=com.docker.compose.project={self.project}"
        found = [f"container {c.get('Names')}" for c in self.containers()]
        for kind in ("network", "volume"):
            out = self.engine.podman(kind, "ls", "--quiet", "--filter", label, timeout=60)
            found += [f"{kind} {name}" for name in out.stdout.split()]
        return found
