"""The node config a SuperNode is started with, validated for the run's fl.client-data.

partition: partition-id, num-partitions and an optional data-dir (a copy of the whole data set,
           of which the node trains on its partition);
local:     node-name (unique in the federation) and data-dir (the node's own images only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.client_key import client_key, name_problem


class NodeConfigError(ValueError):
    """The SuperNode's --node-config is missing a key or has a bad value."""


EXAMPLE = "--node-config \"partition-id=0 num-partitions=10 data-dir='/data/cifar10'\""
LOCAL_EXAMPLE = "--node-config \"node-name='site-a' data-dir='/data/site-a'\""


@dataclass(frozen=True)
class NodeSettings:
    partition_id: int  # 0 in local mode
    num_partitions: int  # 0 in local mode
    data_dir: str  # "" = use the run config's data.dir (partition mode only)
    name: str = ""  # node-name, local mode only

    @property
    def local(self) -> bool:
        return bool(self.name)

    @property
    def key(self) -> int:
        """The client key (common.client_key): partition-id, or the key of node-name."""
        return client_key(self.partition_id, self.name)

    @property
    def label(self) -> str:
        """How logs and messages name this node."""
        return f"node {self.name!r}" if self.local else f"partition {self.partition_id}"

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any],
                         client_data: str = "partition") -> NodeSettings:
        data_dir = node_config.get("data-dir", "")
        if not isinstance(data_dir, str):
            raise NodeConfigError(f"node config data-dir = {data_dir!r} must be a string "
                                  "path (quote it: data-dir='/data')")
        if client_data == "local":
            return cls._local(node_config, data_dir)

        def integer(key: str) -> int:
            if key not in node_config:
                local = (" (this node has a node-name: it is set up for fl.client-data=local, "
                         "the run uses partition)" if "node-name" in node_config else "")
                raise NodeConfigError(
                    f"node config lacks {key!r}{local}; start the SuperNode with {EXAMPLE}"
                )
            value = node_config[key]
            if isinstance(value, bool) or not isinstance(value, int):
                raise NodeConfigError(
                    f"node config {key} = {value!r} must be an integer; e.g. {EXAMPLE}"
                )
            return value

        pid, n = integer("partition-id"), integer("num-partitions")
        if n < 1:
            raise NodeConfigError(f"node config num-partitions = {n} must be >= 1")
        if not 0 <= pid < n:
            raise NodeConfigError(
                f"node config partition-id = {pid} must lie in 0..{n - 1} "
                f"(num-partitions = {n})"
            )
        return cls(pid, n, data_dir)

    @classmethod
    def _local(cls, node_config: dict[str, Any], data_dir: str) -> NodeSettings:
        """fl.client-data=local: a name that identifies the node across runs, and the folder
        that holds its own images (never the run's data.dir: that is the server's)."""
        if "node-name" not in node_config:
            raise NodeConfigError(
                "node config lacks 'node-name', which fl.client-data=local needs (a name for "
                f"this node, unique in the federation); start the SuperNode with {LOCAL_EXAMPLE}"
            )
        name = node_config["node-name"]
        problem = name_problem(name)
        if problem:
            raise NodeConfigError(f"node config {problem}")
        if not data_dir:
            raise NodeConfigError(
                f"node config of node {name!r} lacks 'data-dir': with fl.client-data=local a "
                "node trains on exactly the images in its own folder; start the SuperNode "
                f"with {LOCAL_EXAMPLE}"
            )
        return cls(0, 0, data_dir, name)
