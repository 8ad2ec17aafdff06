"""fl.sharing: what leaves a client and the server in each mode (none, raw, means, server),
NaiveMix's averages and mixing, the server's fine-tuning on G, and one Flower run per new mode."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common import Metadata

from common import protocol
from common.config import ConfigError, ExperimentConfig
from common.means import MeansMix, client_means, group_count
from common.models import build_model
from common.packing import Layout, packed_record
from common.partition import shared_plan
from common.run_folder import TRAFFIC_COLUMNS
from server.finetune import server_finetune
from server.nodes import NodeInfo
from server.strategy import make_strategy


# --- the config -------------------------------------------------------------------------------


@pytest.mark.parametrize("flat, fragments", [
    ({"fl.sharing": "means", "fl.shared-pool": 0.1, "fl.shared-share": 0.4},
     ["fl.shared-share=0.4", "only fl.sharing=raw", "Set fl.shared-share=0"]),
    ({"fl.sharing": "server", "fl.shared-pool": 0.1, "fl.shared-share": 0.4},
     ["fl.shared-share=0.4", "G stays on the server"]),
    ({"fl.sharing": "none", "fl.shared-pool": 0.1, "fl.shared-share": 0.2},
     ["fl.shared-share=0.2", "fl.sharing=none sends nothing"]),
    ({"fl.sharing": "server"}, ["fl.sharing=server", "fl.shared-pool=0", "set fl.shared-pool > 0"]),
    ({"fl.sharing": "means", "train.objective": "trades"},
     ["fl.sharing=means", "train.objective=trades", "Set train.objective=mixed"]),
    ({"fl.sharing": "shared"}, ["fl.sharing = 'shared'", "none, raw, means, server"]),
    ({"fl.mix-weight": 1.0}, ["fl.mix-weight = 1.0", "[0.0, 1.0)"]),
])
def test_bad_sharing_combinations_are_refused_naming_the_keys_and_the_fix(flat, fragments):
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_flat(flat)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_every_mode_builds_where_it_makes_sense():
    for flat in ({}, {"fl.sharing": "none"}, {"fl.sharing": "means"},
                 {"fl.sharing": "means", "fl.shared-pool": 0.1, "fl.client-data": "local"},
                 {"fl.sharing": "server", "fl.shared-pool": 0.1},
                 {"fl.sharing": "none", "fl.shared-pool": 0.1}):
        ExperimentConfig.from_flat(flat)
    assert ExperimentConfig().fl.sharing == "raw"  # today's behaviour stays the default


# --- means: what a client sends ------------------------------------------------------------------


def hello_context(cfg: ExperimentConfig, data_dir, partition: int, partitions: int) -> Context:
    return Context(run_id=1, node_id=100 + partition,
                   node_config={"partition-id": partition, "num-partitions": partitions,
                                "data-dir": str(data_dir)},
                   state=RecordDict(), run_config=cfg.to_flat())


def hello_message() -> Message:
    return Message(RecordDict({protocol.CONFIG: ConfigRecord({})}),
                   metadata=Metadata(run_id=1, message_id="hello-1", src_node_id=1,
                                     dst_node_id=101, reply_to_message_id="", group_id="",
                                     created_at=time.time(), ttl=60.0,
                                     message_type=protocol.HELLO))


def images_as_rows(images: torch.Tensor) -> np.ndarray:
    return images.reshape(images.shape[0], -1).double().numpy() / 255.0


@pytest.mark.parametrize("size", [0, 7])
def test_a_means_client_sends_averages_of_m_images_never_an_image_or_a_scaled_one(
        data_dir, size):
    from client import local_data
    from client.app import hello
    from client.node import NodeSettings

    cfg = ExperimentConfig.from_flat({
        "data.dir": str(data_dir), "data.train-limit": 600, "data.val-size": 0,
        "fl.partition": "classes", "fl.classes-per-client": 2, "fl.shared-pool": 0.1,
        "fl.sharing": "means", "fl.means-size": size})
    context = hello_context(cfg, data_dir, 1, 5)
    reply = hello(hello_message(), context)

    # Everything the reply carries as arrays: the averages only.
    arrays = {name: a.numpy() for record in reply.content.array_records.values()
              for name, a in record.items()}
    assert set(reply.content.array_records) == {protocol.MEANS}
    x, y = arrays[protocol.SHARE_X], arrays[protocol.SHARE_Y]
    node = NodeSettings.from_node_config(context.node_config)
    images, labels = local_data.training_images(cfg, node)
    n = images.shape[0]
    per_average = size or n
    assert x.shape == (n // per_average, 3, 32, 32) == (group_count(n, size), 3, 32, 32)
    assert y.shape == (x.shape[0], 10)
    # Each label row is the mean of exactly M one-hot labels: M times it counts whole images.
    counts = y.astype(np.float64) * per_average
    assert np.allclose(counts, np.rint(counts), atol=1e-3)
    assert np.allclose(counts.sum(1), per_average, atol=1e-3)
    assert set(np.flatnonzero(counts.sum(0) > 0.5)) <= set(labels.unique().tolist())

    # No average equals, or is a scaled copy of, any one of the client's images: the cosine
    # of the angle between the two is 1 only for proportional vectors.
    own = images_as_rows(images)
    sent = x.reshape(x.shape[0], -1).astype(np.float64)
    assert not any(np.allclose(a, b, atol=1e-4) for a in sent for b in own)
    own_unit = own / np.linalg.norm(own, axis=1, keepdims=True)
    sent_unit = sent / np.linalg.norm(sent, axis=1, keepdims=True)
    assert (sent_unit @ own_unit.T).max() < 1 - 1e-4


def test_the_averages_are_the_same_on_every_call_and_differ_between_clients(cifar):
    images, labels = cifar.train_x[:100], cifar.train_y[:100]
    a = client_means(images, labels, 10, seed=3, key=0)
    assert all(np.array_equal(u, v) for u, v in zip(a, client_means(images, labels, 10, 3, 0)))
    assert not np.array_equal(a[0], client_means(images, labels, 10, 3, 1)[0])
    assert np.allclose(a[0].mean(0), images.float().mean(0).numpy() / 255, atol=1e-5)


def test_mixing_trains_on_the_mixed_images_against_the_mixed_soft_targets():
    gen = torch.Generator().manual_seed(0)
    pool_x, pool_y = torch.rand(5, 3, 32, 32, generator=gen), torch.rand(5, 10, generator=gen)
    pool_y = pool_y / pool_y.sum(1, keepdim=True)
    mix = MeansMix(pool_x, pool_y, 0.1)
    x = torch.rand(4, 3, 32, 32, generator=gen)
    mixed, y_bar = mix.mix(x, torch.Generator().manual_seed(1))
    pick = torch.randint(0, 5, (4,), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(mixed, 0.9 * x + 0.1 * pool_x[pick])
    assert torch.equal(y_bar, pool_y[pick])
    # The loss of every copy is the cross-entropy against y' = 0.9 t + 0.1 y_bar, with t the
    # label-smoothed target of the objective (here: two copies, smoothing 0.05).
    logits, y = torch.randn(8, 10, generator=gen), torch.tensor([1, 2, 3, 4])
    own = F.cross_entropy(logits, y.repeat(2), label_smoothing=0.05,
                          reduction="none").view(2, -1).mean(1)
    smooth = F.one_hot(y, 10).float() * 0.95 + 0.005
    target = (0.9 * smooth + 0.1 * y_bar).repeat(2, 1)
    expected = (-(logits.log_softmax(1) * target).sum(1)).view(2, -1).mean(1)
    assert torch.allclose(mix.terms(own, logits, y_bar), expected, atol=1e-6)


# --- the server: what it sends -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def run_identity(monkeypatch):
    """A Message built outside a Flower process needs a run id (a ServerApp has its own)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


