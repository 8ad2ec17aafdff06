"""docs/deploy.md shows exactly the command lines deploy.commands builds (and the deployment
tests run), so the documentation cannot drift from what is tested."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from deploy import commands

from .conftest import ROOT

DOC = ROOT / "docs" / "deploy.md"
CERTS = commands.Tls(Path("/etc/robustfl/certs"))
SERVER = "10.0.0.5:8000"
DATABASE = "/var/lib/robustfl/state.db"
RUN_CONFIG = "data.dir='/data/cifar10' out.dir='/srv/robustfl/runs' fl.min-nodes=10"
LOCAL_RUN_CONFIG = ("fl.client-data='local' data.dir='/data/silos/server' "
                    "out.dir='/srv/robustfl/runs' fl.min-nodes=10 fl.shared-pool=0.5 "
                    "fl.shared-share=0.1")


def documented_commands() -> list[list[str]]:
    """Every command of the page's bash blocks, continuation lines joined, env vars dropped."""
    text = DOC.read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if not line or line.startswith("#"):
                continue
            tokens = shlex.split(line)
            while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):
                tokens.pop(0)
            found.append(tokens)
    return found


EXPECTED = {
    "superlink-tls": commands.superlink(DATABASE, tls=CERTS, node_auth=True),
    "superlink-insecure": commands.superlink(DATABASE),
    "supernode-tls": commands.supernode(SERVER, 3, 10, "/data/cifar10", tls=CERTS,
                                        auth_key=CERTS.node_key(3)),
    "supernode-insecure": commands.supernode(SERVER, 3, 10, "/data/cifar10"),
    "register": commands.register_node(CERTS.folder / "node-3.pub", "lab"),
    "flwr-run": commands.flwr_run(".", "lab", RUN_CONFIG),
    "flwr-run-stream": commands.flwr_run(".", "lab", RUN_CONFIG, stream=True),
    # Bring your own data (fl.client-data=local; tests/test_cross_silo.py runs these).
    "local-supernode-tls": commands.local_supernode(SERVER, "node-3", "/data/silos/node-3",
                                                    tls=CERTS, auth_key=CERTS.node_key(3)),
    "local-supernode-insecure": commands.local_supernode(SERVER, "node-3",
                                                         "/data/silos/node-3"),
    "local-flwr-run": commands.flwr_run(".", "lab", LOCAL_RUN_CONFIG, stream=True),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_documented_command_is_the_built_one(name):
    assert EXPECTED[name] in documented_commands(), (
        f"docs/deploy.md lacks the {name} command that deploy.commands builds:\n"
        f"{shlex.join(EXPECTED[name])}")


def test_documented_connection_is_the_built_one():
    assert commands.connection("lab", SERVER, CERTS) in DOC.read_text()


def test_every_documented_flower_daemon_command_is_a_built_one():
    built = list(EXPECTED.values())
    for tokens in documented_commands():
        if tokens and tokens[0] in ("flower-superlink", "flower-supernode"):
            assert tokens in built, f"undocumented variant in docs/deploy.md: {shlex.join(tokens)}"
