"""Integration: a real SuperLink and real SuperNodes on 127.0.0.1, running the RobustFL app
submitted with `flwr run`. TLS with node authentication (and its refusal of an unregistered
node) runs in test_cross_silo.py's deployment, the containers' in test_containers.py."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from .deployment import Deployment

pytestmark = pytest.mark.flower


def tiny_run_config(data_dir, out, name, rounds=2, extra=""):
    """A --run-config string for a few-second round; `extra` ("key=value ...") wins.
    Five classes per client, so that the two or three nodes of a test hold all ten."""
    pairs = dict(item.split("=", 1) for item in (
        f"data.dir='{data_dir}' out.dir='{out}' out.run-name='{name}' fl.num-rounds={rounds} "
        "fl.min-nodes=3 fl.node-wait=90.0 data.train-limit=300 data.eval-limit=50 "
        "train.local-epochs=1 eval.attacks='fgsm' fl.partition='classes' "
        "fl.classes-per-client=5 fl.shared-pool=0.1 fl.shared-share=0.5").split())
    pairs.update(item.split("=", 1) for item in extra.split())
    return " ".join(f"{k}={v}" for k, v in pairs.items())


def assert_two_good_rounds(run):
    rounds = pd.read_csv(run / "rounds.csv")
    assert rounds["round"].tolist() == [1, 2]
    assert rounds["natural_acc"].map(math.isfinite).all()
    assert rounds["fgsm_acc"].map(math.isfinite).all()
    assert (rounds["clients_ok"] == 3).all()
    clients = pd.read_csv(run / "clients.csv")
    clients = clients[clients["status"] != "refused"]  # refused nodes: a row, no partition
    assert sorted(clients["partition_id"].unique()) == [0, 1, 2]
    assert (clients.groupby("partition_id")["share_sent"].sum() == 1).all()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    assert (run / "final.pt").is_file()


def test_insecure_superlink_three_supernodes_and_a_misconfigured_one(data_dir, tmp_path):
    out = tmp_path / "runs"
    with Deployment(tmp_path / "deploy") as d:
        d.start_superlink()
        for i in range(3):
            d.start_supernode(f"node-{i}", i, 3, data_dir=data_dir)
        d.start_supernode("bad-node", 5, 3, data_dir=data_dir)  # partition-id out of range
        d.wait_nodes(4)
        run_id = d.submit(tiny_run_config(data_dir, out, "deployed"))
        info = d.wait_run(run_id, timeout=420, run_dir=out / "deployed")
        log = d.run_log(run_id)
        assert info["status"] == "finished:completed", f"{info}\n{log[-4000:]}"
    assert "partition-id = 5 must lie in 0..2" in log  # refused with the key named
    refused = pd.read_csv(out / "deployed" / "clients.csv").query("status == 'refused'")
    assert [r.endswith("partition-id = 5 must lie in 0..2 (num-partitions = 3)")
            for r in refused["reason"]] == [True]  # and recorded
    assert_two_good_rounds(out / "deployed")
