"""Cross-silo deployment (fl.client-data=local): SuperNodes that hold only their own images.

- deploy.split cuts CIFAR-10 into disjoint node folders and a server folder, with a manifest;
- a node's own folder is loaded with the checks of CIFAR-10's batches, and every problem
  names the node and the file;
- the strategy knows local nodes by node-name: a taken name is refused until its holder
  leaves, and shares, seeds and draws follow the name, not the node id;
- the compose generator mounts one folder per client, and docs/deploy.md shows the commands;
- a real SuperLink and real SuperNodes, TLS and node authentication on, each node with only
  its own deploy.split folder: the run finishes, a reused name and a truncated batch file are
  refused and recorded, and a node whose key the SuperLink does not know never gets in.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from flwr.app import ConfigRecord, Error, Message, Metadata, MetricRecord, RecordDict

from client import local_data
from client.node import NodeConfigError, NodeSettings
from common import protocol
from common.client_key import of_name
from common.config import ConfigError, ExperimentConfig
from common.data import (BATCH_DIR, DataError, load_cifar10, load_own_images, write_batch,
                         write_npz)
from common.models import build_model
from common.packing import Layout
from common.partition import PartitionError, check_split, shared_plan
from deploy import commands
from deploy import compose as gen
from deploy import split as splitter
from deploy.certs import generate
from server.strategy import make_strategy
from simulation.engine import free_port

from .deployment import Deployment
from .test_compose_config import flags, needs_compose, resolved
from .test_deploy_docs import documented_commands
from .test_deployment import tiny_run_config

LIMIT = 360  # training images a test split uses: 70 for the server, ~97 per node


def fingerprints(x: torch.Tensor | np.ndarray) -> list[bytes]:
    """One digest per image: the same image in two folders has the same digest."""
    x = x.numpy() if isinstance(x, torch.Tensor) else x
    return [hashlib.sha1(np.ascontiguousarray(img).tobytes()).digest() for img in x]


@pytest.fixture(scope="module")
def silos(data_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("split") / "silos"
    return out, splitter.split(data_dir, out, 3, "iid", train_limit=LIMIT)


# --- deploy.split ----------------------------------------------------------------------------

@pytest.mark.parametrize("scheme, fmt, options", [
    ("iid", "cifar", {}),
    ("classes", "npz", {"classes_per_client": 4}),
    ("dirichlet", "cifar", {"dirichlet_alpha": 0.3, "min_partition_size": 5}),
])
def test_split_writes_disjoint_folders_of_source_images_and_a_true_manifest(
        data_dir, cifar, tmp_path, scheme, fmt, options):
    out = tmp_path / "silos"
    manifest = splitter.split(data_dir, out, 4, scheme, train_limit=LIMIT, fmt=fmt, **options)
    assert json.loads((out / splitter.MANIFEST).read_text()) == manifest
    label_of = dict(zip(fingerprints(cifar.train_x), cifar.train_y.tolist()))
    seen: list[bytes] = []
    for i, node in enumerate(manifest["nodes"]):
        assert node["name"] == node["folder"] == f"node-{i}"
        x, y = load_own_images(out / node["folder"])  # what the node will train on
        prints = fingerprints(x)
        assert [label_of[p] for p in prints] == y.tolist()  # source images, source labels
        assert node["images"] == len(y) > 0
        assert node["per_class"] == np.bincount(y.numpy(), minlength=10).tolist()
        if scheme == "classes":
            assert sum(c > 0 for c in node["per_class"]) <= 4
        seen += prints
    server = load_cifar10(out / splitter.SERVER)
    assert server.train_y.numel() == manifest["server"]["train_images"] > 0
    assert manifest["server"]["per_class"] == np.bincount(server.train_y.numpy(),
                                                          minlength=10).tolist()
    assert len(set(manifest["server"]["per_class"])) == 1  # class-balanced, for G
    assert torch.equal(server.test_x, cifar.test_x) and torch.equal(server.test_y, cifar.test_y)
    seen += fingerprints(server.train_x)
    assert len(seen) == len(set(seen)) == LIMIT  # disjoint, and none lost


def test_split_refuses_bad_requests_and_leaves_the_output_alone(data_dir, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    cases = [
        (["--out", str(taken), "--clients", "3", "--partition", "iid"], "not an empty folder"),
        (["--out", str(tmp_path / "a"), "--clients", "3", "--partition", "classes",
          "--classes-per-client", "3"], "--classes-per-client to at least 4"),
        (["--out", str(tmp_path / "b"), "--clients", "3", "--partition", "iid",
          "--server-fraction", "0.01", "--train-limit", "100"], "raise --server-fraction"),
        (["--out", str(tmp_path / "c"), "--clients", "3", "--partition", "iid",
          "--server-fraction", "1"], "strictly between 0 and 1"),
    ]
    for argv, message in cases:
        assert splitter.main(["--data-dir", str(data_dir), *argv]) == 2
        assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no partial folders
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]


# --- a node's own folder: loaded with checks, refused with the node and the file named ------

def _batch(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    (folder / BATCH_DIR).mkdir(parents=True, exist_ok=True)
    path = folder / BATCH_DIR / "data_batch_1"
    write_batch(path, x, y)
    return path


def _truncated(folder, x, y):
    path = _batch(folder, x, y)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _npz(folder, **arrays):
    path = folder / "own.npz"
    np.savez(path, **arrays)
    return path


IMAGES = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
LABELS = np.arange(6)
BROKEN_FOLDERS = {
    "missing": (lambda f: f / "nowhere", "does not exist"),
    "empty": (lambda f: f, "holds no training images"),
    "truncated batch": (lambda f: _truncated(f, IMAGES, LABELS), "is corrupt or truncated"),
    "label 10 in a batch": (lambda f: _batch(f, IMAGES, np.array([0, 1, 2, 3, 4, 10])),
                            "labels must lie in 0..9"),
    "channels-first npz": (lambda f: _npz(f, x=IMAGES, y=LABELS), "channels first"),
    "float npz": (lambda f: _npz(f, x=IMAGES.transpose(0, 2, 3, 1) / 255.0, y=LABELS),
                  "x must be uint8 of shape (N, 32, 32, 3), found float64"),
    "npz label -1": (lambda f: _npz(f, x=IMAGES.transpose(0, 2, 3, 1), y=LABELS - 1),
                     "labels must lie in 0..9, found -1..4"),
    "npz float labels": (lambda f: _npz(f, x=IMAGES.transpose(0, 2, 3, 1), y=LABELS + 0.5),
                         "y must hold one integer label per image"),
    "npz without y": (lambda f: _npz(f, x=IMAGES.transpose(0, 2, 3, 1)), "not x and y"),
    "truncated npz": (lambda f: _cut(_npz(f, x=IMAGES.transpose(0, 2, 3, 1), y=LABELS)),
                      "is corrupt or truncated"),
    "both layouts": (lambda f: (_batch(f, IMAGES, LABELS), _npz(f, x=IMAGES, y=LABELS), f)[2],
                     "keep one of the two layouts"),
}


def _cut(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:-40])
    return path


@pytest.mark.parametrize("case", BROKEN_FOLDERS)
def test_a_broken_own_folder_is_refused_naming_the_node_and_the_file(tmp_path, case):
    make, message = BROKEN_FOLDERS[case]
    made = make(tmp_path)
    data_dir = tmp_path / "nowhere" if case == "missing" else tmp_path
    node = NodeSettings.from_node_config({"node-name": "site-b", "data-dir": str(data_dir)},
                                         "local")
    with pytest.raises(DataError) as err:
        local_data.own_images(node)
    text = str(err.value)
    assert text.startswith("node 'site-b': ") and message in text
    assert str(made) in text  # the file (or the folder) at fault
    assert "deploy.split" in text  # and what a node's folder must hold


def test_a_good_own_folder_in_either_layout_is_all_the_node_trains_on(tmp_path):
    hwc = IMAGES.transpose(0, 2, 3, 1)
    _batch(tmp_path / "a", IMAGES[:4], LABELS[:4])
    write_batch(tmp_path / "a" / BATCH_DIR / "data_batch_2", IMAGES[4:], LABELS[4:])
    (tmp_path / "b").mkdir()
    write_npz(tmp_path / "b" / "train.npz", IMAGES, LABELS)  # what deploy.split writes
    (tmp_path / "c").mkdir()
    _npz(tmp_path / "c", x=hwc, y=LABELS)  # what a user saves
    for folder in ("a", "b", "c"):
        node = NodeSettings.from_node_config({"node-name": "s", "data-dir": str(tmp_path / folder)},
                                             "local")
        cfg = ExperimentConfig.from_flat({"fl.client-data": "local"})
        x, y = local_data.training_images(cfg, node)
        assert torch.equal(x, torch.from_numpy(IMAGES)) and y.tolist() == LABELS.tolist()


@pytest.mark.parametrize("config, message", [
    ({"data-dir": "/d"}, "lacks 'node-name', which fl.client-data=local needs"),
    ({"node-name": "", "data-dir": "/d"}, "node-name = '' must be 1 to 64 letters"),
    ({"node-name": "a b", "data-dir": "/d"}, "node-name = 'a b' must be"),
    ({"node-name": 3, "data-dir": "/d"}, "node-name = 3 must be"),
    ({"node-name": "site-a"}, "node 'site-a' lacks 'data-dir'"),
])
def test_a_local_node_config_needs_a_name_and_its_own_folder(config, message):
    with pytest.raises(NodeConfigError, match=message):
        NodeSettings.from_node_config(config, "local")


def test_a_local_node_config_needs_no_partition_and_a_partition_run_says_why_it_is_refused():
    node = NodeSettings.from_node_config({"node-name": "site-a", "data-dir": "/d"}, "local")
    assert (node.local, node.name, node.data_dir, node.key) == (True, "site-a", "/d",
                                                                 of_name("site-a"))
    with pytest.raises(NodeConfigError, match="set up for fl.client-data=local"):
        NodeSettings.from_node_config({"node-name": "site-a", "data-dir": "/d"}, "partition")


def test_the_client_key_of_a_name_is_stable_and_fits_a_metric():
    # Shares of G and seed streams of returning nodes hang on this value: it must not change
    # between versions (or a resumed run would give its nodes other shares).
    assert of_name("node-0") == 4482878296563619645
    keys = {of_name(f"site-{i}") for i in range(1000)}
    assert len(keys) == 1000 and max(keys) < 2**63


def test_local_client_data_is_refused_where_it_cannot_work():
    local = ExperimentConfig.from_flat({"fl.client-data": "local"})
    with pytest.raises(PartitionError, match="simulation's nodes share data.dir"):
        check_split(local, 3)  # the harness's preflight
    with pytest.raises(ConfigError, match="fl.fraction-evaluate=0"):
        ExperimentConfig.from_flat({"fl.client-data": "local", "fl.fraction-evaluate": 0.5})


# --- the strategy: known by name, a taken name refused, shares and draws by name ----------------

def hello_sent(node: int) -> Message:
    return Message(RecordDict({protocol.CONFIG: ConfigRecord({})}),
                   metadata=Metadata(run_id=1, message_id=f"hello-{node}", src_node_id=1,
                                     dst_node_id=node, reply_to_message_id="", group_id="",
                                     created_at=time.time(), ttl=60.0,
                                     message_type=protocol.HELLO))


def hello_reply(node: int, name: str, examples: int = 100, problem: str = "") -> Message:
    sent = hello_sent(node)
    said = {"node-name": name, **({"problem": problem} if problem else {})}
    content = RecordDict({protocol.NODE: ConfigRecord(said)})
    if not problem:
        content[protocol.METRICS] = MetricRecord({"partition-id": of_name(name),
                                                  "num-partitions": 0, "num-examples": examples})
    return Message(content, reply_to=sent)


@pytest.fixture
def local_strategy(cifar):
    cfg = ExperimentConfig.from_flat({"fl.client-data": "local", "fl.shared-pool": 0.1,
                                      "fl.shared-share": 0.3, "fl.min-nodes": 1,
                                      "fl.fraction-train": 0.5, "data.val-size": 0})
    x, y = cifar.train_x[:1000].numpy(), cifar.train_y[:1000].numpy()
    return make_strategy(cfg, x, y, shared_plan(cfg, y),
                         Layout.of(build_model("relu", 8).state_dict()))


def test_a_taken_node_name_is_refused_until_its_holder_leaves(local_strategy):
    s = local_strategy
    for node, name in [(11, "site-a"), (12, "site-b"), (13, "site-c")]:
        s.registry.greet(node, hello_reply(node, name), connected={11, 12, 13, 14, 15})
    s.registry.greet(14, hello_reply(14, "site-b", examples=7), connected={11, 12, 13, 14, 15})
    s.registry.greet(15, hello_reply(15, "site-d",
                                     problem="node 'site-d': /x/data_batch_1 is corrupt"),
                     connected={11, 12, 13, 14, 15})
    assert sorted(s.registry.nodes) == [11, 12, 13]
    assert "node-name 'site-b' is taken by node 12" in s.registry.refused[14]
    _, _, client_rows = s.aggregate_train(1, [])  # the round's rows: the refusals, named
    rows = {r["node_id"]: r for r in client_rows}
    assert (rows["14"]["status"], rows["14"]["node_name"]) == ("refused", "site-b")
    assert (rows["15"]["node_name"], rows["15"]["reason"]) == (
        "site-d", "node 'site-d': /x/data_batch_1 is corrupt")
    assert "partition_id" not in rows["14"]

    s.registry._admit_waiting({11, 12, 13, 14})  # 12 still connected: 14 keeps waiting
    assert 14 not in s.registry.nodes
    s.registry._admit_waiting({11, 13, 14})  # 12 left (a restart whose old id lingered)
    assert s.registry.nodes[14].name == "site-b" and 14 not in s.registry.refused
    assert s.registry.nodes[14].key == s.registry.nodes[12].key == of_name("site-b")


def test_a_node_that_does_not_answer_its_hello_is_skipped_without_a_clients_row(
        local_strategy):
    # A restarted node's old id stays listed until its heartbeat expires; its hello fails.
    # That is a node gone, not a refusal: clients.csv keeps one row per client and round.
    s = local_strategy
    failed = Message(Error(code=0, reason="Node Unavailable"), reply_to=hello_sent(16))
    s.registry.greet(16, failed, connected={16})
    assert "Node Unavailable" in s.registry.refused[16] and 16 not in s.registry.nodes
    _, _, client_rows = s.aggregate_train(1, [])
    assert client_rows == []


def test_shares_and_draws_follow_the_node_name_not_the_node_id(local_strategy):
    s = local_strategy
    names = [f"site-{c}" for c in "abcdef"]

    def run(ids: list[int]) -> tuple[dict[str, str], list[list[str]]]:
        s.registry.nodes.clear()
        for node, name in zip(ids, names):
            s.registry.greet(node, hello_reply(node, name), connected=set(ids))
        nodes = s.registry.nodes
        shares = {nodes[n].name: s.share_for(nodes[n].key).hash for n in ids}
        draws = [sorted(nodes[n].name for n in s._sample(sorted(ids), 0.5, rnd, 1))
                 for rnd in range(1, 6)]
        return shares, draws

    first = run([101, 102, 103, 104, 105, 106])
    assert first == run([906, 905, 904, 903, 902, 901])  # new ids, joined in reverse
    shares, draws = first
    assert len(set(shares.values())) == len(names)  # every name its own share
    assert all(len(d) == 3 for d in draws) and len({tuple(d) for d in draws}) > 1


# --- containers and docs -----------------------------------------------------------------------

def test_compose_local_mode_mounts_each_client_only_its_own_folder():
    files = gen.render(3, "local")
    services = yaml.safe_load(files[gen.FILES["base"]])["services"]
    mounts = {name: [v for v in s.get("volumes", []) if v.endswith(":/data:ro")]
              for name, s in services.items()}
    assert mounts["superexec-serverapp"] == ["${ROBUSTFL_DATA:-./data}/server:/data:ro"]
    for i in range(3):
        own = f"${{ROBUSTFL_DATA:-./data}}/node-{i}:/data:ro"
        assert mounts[f"superexec-clientapp-{i}"] == [own]
        assert mounts[f"supernode-{i}"] == []
        expected = commands.local_supernode(gen.SUPERLINK, f"node-{i}", "/data",
                                            host="0.0.0.0", isolation="process")
        assert flags([str(a) for a in services[f"supernode-{i}"]["command"]]) == flags(expected)
    tls = yaml.safe_load(files[gen.FILES["tls"]])["services"]
    assert "node-name='node-2'" in tls["supernode-2"]["command"][-1]
    assert "deploy.compose --nodes 3 --client-data local" in files[gen.FILES["gpu"]]


@needs_compose
def test_docker_compose_accepts_the_local_mode_files(tmp_path):
    assert gen.main(["--client-data", "local", "--dir", str(tmp_path)]) == 0
    assert gen.main(["--client-data", "local", "--dir", str(tmp_path), "--check"]) == 0
    config = resolved(*[str(tmp_path / n) for n in gen.FILES.values()], ROBUSTFL_DATA="/silos")
    volumes = config["services"]["superexec-clientapp-1"]["volumes"]
    assert [v.split(":")[0] for v in volumes if v.split(":")[1] == "/data"] == ["/silos/node-1"]


def test_the_documented_split_commands_are_valid_and_the_docs_say_the_run_keys():
    split_lines = [t for t in documented_commands() if t[:3] == ["python", "-m", "deploy.split"]]
    assert split_lines, "docs/deploy.md shows no deploy.split command"
    for tokens in split_lines:
        splitter.build_parser().parse_args(tokens[3:])  # exits on an unknown flag
    text = (gen.ROOT / "docs" / "deploy.md").read_text()
    # The old advice (every silo num-partitions=1) collapsed a federation to one client.
    assert "## Bring your own data" in text and not re.search(r"num-partitions=1\b", text)


# --- a real deployment ---------------------------------------------------------------------------

def start_silo(d: Deployment, process: str, name: str, folder: Path, key: Path) -> None:
    """A SuperNode started with the command line docs/deploy.md shows for local data."""
    d.nodes[process] = d.spawn(process, commands.local_supernode(
        f"127.0.0.1:{d.port}", name, str(folder), port=free_port(), tls=d.tls, auth_key=key))


def wait_activated(d: Deployment, node_ids: list[int]) -> None:
    """Until the SuperLink has activated these nodes (its log: no flwr CLI call per poll)."""
    d.wait(lambda: all(f"Activated node_id={n}" in d.log("superlink") for n in node_ids), 120,
           f"nodes {node_ids} to come online", lambda: d.log("superlink")[-2000:])


@pytest.mark.flower
def test_three_silos_with_only_their_own_data_over_tls_a_taken_name_and_a_truncated_file(
        silos, tmp_path):
    """Also node authentication's refusal of a key the SuperLink never registered (one TLS
    deployment for both: each costs about a minute)."""
    out_dir, manifest = silos
    broken = tmp_path / "broken"
    shutil.copytree(out_dir / "node-2", broken)
    batch = broken / BATCH_DIR / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:5000])
    certs = tmp_path / "certs"
    generate(certs, sans=[], nodes=5, extra_keys=("node-unregistered",))
    tls = commands.Tls(certs)
    runs = tmp_path / "runs"
    extra = ("fl.client-data='local' fl.partition='iid' fl.num-rounds=1 data.val-size=20 "
             "fl.shared-pool=0.5 fl.shared-share=0.5")
    run_config = tiny_run_config(out_dir / splitter.SERVER, runs, "silos", extra=extra)
    with Deployment(tmp_path / "deploy", tls=tls, node_auth=True) as d:
        d.start_superlink()
        ids = [d.register(certs / f"node-{i}.pub") for i in range(5)]
        for i in range(3):
            start_silo(d, f"silo-{i}", f"node-{i}", out_dir / f"node-{i}", tls.node_key(i))
        wait_activated(d, ids[:3])  # the three first: a name stays with the first to come
        start_silo(d, "impostor", "node-1", out_dir / "node-2", tls.node_key(3))
        start_silo(d, "broken", "node-broken", broken, tls.node_key(4))
        start_silo(d, "rogue", "node-rogue", out_dir / "node-0",
                   tls.node_key("node-unregistered"))
        wait_activated(d, ids[3:])
        rogue = d.nodes["rogue"]
        d.wait(lambda: rogue.poll() is not None, 60, "the unregistered SuperNode to be refused",
               lambda: d.log("rogue")[-2000:])
        assert rogue.returncode != 0 and "Failed to activate SuperNode" in d.log("rogue")
        assert set(d.online_nodes()) == set(ids)
        run_id = d.submit(run_config)
        info = d.wait_run(run_id, timeout=420, run_dir=runs / "silos")
        assert info["status"] == "finished:completed", f"{info}\n{d.run_log(run_id)[-4000:]}"

    clients = pd.read_csv(runs / "silos" / "clients.csv", dtype={"node_id": str}
                          ).fillna({"node_name": ""})
    ok = clients[clients["status"] == "ok"].set_index("node_name")
    assert sorted(ok.index) == ["node-0", "node-1", "node-2"]
    cfg = ExperimentConfig.from_flat({"data.val-size": 20, "fl.shared-pool": 0.5,
                                      "data.train-limit": 300})  # the server's side of G
    server_labels = load_cifar10(out_dir / splitter.SERVER).train_y.numpy()
    plan = shared_plan(cfg, server_labels)
    for node in manifest["nodes"]:
        share = plan.share(of_name(node["name"]), 0.5, cfg.seed).size
        row = ok.loc[node["name"]]
        assert share > 0 and row["shared_examples"] == share
        assert row["num_examples"] == node["images"] + share  # its folder plus its share
    refused = clients[clients["status"] == "refused"].set_index("node_name")
    assert sorted(refused.index) == ["node-1", "node-broken"]
    assert "node-name 'node-1' is taken by node" in refused.loc["node-1", "reason"]
    assert refused.loc["node-1", "node_id"] not in set(ok["node_id"])
    reason = refused.loc["node-broken", "reason"]
    assert reason.startswith("node 'node-broken': ") and f"{batch} is corrupt" in reason
    assert json.loads((runs / "silos" / "status.json").read_text())["status"] == "finished"
