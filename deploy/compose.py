"""The docker-compose files of a RobustFL deployment on one machine, for N SuperNodes.

    python -m deploy.compose               # (re)write docker-compose{,.tls,.gpu}.yml, 3 nodes
    python -m deploy.compose --nodes 5     # the same files for 5 SuperNodes
    python -m deploy.compose --check       # exit 1 if the files differ from what is written
    python -m deploy.compose --client-data local   # each client mounts only its own folder

The checked-in files are this module's output for 3 nodes (tests/test_compose_config.py
checks that), and every Flower command line in them comes from deploy.commands, so the
compose deployment, docs/deploy.md and the process-level tests share one set of flags.

Data ($ROBUSTFL_DATA on the host, /data in the containers): with --client-data partition (the
default) one copy of CIFAR-10 that every executor reads; with --client-data local the folder
`python -m deploy.split` writes: the ServerApp executor mounts its server/, the ClientApp
executor of supernode-<i> only node-<i>/, and each SuperNode is known by node-name node-<i>.

The `flwr-cli` service runs `python -m deploy.compose cli <command...>`: it writes the flwr
CLI's connection "local" (superlink:8000; TLS with $FLWR_CLI_CERTS/ca.crt when set) into
$FLWR_HOME/config.toml and then runs the command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from pathlib import Path

from deploy import commands

ROOT = Path(__file__).resolve().parent.parent
FILES = {"base": "docker-compose.yml", "tls": "docker-compose.tls.yml",
         "gpu": "docker-compose.gpu.yml"}
CLIENT_DATA = ("partition", "local")

SUPERLINK = f"superlink:{commands.SUPERLINK_PORT}"
DATABASE = "/var/lib/flwr/state.db"  # on the named volume superlink-state
DATA, RESULTS, CERTS = "/data", "/results", "/certs"
CONNECTION = "local"  # the flwr CLI connection the flwr-cli service writes
CERTS_HOST = "${ROBUSTFL_CERTS:-./certs}"
TLS = commands.Tls(Path(CERTS))


def flwr_version() -> str:
    """The exact flwr version pyproject.toml pins: the one the tests run and the image holds
    (the Dockerfile installs it; the image tag names it)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        pinned = re.fullmatch(r"flwr(\[[^]]*\])?==([0-9][0-9a-z.]*)", dep.replace(" ", ""))
        if pinned:
            return pinned.group(2)
    raise ValueError("pyproject.toml must pin flwr exactly, e.g. flwr[simulation]==1.42.0")


def supernode(i: int) -> str:
    return f"supernode-{i}"


def clientapp(i: int) -> str:
    return f"superexec-clientapp-{i}"


# --- Flower command lines (all from deploy.commands, except flower-superexec) ---------------

def superlink_cmd(tls: bool) -> list[str]:
    return commands.superlink(DATABASE, host="0.0.0.0", tls=TLS if tls else None,
                              node_auth=tls, isolation="process")


def supernode_cmd(i: int, nodes: int, tls: bool, client_data: str = "partition") -> list[str]:
    options = dict(tls=TLS if tls else None, auth_key=TLS.node_key(i) if tls else None,
                   host="0.0.0.0", isolation="process")
    if client_data == "local":
        return commands.local_supernode(SUPERLINK, commands.node_name(i), DATA, **options)
    return commands.supernode(SUPERLINK, i, nodes, DATA, **options)


def data_mount(client_data: str, folder: str) -> str:
    """The read-only data mount of an executor: all of $ROBUSTFL_DATA (partition mode), or
    its own folder of deploy.split's output (local mode: server or node-<i>)."""
    host = "${ROBUSTFL_DATA:-./data}" + (f"/{folder}" if client_data == "local" else "")
    return f"{host}:{DATA}:ro"


def superexec_cmd(runtime_api: str, tls: bool) -> list[str]:
    """An executor: it polls a Runtime API for tasks and runs each ServerApp/ClientApp."""
    return ["flower-superexec", *(["--root-certificates", str(TLS.ca)] if tls else ["--insecure"]),
            "--runtime-api-address", runtime_api]


def serverapp_cmd(tls: bool) -> list[str]:
    return superexec_cmd(SUPERLINK, tls)  # the SuperLink's TLS covers its Runtime API too


def clientapp_cmd(i: int) -> list[str]:
    # The SuperNode's Runtime API stays plain HTTP on the internal network in both variants:
    # commands.supernode has no --ssl-* flags for it (see docs/deploy-containers.md).
    return superexec_cmd(f"{supernode(i)}:{commands.SUPERNODE_PORT}", tls=False)


# --- rendering -------------------------------------------------------------------------------

