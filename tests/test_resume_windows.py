"""The windows a kill can hit, and clients that lie or change ids between runs:

- a run killed after its last checkpoint but before final.pt is completed by resume (the
  ServerApp's own main, with no round left to train: no node is needed), a finished run is
  refused, and a sweep reruns such a cell instead of skipping or failing at it;
- a round's rows are written before its checkpoint, and a repeated round replaces its rows;
- clients are drawn by partition id, so new node ids (a resumed run) draw the same clients;
- a reply that claims more examples than its node holds is rejected, and FedAvg is the mean
  of the honest clients;
- fl.hello-timeout is a setting, and the harness shows a stopped run's reason without
  Flower's report of the exception that marks the run failed.
(test_reliability.py checks the same through real SuperLink/SuperNode processes.)
"""

from __future__ import annotations

import time

import pytest
import torch
from flwr.app import Context, Message, MessageType, Metadata, MetricRecord, RecordDict

from client.faults import INFLATE_FACTOR, Fault
from common import protocol, results
from common.config import ConfigError, ExperimentConfig
from common.models import build_model
from common.packing import Layout, packed_record, unpack
from common.partition import split_for
from common.run_folder import RunStore, RunStoreError
from server.app import main as server_main
from server.central import CentralEvaluator
from server.nodes import NodeInfo
from server.replies import check_reply
from server.strategy import make_strategy
from simulation.sweep import cell_state


def model_state(seed: int) -> dict[str, torch.Tensor]:
    """A state dict whose tensors all differ from the seeded initialisation's."""
    torch.manual_seed(seed)
    state = build_model("relu", 8).state_dict()
    return {k: (v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v + seed)
            for k, v in state.items()}


def client_rows(rnd: int, node_ids: list[str]) -> list[dict]:
    return [{"round": rnd, "node_id": n, "partition_id": p, "status": "ok", "reason": ""}
            for p, n in enumerate(node_ids)]


# --- a run killed between its last checkpoint and final.pt --------------------------------


def test_a_run_killed_after_its_last_checkpoint_is_finished_by_resume(data_dir, cifar,
                                                                       tmp_path):
    flat = {"data.dir": str(data_dir), "out.dir": str(tmp_path / "runs"),
            "out.run-name": "killed", "fl.num-rounds": 2, "data.eval-limit": 60,
            "eval.attacks": "fgsm", "eval.noise-std": 0.0}
    cfg = ExperimentConfig.from_flat(flat)
    # What a run killed in round 2's window leaves (a version that checkpointed before
    # recording): round 1 complete, round 2's checkpoint, no round-2 row, no final.pt.
    store, _ = RunStore.open(cfg)
    store.finish_round(cfg, {"round": 1, "natural_acc": 0.1}, client_rows(1, ["7", "8"]),
                       model_state(1))
    last = model_state(2)
    store.save_checkpoint(cfg, 2, last)
    store.set_status("running", 1, phase="round 2: evaluating")
    assert cell_state(cfg) == "resumable"

    run_config = {**cfg.to_flat(), "resume": True}
    server_main(None, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                              run_config=run_config))  # no grid: no round is left to run

    assert store.status()["status"] == "finished" and store.status()["last_round"] == 2
    final = torch.load(store.final_path)
    assert all(torch.equal(final[k], last[k]) for k in last)
    rounds = results.read_csv(store.rounds_csv)
    assert rounds["round"].tolist() == [1, 2]
    expected = CentralEvaluator(cfg, cifar, torch.device("cpu"))(last, 2)
    row = rounds.set_index("round").loc[2]
    assert row["natural_acc"] == pytest.approx(expected["natural_acc"])
    assert row["fgsm_acc"] == pytest.approx(expected["fgsm_acc"])
    assert rounds.set_index("round").loc[1, "natural_acc"] == 0.1  # round 1 untouched
    assert cell_state(cfg) == "finished"

    # Now it is truly finished: resuming again is refused, with what to do instead.
    with pytest.raises(RunStoreError, match="already finished all 2 rounds.*out.run-name"):
        RunStore.locate(ExperimentConfig.from_flat(run_config))


