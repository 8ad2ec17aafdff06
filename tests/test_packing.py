"""The model on the wire: packing round-trips exactly, a mismatch is refused with a reason,
the server's reply guard still names what is wrong, and aggregating packed vectors gives the
per-tensor average."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from client.faults import Fault
from common import protocol
from common.models import build_model
from common.packing import Layout, pack, packed_record, unpack
from server.replies import check_reply


def trained_like_state(seed: int) -> dict[str, torch.Tensor]:
    """A state dict whose tensors all differ (as after training), BatchNorm counters included."""
    torch.manual_seed(seed)
    state = build_model("relu", 8, "standard").state_dict()
    return {k: (v + torch.randn_like(v) if v.is_floating_point() else v + seed)
            for k, v in state.items()}


def reply(state: dict[str, torch.Tensor]) -> RecordDict:
    metrics = {k: 1.0 for k in protocol.TRAIN_METRIC_KEYS}
    return RecordDict({protocol.ARRAYS: packed_record(state),
                       protocol.METRICS: MetricRecord(metrics)})


def test_pack_unpack_round_trip_is_exact_with_dtypes_and_shapes():
    state = trained_like_state(1)
    packed = pack(state)
    assert sorted(packed) == ["float32", "int64"]
    back = unpack(packed, Layout.of(state))
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and back[name].shape == tensor.shape
        assert torch.equal(back[name], tensor), name


def test_a_packed_model_is_a_handful_of_flower_objects_instead_of_hundreds():
    state = trained_like_state(2)
    per_tensor = len(get_all_nested_objects(ArrayRecord(state)))
    packed = len(get_all_nested_objects(packed_record(state)))
    distinct = sum(v.is_floating_point() for v in state.values())  # the counters are equal
    assert per_tensor > 2 * distinct  # an Array and its chunk for every distinct tensor
    assert packed <= 5


def test_unpacking_another_models_vectors_is_refused_with_the_fix():
    small = pack(build_model("relu", 8, "standard").state_dict())
    wider = Layout.of(build_model("relu", 16, "standard").state_dict())
    with pytest.raises(ValueError, match="same RobustFL version and model"):
        unpack(small, wider)


def test_layout_locates_the_tensor_behind_a_packed_index():
    state = trained_like_state(3)
    layout = Layout.of(state)
    floats = [k for k, v in state.items() if v.is_floating_point()]
    assert layout.locate("float32", 0) == floats[0]
    first_size = state[floats[0]].numel()
    assert layout.locate("float32", first_size) == floats[1]
    assert layout.locate("float32", layout.sizes()["float32"] - 1) == floats[-1]
    with pytest.raises(IndexError):
        layout.locate("float32", layout.sizes()["float32"])


@pytest.mark.parametrize("mode, reason", [
    ("none", None),
    ("sign-flip", None),  # well-formed: a job for robust aggregation, not for the guard
    ("nan", "stem.0.weight contains non-finite values"),
    ("wrong-shape", "packed float32 vector has shape"),
    ("wrong-dtype", "differ by dtype (missing [], extra ['float16'])"),
])
def test_the_reply_guard_on_packed_updates_from_faulty_clients(mode, reason):
    state = trained_like_state(4)
    reference = packed_record(state)
    problem = check_reply(reply(Fault(mode).corrupt(state)), reference, Layout.of(state))
    if reason is None:
        assert problem is None
    else:
        assert problem is not None and reason in problem, problem


def test_a_nan_deep_in_the_model_is_attributed_to_its_tensor():
    state = trained_like_state(5)
    name = "stages.2.1.conv2.weight"
    state[name] = state[name].clone()
    state[name].view(-1)[7] = float("inf")
    problem = check_reply(reply(state), packed_record(trained_like_state(5)), Layout.of(state))
    assert problem == f"{name} contains non-finite values (NaN or inf)"


def test_fedavg_over_packed_vectors_equals_the_per_tensor_weighted_mean():
    states = [trained_like_state(s) for s in (6, 7, 8)]
    weights = [10, 30, 60]
    contents = [RecordDict({protocol.ARRAYS: packed_record(state),
                            protocol.METRICS: MetricRecord({"num-examples": n})})
                for state, n in zip(states, weights)]
    averaged = aggregate_arrayrecords(contents, "num-examples")  # what FedAvg calls
    floats = averaged["float32"].numpy()
    assert floats.dtype == np.float32
    got = unpack({"float32": floats, "int64": pack(states[0])["int64"]}, Layout.of(states[0]))
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            expected = sum(s[name].double() * n for s, n in zip(states, weights)) / sum(weights)
            torch.testing.assert_close(got[name].double(), expected, rtol=1e-5, atol=1e-5)


def _with_metrics(content: RecordDict, **changes) -> RecordDict:
    metrics = dict(content[protocol.METRICS])
    for key, value in changes.items():
        if value is None:
            metrics.pop(key)
        else:
            metrics[key] = value
    return RecordDict({protocol.ARRAYS: content[protocol.ARRAYS],
                       protocol.METRICS: MetricRecord(metrics)})


@pytest.mark.parametrize("changes, reason", [
    ({"train_loss": None}, "metric keys"),  # a key missing
    ({"extra_metric": 1.0}, "metric keys"),  # a key the protocol does not know
    ({"num-examples": 0}, "num-examples = 0 is not a positive count"),
    ({"num-examples": -5}, "num-examples = -5 is not a positive count"),
    ({"num-examples": float("nan")}, "is not a positive count"),
    ({"num-examples": float("inf")}, "is not a positive count"),
])
def test_the_reply_guard_checks_the_metrics(changes, reason):
    state = trained_like_state(9)
    content = _with_metrics(reply(state), **changes)
    problem = check_reply(content, packed_record(state), Layout.of(state))
    assert problem is not None and reason in problem, problem


def test_the_reply_guard_refuses_a_vector_of_another_dtype_under_the_right_name():
    state = trained_like_state(10)
    content = reply(state)
    floats = content[protocol.ARRAYS]["float32"].numpy().astype(np.float64)
    content[protocol.ARRAYS]["float32"] = Array(floats)
    problem = check_reply(content, packed_record(state), Layout.of(state))
    assert problem is not None and "float32 vector has dtype" in problem, problem


def test_the_reply_guard_wants_one_array_record_and_one_metric_record():
    state = trained_like_state(11)
    content = reply(state)
    content["second"] = packed_record(state)
    problem = check_reply(content, packed_record(state), Layout.of(state))
    assert problem == "expected exactly one ArrayRecord and one MetricRecord"