def _flow(items: list[str], indent: int, width: int = 96) -> str:
    """A YAML flow sequence (JSON strings), wrapped between flag/value pairs."""
    groups: list[list[str]] = []
    for item in items:
        if groups and not item.startswith("-") and groups[-1][0].startswith("-") \
                and len(groups[-1]) == 1:
            groups[-1].append(item)  # the value of the flag before it
        else:
            groups.append([item])
    lines, line = [], "["
    for k, group in enumerate(groups):
        piece = ", ".join(json.dumps(i) for i in group) + ("]" if k == len(groups) - 1 else ", ")
        if line != "[" and indent + len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = " "
        line += piece
    lines.append(line)
    return ("\n" + " " * indent).join(lines)


def _cmd(argv: list[str]) -> str:
    return "    command: " + _flow(argv, 13)


def _mounts(entries: list[str]) -> str:
    return "    volumes:\n" + "".join(f"      - {e}\n" for e in entries)


def _cpus(who: str) -> str:
    """A CPU limit and as many torch/OpenMP threads: threads beyond the limit only wait for
    quota (a 2-round test run took half the CPU time with 1 thread per 1-CPU executor)."""
    return (f"    environment:\n      <<: *robustfl-env\n"
            f'      OMP_NUM_THREADS: "${{ROBUSTFL_{who}_THREADS:-1}}"\n'
            "    deploy:\n      resources:\n        limits:\n"
            f'          cpus: "${{ROBUSTFL_{who}_CPUS:-1.0}}"\n')


def arguments(nodes: int, client_data: str) -> str:
    """The generator's arguments that make these files."""
    return f"--nodes {nodes}" + (" --client-data local" if client_data == "local" else "")


def _header(nodes: int, what: str, client_data: str) -> str:
    return (f"# {what}\n# Generated by `python -m deploy.compose {arguments(nodes, client_data)}`"
            ": edit deploy/compose.py, not this file.\n# Usage: docs/deploy-containers.md\n"
            'version: "3.8"\n')


def render_base(nodes: int, client_data: str = "partition") -> str:
    flwr = flwr_version()
    local = client_data == "local"
    out = _header(nodes, f"RobustFL on one machine: a SuperLink, a ServerApp executor and "
                         f"{nodes} SuperNodes,\n# each with its ClientApp executor."
                  + ("\n# fl.client-data=local: $ROBUSTFL_DATA is the output of "
                     "`python -m deploy.split`." if local else ""), client_data)
    server_data = data_mount(client_data, "server")
    local_note = ("\n  # fl.client-data=local: it mounts only server/ of deploy.split's "
                  "output." if local else "")
    out += f"""
x-robustfl: &robustfl
  # One image for every service: Python 3.11, flwr {flwr} and the project's dependencies
  # (Dockerfile). The app code itself arrives with each `flwr run` (a FAB).
  image: ${{ROBUSTFL_IMAGE:-robustfl:flwr-{flwr}}}
  build: .
  environment: &robustfl-env
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION: "1"  # dependencies are in the image
    FLWR_TELEMETRY_ENABLED: "0"
    FLWR_DISABLE_UPDATE_CHECK: "1"
    PYTHONUNBUFFERED: "1"
  networks: [flower]

services:
  superlink:
    <<: *robustfl
{_cmd(superlink_cmd(tls=False))}
{_mounts([f"superlink-state:{Path(DATABASE).parent}"])}
  # Runs each ServerApp: it reads CIFAR-10 (shared pool, central evaluation) and writes the
  # results to /results/<out.run-name>/.{local_note}
  superexec-serverapp:
    <<: *robustfl
    depends_on: [superlink]
{_cmd(serverapp_cmd(tls=False))}
{_mounts([server_data, f"${{ROBUSTFL_RESULTS:-./results}}:{RESULTS}"])}{_cpus("SERVER")}"""
    for i in range(nodes):
        reads = (f"only its own images, {commands.node_name(i)}/" if local
                 else f"partition {i} of the data")
        out += f"""
  {supernode(i)}:
    <<: *robustfl
    depends_on: [superlink]
{_cmd(supernode_cmd(i, nodes, tls=False, client_data=client_data))}

  # Runs the ClientApp of {supernode(i)}: it reads {reads} under /data.
  {clientapp(i)}:
    <<: *robustfl
    depends_on: [{supernode(i)}]
{_cmd(clientapp_cmd(i))}
{_mounts([data_mount(client_data, commands.node_name(i))])}{_cpus("CLIENT")}"""
    out += f"""
  # The flwr CLI inside the network (the network is internal: no published port).
  #   docker compose run --rm flwr-cli flwr run /app {CONNECTION} --stream --run-config "..."
  flwr-cli:
    <<: *robustfl
    profiles: ["cli"]
    environment:
      <<: *robustfl-env
      FLWR_HOME: /tmp/flwr-cli
    working_dir: /app
{_mounts([".:/app:ro"])}    entrypoint: ["python", "-m", "deploy.compose", "cli"]
    command: ["flwr", "list", "{CONNECTION}"]

networks:
  flower:
    internal: true  # no route out: services reach each other by name, nothing else

volumes:
  superlink-state: {{}}
"""
    return out