class FakeGrid:
    """The little of a Grid that configure_train asks for when every node is known."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def strategy_and_nodes(cifar, **flat):
    cfg = ExperimentConfig.from_flat({"fl.min-nodes": 2, "data.val-size": 0,
                                      "data.train-limit": 1000, **flat})
    y = cifar.train_y.numpy()
    strategy = make_strategy(cfg, cifar.train_x.numpy(), y, shared_plan(cfg, y),
                             Layout.of(build_model("relu", 8).state_dict()))
    for key, node in ((0, 11), (1, 12)):
        info = NodeInfo(key, 2, 450)
        if cfg.fl.sharing == "means":
            info.means = client_means(cifar.train_x[key::2][:450], cifar.train_y[key::2][:450],
                                      150, cfg.seed, key)
        strategy.registry.nodes[node] = info
    return strategy


def sent_arrays(message: Message) -> dict[str, np.ndarray]:
    return {f"{record_name}.{name}": a.numpy()
            for record_name, record in message.content.array_records.items()
            for name, a in record.items()}


@pytest.mark.parametrize("sharing", ["none", "server"])
def test_without_raw_or_means_no_message_to_a_client_carries_data(cifar, sharing):
    strategy = strategy_and_nodes(cifar, **{"fl.sharing": sharing, "fl.shared-pool": 0.1})
    model = packed_record(build_model("relu", 8).state_dict())
    for rnd in (1, 2):
        messages = list(strategy.configure_train(rnd, model, ConfigRecord({}),
                                                 FakeGrid([11, 12])))
        assert len(messages) == 2
        for message in messages:
            assert set(message.content.array_records) == {protocol.ARRAYS}
            arrays = sent_arrays(message)
            assert {a.ndim for a in arrays.values()} == {1}  # packed model vectors only
            assert not any(a.dtype == np.uint8 for a in arrays.values())
            assert message.content[protocol.CONFIG][protocol.SHARE_HASH] == protocol.NO_SHARE
        assert strategy.traffic["bytes_down_data"] == 0
        assert strategy.traffic["bytes_down_model"] == 2 * sum(
            len(a.data) for a in model.values())


def test_raw_sends_each_client_its_share_of_g_once_and_counts_its_bytes(cifar):
    strategy = strategy_and_nodes(cifar, **{"fl.shared-pool": 0.1, "fl.shared-share": 0.5})
    model = packed_record(build_model("relu", 8).state_dict())
    messages = list(strategy.configure_train(1, model, ConfigRecord({}), FakeGrid([11, 12])))
    shares = [m.content[protocol.SHARE][protocol.SHARE_X].numpy() for m in messages]
    assert [s.shape for s in shares] == [(50, 3, 32, 32)] * 2 and shares[0].dtype == np.uint8
    assert strategy.traffic["bytes_down_data"] == 2 * (50 * 3072 + 50 * 8)


def test_means_sends_every_client_the_pool_of_averages_and_no_image(cifar):
    strategy = strategy_and_nodes(cifar, **{"fl.sharing": "means", "fl.shared-pool": 0.1})
    model = packed_record(build_model("relu", 8).state_dict())
    messages = list(strategy.configure_train(1, model, ConfigRecord({}), FakeGrid([11, 12])))
    pool = np.concatenate([strategy.registry.nodes[n].means[0] for n in (11, 12)])
    for message in messages:
        x = message.content[protocol.SHARE][protocol.SHARE_X].numpy()
        assert x.dtype == np.float32 and np.array_equal(x, pool)  # 2 clients x 3 averages
    assert strategy.traffic["bytes_down_data"] == 2 * (pool.nbytes + 6 * 10 * 4)
    assert strategy.max_examples(11) == 450  # averages are mixed in, not extra examples


# --- server: fine-tuning on G -------------------------------------------------------------------


def test_server_fine_tuning_changes_the_aggregate_and_only_in_server_mode(cifar):
    flat = {"fl.shared-pool": 0.1, "data.val-size": 0, "data.train-limit": 1000,
            "fl.server-steps": 2, "train.batch-size": 8, "attack.steps": 1}
    plan = shared_plan(ExperimentConfig.from_flat(flat), cifar.train_y.numpy())
    for mode in ("raw", "none", "means"):
        cfg = ExperimentConfig.from_flat({**flat, "fl.sharing": mode})
        assert server_finetune(cfg, cifar.train_x, cifar.train_y, plan,
                               torch.device("cpu")) is None
    cfg = ExperimentConfig.from_flat({**flat, "fl.sharing": "server"})
    finetune = server_finetune(cfg, cifar.train_x, cifar.train_y, plan, torch.device("cpu"))
    torch.manual_seed(0)
    aggregate = packed_record(build_model("relu", 8).state_dict())
    before = {k: a.numpy().copy() for k, a in aggregate.items()}
    tuned = finetune(aggregate, 3)
    assert {k: a.numpy().shape for k, a in tuned.items()} == {k: v.shape for k, v in
                                                             before.items()}
    assert not np.array_equal(tuned["float32"].numpy(), before["float32"])
    assert tuned["int64"].numpy().max() == before["int64"].max() + 2  # two BN steps
    assert all(np.array_equal(a.numpy(), before[k]) for k, a in aggregate.items())
    again = finetune(aggregate, 3)  # seeded by the round: a resumed run repeats it
    assert np.array_equal(again["float32"].numpy(), tuned["float32"].numpy())
    images = finetune.images_of_round(3)
    assert images.numel() == 16 and set(images.tolist()) <= set(range(len(plan.shared)))


# --- the study ----------------------------------------------------------------------------------


def test_the_sharing_study_is_every_mode_on_both_skews_on_one_held_back_pool():
    from common.partition import check_split
    from simulation.studies import SHARED_POOL, study_cells

    for scale in ("toy", "cpu", "paper"):
        cells = study_cells("sharing", scale)
        grid = {(c.overrides["fl.sharing"], c.overrides["fl.partition"],
                 c.overrides["fl.shared-share"]) for c in cells}
        assert grid == {(m, p, 0.4 if m == "raw" else 0.0)
                        for m in ("none", "raw", "means", "server")
                        for p in ("classes", "dirichlet")} | {("raw", "iid", 0.0)}
        assert {c.overrides["fl.shared-pool"] for c in cells} == {SHARED_POOL}, scale
        for c in cells:  # every cell is a valid run of 10 clients
            check_split(ExperimentConfig.from_flat(c.overrides), c.num_supernodes)
    assert [c.name for c in cells][:4] == ["none-classes", "raw-classes", "means-classes",
                                           "server-classes"]


def sharing_results() -> pd.DataFrame:
    """Finished rows of the study's cells on one partition, two seeds each: raw gains 10
    points of worst-case accuracy over none, means 5, server 2.5."""
    robust = {"none": 0.10, "raw": 0.20, "means": 0.15, "server": 0.125}
    rows = []
    for mode, worst in robust.items():
        for seed, jitter in ((0, 0.0), (1, 0.01)):
            rows.append({
                "cell": f"{mode}-classes", "seed": seed, "status": "finished", "adversarial": True,
                "partition": "classes", "sharing": mode, "share": 0.4 if mode == "raw" else 0,
                "eval_examples": 1000, "natural_acc": 0.3 + worst + jitter,
                "worst_acc": worst + jitter, "strongest": worst + jitter,
                "bytes_down_model_per_round": 2e6, "bytes_up_model_per_round": 2e6,
                "bytes_down_data_per_round": {"raw": 5e6, "means": 1e5}.get(mode, 0.0),
                "bytes_up_data_per_round": {"means": 5e4}.get(mode, 0.0)})
    return pd.DataFrame(rows)


def test_the_sharing_report_gives_the_share_of_raws_gain_each_mode_recovers(tmp_path):
    from simulation.claims import study_claims
    from simulation.report import claims_section, figures, study_tables, summarize
    from simulation.studies import STUDIES
    from simulation.studies.sharing import mode_label
    from simulation.tables import estimates_with_bounds

    study = STUDIES["sharing"]
    (_, per_cell), (_, recovery) = study_tables(study, summarize(sharing_results()))
    assert per_cell.set_index("cell").loc["raw-classes", "data MB down/round"] == 5.0
    got = recovery.set_index("sharing")
    assert got["robust: of raw's gain"].to_dict() == pytest.approx(
        {"raw": 1.0, "means": 0.5, "server": 0.25})
    assert got.loc["means", "robust gain (points)"] == pytest.approx(5.0)
    assert got.loc["means", "MB up/round"] == pytest.approx(2.05)
    # the gains' intervals: paired over the two seeds, with verdicts
    lines = "\n".join(claims_section(sharing_results(), study_claims(study.claims)))
    assert "fl.sharing=means raises accuracy over none (classes)" in lines
    assert "reproduced" in lines
    bounded = estimates_with_bounds(summarize(sharing_results().assign(rounds=8)))
    drawn = figures(study, bounded, pd.DataFrame(), tmp_path)
    assert tmp_path / "natural_vs_robust_by_sharing.png" in drawn
    labels = {row["sharing"]: mode_label(row) for _, row in bounded.iterrows()}
    assert labels == {"none": "none: no data", "raw": "raw: 40.00 MB of data",
                                "means": "means: 1.20 MB of data", "server": "server: no data"}


# --- through Flower -----------------------------------------------------------------------------


@pytest.mark.flower
@pytest.mark.parametrize("sharing", ["means"])
def test_a_federated_run_in_each_new_sharing_mode(data_dir, tmp_path, sharing):
    """means through the harness, 2 clients; none and server run through Flower in
    test_objectives.py's run per objective (trades and mart), to keep the suite's time."""
    from .test_simulation import harness, sets

    out = tmp_path / "runs"
    proc = harness(["run", "--num-supernodes", "2", *sets(
        f"data.dir={data_dir}", f"out.dir={out}", "out.run-name=r", "fl.num-rounds=1",
        "fl.partition=classes", "fl.classes-per-client=5", "fl.shared-pool=0.1",
        f"fl.sharing={sharing}", "fl.means-size=50", "fl.server-steps=2",
        "data.train-limit=300", "data.eval-limit=20", "data.val-size=100",
        "train.local-epochs=1", "train.batch-size=32", "model.width=8", "attack.steps=1",
        "eval.attacks=fgsm", "eval.noise-std=0")])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rounds = pd.read_csv(out / "r" / "rounds.csv")
    clients = pd.read_csv(out / "r" / "clients.csv")
    assert rounds["round"].tolist() == [1] and math.isfinite(rounds["natural_acc"][0])
    assert (clients["status"] == "ok").all() and len(clients) == 2
    assert (clients["shared_examples"] == 0).all()  # no image of G reached a client
    traffic = rounds.iloc[0][list(TRAFFIC_COLUMNS)]
    assert traffic["bytes_down_model"] > 0 and traffic["bytes_up_model"] > 0
    # 300 images - 30 of G over 2 clients: 135 each, 2 averages of 50
    expected_up = {"none": 0, "server": 0, "means": 2 * 2 * (3072 + 10) * 4}[sharing]
    assert traffic["bytes_up_data"] == expected_up
    assert traffic["bytes_down_data"] == 2 * expected_up  # the pool of 4 to both clients
    assert ("server_train_seconds" in rounds) == (sharing == "server")
