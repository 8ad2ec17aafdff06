import pytest

from client.node import NodeConfigError, NodeSettings


def test_valid_node_config():
    node = NodeSettings.from_node_config({"partition-id": 2, "num-partitions": 5,
                                          "data-dir": "/data"})
    assert (node.partition_id, node.num_partitions, node.data_dir) == (2, 5, "/data")


@pytest.mark.parametrize("config, message", [
    ({"num-partitions": 3}, "lacks 'partition-id'"),
    ({"partition-id": 0}, "lacks 'num-partitions'"),
    ({"partition-id": 3, "num-partitions": 3}, "partition-id = 3 must lie in 0..2"),
    ({"partition-id": -1, "num-partitions": 3}, "must lie in 0..2"),
    ({"partition-id": 0, "num-partitions": 0}, "num-partitions = 0 must be >= 1"),
    ({"partition-id": "0", "num-partitions": 3}, "must be an integer"),
    ({"partition-id": 0, "num-partitions": 2, "data-dir": 5}, "data-dir"),
])
def test_bad_node_configs_are_named(config, message):
    with pytest.raises(NodeConfigError, match=message):
        NodeSettings.from_node_config(config)