def _cert(name: str) -> str:
    return f"{CERTS_HOST}/{name}:{CERTS}/{name}:ro"


def render_tls(nodes: int, client_data: str = "partition") -> str:
    out = _header(nodes, "Overlay: TLS on the SuperLink (all its APIs) and SuperNode "
                         "authentication.\n# Credentials: python -m deploy.certs --out certs "
                         f"--san superlink --nodes {nodes}", client_data)
    out += f"""
services:
  superlink:
{_cmd(superlink_cmd(tls=True))}
{_mounts([_cert("ca.crt"), _cert("server.pem"), _cert("server.key")])}
  superexec-serverapp:
{_cmd(serverapp_cmd(tls=True))}
{_mounts([_cert("ca.crt")])}"""
    for i in range(nodes):
        out += f"""
  {supernode(i)}:
{_cmd(supernode_cmd(i, nodes, tls=True, client_data=client_data))}
{_mounts([_cert("ca.crt"), _cert(f"node-{i}")])}"""
    pubs = [_cert(f"node-{i}.pub") for i in range(nodes)]
    out += f"""
  # Registers the SuperNodes' public keys: flwr supernode register /certs/node-0.pub {CONNECTION}
  flwr-cli:
    environment:
      FLWR_CLI_CERTS: {TLS.folder}
{_mounts([_cert("ca.crt"), *pubs])}"""
    return out


def render_gpu(nodes: int, client_data: str = "partition") -> str:
    out = _header(nodes, "Overlay: an NVIDIA GPU for each ClientApp executor, in an image with "
                         "the CUDA build of\n# torch (PyPI's default wheels: CUDA 13; older "
                         "drivers: ROBUSTFL_TORCH_INDEX=\n# "
                         "https://download.pytorch.org/whl/cu126). Needs the NVIDIA Container "
                         "Toolkit on the host.", client_data)
    gpu = f"""    image: ${{ROBUSTFL_GPU_IMAGE:-robustfl:flwr-{flwr_version()}-cuda}}
    build:
      context: .
      args:
        TORCH_INDEX: ${{ROBUSTFL_TORCH_INDEX:-https://pypi.org/simple}}
    deploy:
      resources:
        reservations:
          devices:
            - driver: nvidia
              count: 1  # several GPUs: device_ids: ["<n>"] per executor instead
              capabilities: [gpu]
"""
    out += "\nservices:\n"
    for i in range(nodes):
        out += f"  {clientapp(i)}:\n{gpu}\n"
    out += "  # Central evaluation on a GPU too: uncomment.\n  # superexec-serverapp:\n"
    out += "".join(f"  # {line[2:]}\n" if line else "\n" for line in gpu.splitlines())
    return out


def render(nodes: int, client_data: str = "partition") -> dict[str, str]:
    if nodes < 1:
        raise ValueError("--nodes must be at least 1")
    if client_data not in CLIENT_DATA:
        raise ValueError(f"--client-data must be one of {', '.join(CLIENT_DATA)}")
    return {FILES["base"]: render_base(nodes, client_data),
            FILES["tls"]: render_tls(nodes, client_data),
            FILES["gpu"]: render_gpu(nodes, client_data)}


# --- the flwr-cli entrypoint -----------------------------------------------------------------

def cli(argv: list[str]) -> int:
    """Write the connection for the flwr CLI, then become the given command."""
    home = Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    certs = os.environ.get("FLWR_CLI_CERTS")  # a folder holding ca.crt
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        + commands.connection(CONNECTION, os.environ.get("FLWR_CLI_SUPERLINK", SUPERLINK),
                              commands.Tls(Path(certs)) if certs else None))
    if not argv:
        return 0
    os.execvp(argv[0], argv)
    return 127  # not reached


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cli"]:
        return cli(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m deploy.compose", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3, help="SuperNodes (default 3)")
    parser.add_argument("--dir", type=Path, default=ROOT,
                        help="where the files go (default: the repository; relative paths in "
                             "them resolve against this folder)")
    parser.add_argument("--client-data", choices=CLIENT_DATA, default="partition",
                        help="partition (default): every client mounts one copy of CIFAR-10; "
                             "local: each mounts only its own deploy.split folder")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a file differs")
    args = parser.parse_args(argv)
    try:
        files = render(args.nodes, args.client_data)
    except ValueError as exc:
        parser.error(str(exc))
    stale = [name for name, text in files.items()
             if not (args.dir / name).is_file() or (args.dir / name).read_text() != text]
    if args.check:
        for name in stale:
            print(f"{args.dir / name} is not the output of "
                  f"{arguments(args.nodes, args.client_data)}", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        (args.dir / name).write_text(files[name])
        print(args.dir / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