def test_a_finished_status_without_final_pt_is_not_finished(tmp_path):
    cfg = ExperimentConfig.from_flat({"out.dir": str(tmp_path), "out.run-name": "r",
                                      "fl.num-rounds": 1, "resume": True})
    store = RunStore(tmp_path / "r")
    store.save_checkpoint(cfg, 1, model_state(3))
    store.set_status("finished", 1)
    assert cell_state(cfg) == "resumable"
    _, resume = RunStore.locate(cfg)
    assert resume.next_round == 2  # nothing to train, only the final files to write


# --- results before the checkpoint; a repeated round replaces its rows -----------------------


def test_a_rounds_rows_are_written_before_its_checkpoint(tmp_path):
    cfg = ExperimentConfig.from_flat({"out.dir": str(tmp_path), "out.run-name": "r"})
    store, _ = RunStore.open(cfg)
    store.finish_round(cfg, {"round": 1, "natural_acc": 0.1}, client_rows(1, ["7"]),
                       model_state(1))
    # A checkpoint that cannot be written (a directory in its place) stands for a kill at
    # that moment: the round's rows must be on disk already.
    store.checkpoint_path.unlink()
    store.checkpoint_path.mkdir()
    with pytest.raises(OSError):
        store.finish_round(cfg, {"round": 2, "natural_acc": 0.2}, client_rows(2, ["7"]),
                           model_state(2))
    assert results.read_csv(store.rounds_csv)["round"].tolist() == [1, 2]
    assert results.read_csv(store.clients_csv)["round"].tolist() == [1, 2]


def test_a_repeated_round_replaces_its_rows_although_node_ids_changed(tmp_path):
    store = RunStore(tmp_path)
    store.record_round({"round": 1, "natural_acc": 0.1}, client_rows(1, ["11", "12"]))
    store.record_round({"round": 2, "natural_acc": 0.2}, client_rows(2, ["11", "12"]))
    # Resumed after a kill between round 2's rows and its checkpoint: round 2 again, on
    # nodes with new ids (and partition 1 lost this time).
    store.record_round({"round": 2, "natural_acc": 0.25}, client_rows(2, ["21"]))
    clients = results.read_csv(store.clients_csv)
    assert clients[["round", "partition_id", "node_id"]].values.tolist() == [
        [1, 0, "11"], [1, 1, "12"], [2, 0, "21"]]
    rounds = results.read_csv(store.rounds_csv)
    assert rounds["natural_acc"].tolist() == [0.1, 0.25]


# --- the strategy: partition-based draws, claimed example counts ---------------------------


@pytest.fixture(scope="module")
def small_data(cifar):
    return cifar.train_x[:1000].numpy(), cifar.train_y[:1000].numpy()


def strategy_for(small_data, **flat):
    cfg = ExperimentConfig.from_flat(flat)
    x, y = small_data
    plan = split_for(cfg, y, num_partitions=1)  # G only, as the ServerApp does
    return make_strategy(cfg, x, y, plan, Layout.of(build_model("relu", 8).state_dict()))


@pytest.mark.parametrize("fraction_key, tag", [("fl.fraction-train", 1),
                                                ("fl.fraction-evaluate", 2)])
