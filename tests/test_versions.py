"""One Flower version is tested and shipped: the one pyproject.toml pins exactly. The Dockerfile
(tests/test_compose_config.py runs its requirement step), the compose image tag, the deployment
docs and the installed flwr (which the container tests mount into their containers) must all be
that version."""

from __future__ import annotations

import re
from importlib import metadata

from deploy import compose

from .conftest import ROOT

# Files that name the shipped flwr version (docs/performance.md names the versions it measured).
NAMING_FILES = ["Dockerfile", "docker-compose.yml", "docker-compose.gpu.yml",
                "docker-compose.tls.yml", "docs/deploy.md", "docs/deploy-containers.md",
                "deploy/commands.py", "deploy/compose.py", "README.md"]
VERSION = re.compile(r"(?:flwr|[Ff]lower)[ =-]{1,2}(\d+\.\d+(?:\.\d+)?)")


def test_pyproject_pins_one_exact_flwr_version():
    assert re.fullmatch(r"\d+\.\d+\.\d+", compose.flwr_version())


def test_every_named_flwr_version_is_the_pinned_one():
    pin = compose.flwr_version()
    for name in NAMING_FILES:
        for found in VERSION.findall((ROOT / name).read_text()):
            assert found == pin or pin.startswith(found + "."), (
                f"{name} names flwr {found}, but pyproject.toml pins {pin}")


def test_the_tests_run_the_pinned_flwr():
    """The container tests mount this environment into their containers: what they and the
    process tests run is what the image ships."""
    installed = metadata.version("flwr")
    assert installed == compose.flwr_version(), (
        f"flwr {installed} is installed, pyproject.toml pins {compose.flwr_version()}: "
        "run `pip install -e .`")
