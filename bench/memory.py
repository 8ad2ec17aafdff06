"""Memory and traffic of the base federated run: peak RSS (VmHWM) of the server and of each
client process, and bytes sent per round against the sizes of the model and the shares."""

from __future__ import annotations

import subprocess
import sys

from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from common import protocol
from common.partition import split_for
from common.packing import packed_record

from .fixtures import Options, load_data
from .local_fedavg import initial_state
from .result import Result

MB = 1024 * 1024
BASELINE = ("import torch, flwr, ray, numpy, pandas; import client.app, server.app; "
            "print(open('/proc/self/status').read())")


def import_baseline_kb() -> int:
    """Peak RSS of a fresh interpreter that only imports what a Flower process imports:
    the floor under every server and client process."""
    out = subprocess.run([sys.executable, "-c", BASELINE], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return next(int(line.split()[1]) for line in out.splitlines() if line.startswith("VmHWM"))


def wire_bytes(content: RecordDict) -> int:
    """Serialized size of a message's content, as it travels over gRPC in deployment."""
    return recorddict_to_proto(content).ByteSize()


def traffic(cfg, data, clients: int) -> dict:
    state = initial_state(cfg)
    arrays = packed_record(state)
    plan = split_for(cfg, data.train_y.numpy(), clients)
    idx = plan.share(0, cfg.fl.shared_share, cfg.seed)
    x, y = data.train_x.numpy()[idx], data.train_y.numpy()[idx]
    settings = protocol.settings_to_record(protocol.train_settings(cfg, 1))
    config = ConfigRecord({**settings, protocol.SERVER_ROUND: 1,
                           protocol.SHARE_HASH: protocol.content_hash(x, y)})
    plain = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config})
    with_share = RecordDict({protocol.ARRAYS: arrays, protocol.CONFIG: config,
                             protocol.SHARE: ArrayRecord({"x": Array(x), "y": Array(y)})})
    reply = RecordDict({protocol.ARRAYS: arrays, protocol.METRICS: MetricRecord(
        {k: 0.0 for k in protocol.TRAIN_METRIC_KEYS})})
    return {
        "parameters": int(sum(v.numel() for k, v in state.items() if v.is_floating_point())),
        "state_bytes": int(sum(v.numel() * v.element_size() for v in state.values())),
        # what SharedPool.configure_train adds to bytes_sent per message:
        "model_bytes": int(sum(len(a.data) for a in arrays.values())),
        "share_images": int(idx.size),
        "share_bytes": int(x.nbytes + y.nbytes),
        "wire_train_message": wire_bytes(plain),
        "wire_train_message_with_share": wire_bytes(with_share),
        "wire_reply": wire_bytes(reply),
        "dataset_bytes": int(data.train_x.numel() + data.test_x.numel()),
        # Flower moves each object with its own SuperLink request (see common.packing):
        "objects_per_tensor": len(get_all_nested_objects(ArrayRecord(state))),
        "objects_packed": len(get_all_nested_objects(arrays)),
    }


def report(base, opts: Options) -> Result:
    """`base` is the federated benchmark's CaseOutcome of its base configuration."""
    data = load_data(opts)
    t = traffic(base.cfg, data, base.case.clients)
    roles = base.watch.by_role()
    baseline = import_baseline_kb()
    rows = []
    for role in ("server", "client", "superlink"):
        for peak in sorted(roles.get(role, []), key=lambda p: -p.hwm_kb):
            rows.append({"role": role, "processes": 1, "peak RSS MB": peak.hwm_kb / 1024,
                         "above import floor MB": (peak.hwm_kb - baseline) / 1024
                         if role != "superlink" else float("nan"),
                         "process": peak.command[:48]})
    others = roles.get("other", [])
    if others:  # SuperExec, flwr CLI, Ray GCS, raylet, dashboard, idle workers
        rows.append({"role": "other (sum)", "processes": len(others),
                     "peak RSS MB": sum(p.hwm_kb for p in others) / 1024,
                     "above import floor MB": float("nan"),
                     "process": "SuperExec, flwr run, Ray GCS/raylet/agents, idle workers"})
    per_round = []
    for _, r in base.rounds_csv.iterrows():
        sent = r["clients_sampled"] * t["model_bytes"] + r["shares_sent"] * t["share_bytes"]
        per_round.append({"round": int(r["round"]), "clients": int(r["clients_sampled"]),
                          "shares sent": int(r["shares_sent"]), "bytes sent (strategy "
                          "accounting)": int(sent), "MB": sent / MB,
                          "x model size": sent / t["model_bytes"]})
    clients = [p.hwm_kb / 1024 for p in roles.get("client", [])]
    servers = [p.hwm_kb / 1024 for p in roles.get("server", [])]
    notes = [
        f"Import floor (fresh interpreter importing torch, flwr, ray, the apps): "
        f"{baseline / 1024:.0f} MB peak RSS.",
        f"Model: {t['parameters']:,} parameters, state_dict {t['state_bytes'] / MB:.2f} MB, "
        f"{t['model_bytes'] / MB:.2f} MB as counted by the strategy (ArrayRecord bytes); "
        f"share of G: {t['share_images']} images = {t['share_bytes'] / MB:.3f} MB.",
        f"Serialized (protobuf) train message {t['wire_train_message'] / MB:.3f} MB, with "
        f"share {t['wire_train_message_with_share'] / MB:.3f} MB; reply "
        f"{t['wire_reply'] / MB:.3f} MB.",
        f"Flower objects (one SuperLink request each) for the initial model: "
        f"{t['objects_per_tensor']} as one Array per tensor, {t['objects_packed']} packed "
        "(one Array per dtype, as sent); a trained model has fewer identical tensors, so "
        "more objects per tensor.",
        f"The whole CIFAR subset held by each process: {t['dataset_bytes'] / MB:.1f} MB.",
        "Per-round bytes sent: " + "; ".join(
            f"round {p['round']}: {p['MB']:.2f} MB ({p['x model size']:.2f}x model)"
            for p in per_round),
    ]
    return Result(
        name="memory", title=f"Memory and traffic ({base.case.clients}-client simulation)",
        ratio=None,
        meaning=("peak RSS (VmHWM, polled from /proc every 0.5 s) of the processes the harness "
                 "started for the base federated run; server = flwr-simulation (ServerApp, "
                 "central evaluation, Ray driver), client = ray::ClientAppActor"),
        details={"traffic": t, "per_round": per_round, "import_floor_kb": baseline,
                 "server_mb": servers, "client_mb": clients},
        table=rows, notes=notes)