def test_clients_are_drawn_by_partition_so_new_node_ids_draw_the_same_clients(
        small_data, fraction_key, tag):
    strategy = strategy_for(small_data, **{fraction_key: 0.5, "fl.min-nodes": 1})
    fraction = strategy.cfg.fl.fraction_train if tag == 1 else strategy.cfg.fl.fraction_evaluate
    ids = [101, 202, 303, 404, 505, 606]

    def drawn(holder_of: dict[int, int], rnd: int) -> list[int]:
        strategy.registry.nodes = {n: NodeInfo(p, len(ids), 100) for n, p in holder_of.items()}
        picked = strategy._sample(sorted(holder_of), fraction, rnd, tag)
        return sorted(holder_of[n] for n in picked)

    # The same nodes in the interrupted run and, under new ids in the opposite order, in
    # the resumed one: a draw over node ids would pick other partitions.
    first = dict(zip(ids, range(len(ids))))
    resumed = dict(zip([i + 1 for i in ids], reversed(range(len(ids)))))
    draws = [drawn(first, rnd) for rnd in range(1, 6)]
    assert draws == [drawn(resumed, rnd) for rnd in range(1, 6)]
    assert all(len(d) == 3 for d in draws) and len({tuple(d) for d in draws}) > 1


def train_reply_content(state: dict[str, torch.Tensor], partition_id: int,
                        num_examples: int) -> RecordDict:
    metrics = {k: 0.0 for k in protocol.TRAIN_METRIC_KEYS}
    metrics.update({"num-examples": num_examples, "partition-id": partition_id})
    return RecordDict({protocol.ARRAYS: packed_record(state),
                       protocol.METRICS: MetricRecord(metrics)})


def train_messages(global_state: dict[str, torch.Tensor], node_of: dict[int, int]
                   ) -> list[Message]:
    """The train messages the strategy sent this round, one per partition's node."""
    return [Message(RecordDict({protocol.ARRAYS: packed_record(global_state)}),
                    metadata=Metadata(run_id=1, message_id=f"m{p}", src_node_id=1,
                                      dst_node_id=node, reply_to_message_id="", group_id="1",
                                      created_at=time.time(), ttl=3600.0,
                                      message_type=MessageType.TRAIN))
            for p, node in node_of.items()]


def test_a_reply_claiming_more_examples_than_its_node_holds_is_rejected(small_data):
    # shared-share 0.5 of G (10% of 1,000 images): each node may train on partition + 50.
    strategy = strategy_for(small_data, **{"fl.shared-pool": 0.1, "fl.shared-share": 0.5,
                                           "data.val-size": 0})
    share = len(strategy.share_for(0).y)
    assert share == 50
    held = {0: 300, 1: 200, 2: 250}  # partition sizes announced at hello
    node_of = {p: 1000 + p for p in held}
    strategy.registry.nodes = {node_of[p]: NodeInfo(p, 3, n) for p, n in held.items()}
    global_state = model_state(0)
    strategy._sent = train_messages(global_state, node_of)
    updates = {p: model_state(10 + p) for p in held}
    liar = 2
    claimed = {p: held[p] + share for p in held}  # what honest clients report
    claimed[liar] = Fault("inflate-examples").reported_examples(claimed[liar])
    assert claimed[liar] == INFLATE_FACTOR * (held[liar] + share)
    replies = [Message(train_reply_content(updates[p], p, claimed[p]), reply_to=sent)
               for p, sent in zip(held, strategy._sent)]

    arrays, _, client_rows = strategy.aggregate_train(1, replies)

    rows = {r["partition_id"]: r for r in client_rows}
    assert [rows[p]["status"] for p in (0, 1)] == ["ok", "ok"]
    assert rows[liar]["status"] == "rejected"
    assert f"num-examples = {claimed[liar]}" in rows[liar]["reason"]
    assert f"the {held[liar] + share} examples this node holds" in rows[liar]["reason"]
    got = unpack({k: a.numpy() for k, a in arrays.items()}, strategy.layout)
    weights = {p: claimed[p] for p in (0, 1)}
    for name, tensor in global_state.items():
        if tensor.is_floating_point():
            mean = sum(updates[p][name].double() * w for p, w in weights.items()) \
                / sum(weights.values())
            torch.testing.assert_close(got[name].double(), mean, rtol=1e-5, atol=1e-6)


