"""The client key: who a client is across runs, for sampling, seeds, shares and results.

Node ids are new in every run and after every restart; the client key is not. With
fl.client-data=partition it is the node's partition-id. With fl.client-data=local it is a
stable integer derived from the node's node-name, the same on every machine, in every run and
after a restart, so that a returning node is drawn as before and gets the same share of G and
the same seed stream.
"""

from __future__ import annotations

import hashlib
import re

NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or a digit"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a node-name (it ends up in logs, clients.csv and file names)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return f"node-name = {name!r} must be {NAME_RULE} (quote it: node-name='site-a')"
    return None


def of_name(name: str) -> int:
    """The key of a node-name: 63 bits of its SHA-256, below 2**63 so that it travels as a
    MetricRecord integer (a collision among a federation's names is vanishingly unlikely,
    and the server refuses one)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


def client_key(partition_id: int, name: str = "") -> int:
    """The key of a node: of its node-name when it has one (local mode), else its partition."""
    return of_name(name) if name else partition_id
