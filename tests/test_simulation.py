"""Integration: the RobustFL app through Flower's real simulation engine (Ray)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import torch

from common.models import build_model

from .conftest import ROOT
from .processes import kill_all, wait_until_gone

pytestmark = pytest.mark.flower

TINY = ["data.eval-limit=100", "train.local-epochs=1", "train.batch-size=32",
        "model.width=8", "eval.attacks=fgsm,pgd5"]


def harness(args, timeout=600, prefix=()):
    """Run `python -m simulation ...` with a marker in its environment, which every process
    it starts inherits (Ray workers included); then check that none of them survives.
    `prefix` goes before the command (e.g. `ip netns exec NAME`)."""
    marker = f"ROBUSTFL_TEST_MARKER=harness-{uuid.uuid4().hex}"
    env = {**os.environ, "ROBUSTFL_TEST_MARKER": marker.split("=", 1)[1]}
    try:
        proc = subprocess.run([*prefix, sys.executable, "-m", "simulation", *args], cwd=ROOT,
                              env=env,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        leftovers = wait_until_gone(marker)
        kill_all(marker)
    assert not leftovers, f"processes left running: {leftovers}"
    return proc


def sets(*pairs):
    return [arg for pair in pairs for arg in ("--set", pair)]


def test_federated_non_iid_run_with_shared_pool_and_a_nan_client(data_dir, tmp_path):
    """Also the robust-aggregation path: FedMedian instead of FedAvg (the deployment tests
    run FedAvg)."""
    out = tmp_path / "runs"
    proc = harness(["run", "--num-supernodes", "3", "--verbose", *sets(
        f"data.dir={data_dir}", f"out.dir={out}", "out.run-name=fed", "fl.num-rounds=2",
        "fl.partition=classes", "fl.classes-per-client=4", "fl.shared-pool=0.1",
        "fl.shared-share=0.5",
        "fl.min-nodes=3", "data.train-limit=600", *TINY, "fl.aggregation=fedmedian",
        "fault.mode=nan", "fault.partitions=2")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run = out / "fed"
    rounds = pd.read_csv(run / "rounds.csv")
    assert rounds["round"].tolist() == [1, 2]
    for column in ("natural_acc", "fgsm_acc", "pgd5_acc", "natural_noise_acc"):
        assert rounds[column].map(math.isfinite).all(), column
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished"
    # Evaluated on 100 of the validation split, never the test set; best.pt is its best round.
    assert (rounds["eval_set"] == "val").all() and (rounds["eval_examples"] == 100).all()
    best = torch.load(run / "best.pt")
    assert best["round"] == rounds.loc[rounds["worst_acc"].idxmax(), "round"]
    assert status["best_round"] == best["round"] and best["metric"] == "worst_acc"

    # The global model moved away from its seeded initialisation and stayed finite,
    # although one client sent NaN weights every round.
    final = torch.load(run / "final.pt")
    torch.manual_seed(0)
    initial = build_model("relu", 8).state_dict()
    assert all(torch.isfinite(v.float()).all() for v in final.values())
    assert any(not torch.equal(final[k], initial[k]) for k in initial)

    clients = pd.read_csv(run / "clients.csv")
    assert sorted(clients["partition_id"].unique()) == [0, 1, 2]
    per_partition = clients.groupby("partition_id")
    assert (per_partition["share_sent"].sum() == 1).all()  # G's share travels once
    assert (per_partition["share_received"].sum() == 1).all()
    assert (clients["shared_examples"] == 30).all()  # alpha 0.5 of G = 60 images
    nan_rows = clients[clients["partition_id"] == 2]
    assert (nan_rows["status"] == "rejected").all()
    assert nan_rows["reason"].str.contains("non-finite").all()
    assert (clients[clients["partition_id"] != 2]["status"] == "ok").all()
    assert rounds["clients_rejected"].tolist() == [1, 1]
    assert "round 2/2" in proc.stderr  # the progress display
    # ... also within a round, drawn from the server's in-round lines (common.progress_lines)
    assert re.search(r"round 1/2 \[[#-]+\] training: [123]/3 clients done \| [\d,]+ images/s",
                     proc.stderr), proc.stderr[-3000:]
    assert "round 2/2 [" in proc.stderr and "] evaluating: central evaluation" in proc.stderr
    assert "Aggregation: SharedPoolFedMedian" in proc.stderr


def test_centralized_baseline_is_one_client_through_the_same_harness(data_dir, tmp_path):
    out = tmp_path / "runs"
    proc = harness(["centralized", *sets(
        f"data.dir={data_dir}", f"out.dir={out}", "out.run-name=central",
        "fl.num-rounds=1", "data.train-limit=500", *TINY)])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    run = out / "central"
    for name in ("config.json", "rounds.csv", "clients.csv", "checkpoint.pt", "final.pt",
                 "status.json"):
        assert (run / name).is_file(), name
    clients = pd.read_csv(run / "clients.csv")
    assert clients["num_examples"].tolist() == [500]  # the whole training subset, no pool
    assert clients["shared_examples"].tolist() == [0]
    config = json.loads((run / "config.json").read_text())["config"]
    assert config["fl.partition"] == "iid" and config["fl.shared-pool"] == 0.0


def test_bad_run_config_is_refused_before_anything_starts(data_dir, tmp_path):
    out = tmp_path / "runs"
    proc = harness(["run", *sets(f"out.dir={out}", "attack.epsilon=0.1", "fl.partition=zipf")],
                   timeout=60)
    assert proc.returncode == 2
    assert "attack.epsilon" in proc.stderr and "fl.partition = 'zipf'" in proc.stderr
    assert "iid, classes, dirichlet" in proc.stderr
    assert not out.exists()


def test_missing_data_is_refused_before_flower_starts(tmp_path):
    proc = harness(["run", *sets(f"out.dir={tmp_path / 'runs'}",
                                 f"data.dir={tmp_path / 'no-data'}")], timeout=60)
    assert proc.returncode == 2
    assert "no-data" in proc.stderr and "does not exist" in proc.stderr


def test_plain_flwr_run_in_local_simulation(data_dir, tmp_path, flower_env, monkeypatch):
    """The documented `flwr run .` path with Flower's own managed local SuperLink."""
    from simulation.engine import free_port

    monkeypatch.setenv("FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", str(free_port()))
    monkeypatch.setenv("FLWR_LOCAL_CONTROL_API_PORT", str(free_port()))
    out = tmp_path / "runs"
    overrides = " ".join([f"data.dir='{data_dir}'", f"out.dir='{out}'", "out.run-name='plain'",
                          "fl.num-rounds=1", "data.train-limit=400", "data.eval-limit=50",
                          "train.local-epochs=1", "eval.attacks='fgsm'"])
    try:
        proc = subprocess.run(
            [str(__import__("pathlib").Path(sys.executable).parent / "flwr"), "run", ".",
             "--stream", "--run-config", overrides,
             "--federation-config", "num-supernodes=2 client-resources-num-cpus=1"],
            cwd=ROOT, capture_output=True, text=True, timeout=600,
            # `flwr run` starts flower-superlink by name: this environment's, activated or not.
            env={**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent),
                                                        os.environ.get("PATH", "")])})
    finally:
        kill_all(f"FLWR_HOME={flower_env}")  # `flwr run` leaves its local SuperLink running
        leftovers = wait_until_gone(f"FLWR_HOME={flower_env}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not leftovers
    rounds = pd.read_csv(out / "plain" / "rounds.csv")
    assert rounds["round"].tolist() == [1] and math.isfinite(rounds["fgsm_acc"][0])