def test_a_reply_claiming_another_nodes_partition_is_rejected_and_rows_keep_the_hello_id(
        small_data):
    """The partition a reply claims decides nothing: a node that claims another's id is
    rejected, and clients.csv records the partition the node announced at hello."""
    strategy = strategy_for(small_data)
    held = {0: 300, 1: 200}
    node_of = {p: 2000 + p for p in held}
    strategy.registry.nodes = {node_of[p]: NodeInfo(p, 2, n) for p, n in held.items()}
    global_state = model_state(0)
    strategy._sent = train_messages(global_state, node_of)
    claims = {0: 0, 1: 0}  # node 1 pretends to hold partition 0
    replies = [Message(train_reply_content(model_state(10 + p), claims[p], held[p]),
                       reply_to=sent) for p, sent in zip(held, strategy._sent)]

    _, _, client_rows = strategy.aggregate_train(1, replies)

    rows = {r["node_id"]: r for r in client_rows}
    honest, impostor = rows[str(node_of[0])], rows[str(node_of[1])]
    assert (honest["status"], honest["partition_id"]) == ("ok", 0)
    assert (impostor["status"], impostor["partition_id"]) == ("rejected", 1)
    assert "claims partition 0" in impostor["reason"]


def test_the_hello_timeout_is_a_positive_setting_that_a_resumed_run_may_change():
    assert ExperimentConfig.from_flat({}).fl.hello_timeout == 120.0
    with pytest.raises(ConfigError, match=r"fl.hello-timeout = 0.0 is invalid; allowed: a "
                                          r"number > 0"):
        ExperimentConfig.from_flat({"fl.hello-timeout": 0.0})
    slow = ExperimentConfig.from_flat({"fl.hello-timeout": 600.0})
    assert slow.identity_hash() == ExperimentConfig.from_flat({}).identity_hash()


def test_the_reply_guard_names_both_counts():
    state = model_state(4)
    content = train_reply_content(state, 0, 1000 * 120)
    problem = check_reply(content, packed_record(state), Layout.of(state), max_examples=120)
    assert problem == ("num-examples = 120000 exceeds the 120 examples this node holds (its "
                       "partition announced at hello plus its share of G)")
    assert check_reply(train_reply_content(state, 0, 120), packed_record(state),
                       Layout.of(state), max_examples=120) is None


# --- a stopped run in the harness's display ---------------------------------------------------

WARN, ERR = "\x1b[93mWARNING \x1b[0m:   ", "\x1b[91mERROR \x1b[0m:     "
REASON = "only 1 usable node(s) after waiting 3 s for fl.min-nodes=2"
# The stream of a harness run that stopped for too few nodes (flwr 1.42, as in its
# simulation.log): the ServerApp raises so that Flower lists the run as failed.
STOPPED_STREAM = [
    f"{WARN}Gave up waiting for nodes after 3 s: 1 usable node(s) connected, fl.min-nodes=2",
    f"{WARN}Stopping the run before round 1: {REASON}",
    f"{WARN}Run stopped: {REASON}. Results so far are in /tmp/out/stop; continue it with "
    "resume=true",
    f"{ERR}Simulation raised an exception",
    "Traceback (most recent call last):",
    '  File "/tmp/apps/robustfl/server/rounds.py", line 71, in run_rounds',
    "    raise RunStopped(str(exc)) from None",
    f"server.rounds.RunStopped: {REASON}",
    f"{ERR}Exit Code: 700",
]


def test_the_harness_shows_a_stop_and_its_reason_without_flowers_exception_report():
    from simulation.runner import Noteworthy

    noteworthy = Noteworthy()
    shown = [line for line in STOPPED_STREAM if noteworthy(line)]
    assert shown == STOPPED_STREAM[:3]
    # A failure that is not a stop keeps Flower's report.
    failure = [line for line in STOPPED_STREAM if "Run stopped" not in line]
    noteworthy = Noteworthy()
    assert [line for line in failure if noteworthy(line)] == [
        *STOPPED_STREAM[:2], f"{ERR}Simulation raised an exception",
        "Traceback (most recent call last):", f"{ERR}Exit Code: 700"]
