"""The node config a SuperNode is started with, validated."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class NodeConfigError(ValueError):
    """The SuperNode's --node-config is missing a key or has a bad value."""


EXAMPLE = "--node-config \"partition-id=0 num-partitions=10 data-dir='/data/cifar10'\""


@dataclass(frozen=True)
class NodeSettings:
    partition_id: int
    num_partitions: int
    data_dir: str  # "" = use the run config's data.dir

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> NodeSettings:
        def integer(key: str) -> int:
            if key not in node_config:
                raise NodeConfigError(
                    f"node config lacks {key!r}; start the SuperNode with {EXAMPLE}"
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
        data_dir = node_config.get("data-dir", "")
        if not isinstance(data_dir, str):
            raise NodeConfigError(f"node config data-dir = {data_dir!r} must be a string "
                                  "path (quote it: data-dir='/data')")
        return cls(pid, n, data_dir)
