"""The SuperLink, SuperNode and flwr command lines of a RobustFL deployment (Flower 1.42).

docs/deploy.md shows exactly these command lines, the docker-compose files use the same flags,
and the deployment tests start their processes with them; tests/test_deploy_docs.py checks
that the documentation matches these builders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SUPERLINK_PORT = 8000  # Fleet, Control and ServerAppIO APIs share this one HTTP(S) port
SUPERNODE_PORT = 9094  # a SuperNode's own runtime API (ClientApp executor); local by default


@dataclass(frozen=True)
class Tls:
    """Where the credentials made by `python -m deploy.certs` live."""

    folder: Path

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def key(self) -> Path:
        return self.folder / "server.key"

    def node_key(self, index: int | str) -> Path:
        return self.folder / (f"node-{index}" if isinstance(index, int) else index)


def superlink(database: str, host: str = "0.0.0.0", port: int = SUPERLINK_PORT,
              tls: Tls | None = None, node_auth: bool = False,
              isolation: str = "subprocess") -> list[str]:
    """flower-superlink with persistent state, TLS (or --insecure) and optional node auth."""
    cmd = ["flower-superlink"]
    if tls is None:
        if node_auth:
            raise ValueError("node authentication needs TLS")
        cmd.append("--insecure")
    else:
        cmd += ["--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert),
                "--ssl-keyfile", str(tls.key)]
        if node_auth:
            cmd.append("--enable-supernode-auth")
    return cmd + ["--isolation", isolation, "--host", host, "--port", str(port),
                  "--database", database, "--disable-runtime-dependency-installation"]


def node_config(partition_id: int, num_partitions: int, data_dir: str | None = None) -> str:
    """fl.client-data=partition: the node's partition of the data set in data_dir."""
    text = f"partition-id={partition_id} num-partitions={num_partitions}"
    return text + (f" data-dir='{data_dir}'" if data_dir else "")


def node_name(i: int) -> str:
    """Node i's node-name and folder in the output of deploy.split and in the compose files
    (its credentials from deploy.certs are node-<i> too)."""
    return f"node-{i}"


def local_node_config(name: str, data_dir: str) -> str:
    """fl.client-data=local: the node's name and the folder of its own images."""
    return f"node-name='{name}' data-dir='{data_dir}'"


def supernode(superlink_address: str, partition_id: int, num_partitions: int,
              data_dir: str | None = None, port: int = SUPERNODE_PORT,
              tls: Tls | None = None, auth_key: Path | None = None,
              host: str | None = None, isolation: str = "subprocess") -> list[str]:
    """flower-supernode for one data silo (its partition and where its data lives)."""
    return _supernode(superlink_address, node_config(partition_id, num_partitions, data_dir),
                      port, tls, auth_key, host, isolation)


def local_supernode(superlink_address: str, name: str, data_dir: str,
                    port: int = SUPERNODE_PORT, tls: Tls | None = None,
                    auth_key: Path | None = None, host: str | None = None,
                    isolation: str = "subprocess") -> list[str]:
    """flower-supernode for a silo that holds only its own images (fl.client-data=local)."""
    return _supernode(superlink_address, local_node_config(name, data_dir), port, tls,
                      auth_key, host, isolation)


def _supernode(superlink_address: str, config: str, port: int, tls: Tls | None,
               auth_key: Path | None, host: str | None, isolation: str) -> list[str]:
    cmd = ["flower-supernode"]
    cmd += ["--insecure"] if tls is None else ["--root-certificates", str(tls.ca)]
    if auth_key is not None:
        cmd += ["--auth-supernode-private-key", str(auth_key)]
    cmd += ["--superlink", superlink_address, "--isolation", isolation]
    if host:  # only for an executor in another container: the runtime API must listen there
        cmd += ["--host", host]
    return cmd + ["--port", str(port), "--node-config", config]


def connection(name: str, address: str, tls: Tls | None = None) -> str:
    """The [superlink.<name>] entry of $FLWR_HOME/config.toml for the flwr CLI."""
    lines = [f"[superlink.{name}]", f'address = "{address}"']
    lines.append(f'root-certificates = "{tls.ca}"' if tls else "insecure = true")
    return "\n".join(lines) + "\n"


def register_node(public_key: Path, connection_name: str) -> list[str]:
    return ["flwr", "supernode", "register", str(public_key), connection_name,
            "--format", "json"]


def flwr_run(app_dir: str, connection_name: str, run_config: str | None = None,
             stream: bool = False) -> list[str]:
    """Submit the app; without --stream it returns at once with the run id (JSON)."""
    cmd = ["flwr", "run", app_dir, connection_name]
    if run_config:
        cmd += ["--run-config", run_config]
    return cmd + (["--stream"] if stream else ["--format", "json"])
