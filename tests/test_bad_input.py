"""Every place a user types or mounts something: one clear error before any work starts,
naming the offending key or file, and no earlier result file touched."""

from __future__ import annotations

import hashlib
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch

from client.node import NodeConfigError, NodeSettings
from common.config import ConfigError, ExperimentConfig
from common.models import build_model
from common.run_folder import RunStore
from simulation.cli import main as cli_main


@pytest.fixture
def finished_run(tmp_path):
    """A run folder with results, as a finished run leaves it (written by RunStore itself)."""
    cfg = ExperimentConfig.from_flat({"out.dir": str(tmp_path / "runs"), "out.run-name": "r",
                                      "fl.num-rounds": 2})
    store, _ = RunStore.open(cfg)
    state = build_model("relu", 8).state_dict()
    for rnd in (1, 2):
        store.save_checkpoint(cfg, rnd, state)
        store.record_round({"round": rnd, "natural_acc": 0.1 * rnd},
                           [{"round": rnd, "node_id": 7, "status": "ok"}])
    store.save_final(state)
    store.set_status("finished", 2)
    return store.root


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def broken_data(data_dir, tmp_path):
    """Make a copy of the data with one defect; returns a function (defect -> folder)."""
    def make(defect: str) -> Path:
        root = tmp_path / f"data-{defect}"
        folder = root / "cifar-10-batches-py"
        shutil.copytree(data_dir / "cifar-10-batches-py", folder)
        for f in folder.iterdir():
            f.chmod(0o644)
        batch = folder / "data_batch_4"
        if defect == "empty":
            shutil.rmtree(folder)
        elif defect == "missing-file":
            batch.unlink()
        elif defect == "truncated":
            batch.write_bytes(batch.read_bytes()[:5000])
        elif defect == "corrupted":
            batch.write_bytes(b"\x00garbage" * 100)
        else:
            with batch.open("rb") as f:
                entry = pickle.load(f, encoding="latin1")
            if defect == "wrong-shape":
                entry["data"] = entry["data"][:, :1024]
            elif defect == "labels-out-of-range":
                entry["labels"] = [10] * len(entry["labels"])
            with batch.open("wb") as f:
                pickle.dump(entry, f, protocol=2)
        return root
    return make


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


CASES = [
    # (id, arguments builder, expected fragments of the error message)
    ("unknown-key", lambda t, d, r: ["--set", "train.learnig-rate=0.1"],
     ["train.learnig-rate", "unknown key"]),
    ("bad-type", lambda t, d, r: ["--set", "fl.num-rounds=2.5"], ["fl.num-rounds", "int"]),
    ("out-of-range", lambda t, d, r: ["--set", "attack.eps=-0.1"], ["attack.eps", "[0.0, 1.0]"]),
    ("unknown-activation", lambda t, d, r: ["--set", "model.activation=swish"],
     ["model.activation", "telu"]),
    ("preset-missing", lambda t, d, r: ["--preset", str(t / "nope.toml")],
     ["nope.toml", "not found"]),
    ("preset-not-toml", lambda t, d, r: ["--preset", str(write(t, "p.toml", "fl = [1,"))],
     ["p.toml", "not valid TOML"]),
    ("preset-unknown-key", lambda t, d, r: ["--preset",
                                            str(write(t, "q.toml", "[fl]\nrounds = 3\n"))],
     ["fl.rounds", "unknown key"]),
    ("data-dir-missing", lambda t, d, r: ["--set", f"data.dir={t / 'absent'}"],
     ["absent", "does not exist"]),
    ("data-dir-empty", lambda t, d, r: ["--set", f"data.dir={d('empty')}"],
     ["no cifar-10-batches-py"]),
    ("data-batch-missing", lambda t, d, r: ["--set", f"data.dir={d('missing-file')}"],
     ["data_batch_4", "missing"]),
    ("data-truncated", lambda t, d, r: ["--set", f"data.dir={d('truncated')}"],
     ["data_batch_4", "truncated"]),
    ("data-corrupted", lambda t, d, r: ["--set", f"data.dir={d('corrupted')}"],
     ["data_batch_4", "corrupt"]),
    ("data-wrong-shape", lambda t, d, r: ["--set", f"data.dir={d('wrong-shape')}"],
     ["data_batch_4", "shape"]),
    ("data-labels-out-of-range", lambda t, d, r: ["--set",
                                                  f"data.dir={d('labels-out-of-range')}"],
     ["data_batch_4", "labels must lie in 0..9"]),
    ("output-not-writable", lambda t, d, r: ["--set",
                                             f"out.dir={write(t, 'a-file', '') / 'runs'}"],
     ["cannot write results", "a-file"]),
    ("results-exist", lambda t, d, r: ["--set", f"out.dir={r.parent}", "--set",
                                       "out.run-name=r"],
     ["results already exist", "resume=true"]),
    ("resume-without-checkpoint", lambda t, d, r: ["--set", f"out.dir={t / 'fresh'}",
                                                   "--set", "resume=true"],
     ["resume=true", "does not exist"]),
    ("checkpoint-of-another-model", lambda t, d, r: ["--set", f"resume-from={r}",
                                                     "--set", "model.width=16"],
     ["different experiment", "model.width", "8", "16"]),
    ("checkpoint-of-another-config", lambda t, d, r: ["--set", f"resume-from={r}",
                                                      "--set", "train.lr=0.01"],
     ["different experiment", "train.lr"]),
    ("checkpoint-of-an-older-version", lambda t, d, r: ["--set",
                                                        f"resume-from={older_checkpoint(t, r)}"],
     ["earlier RobustFL version", "train.objective", "cannot resume", "evaluate"]),
    ("checkpoint-corrupt", lambda t, d, r: ["--set", f"resume-from={corrupt_checkpoint(t)}"],
     ["cannot be read", "checkpoint.pt"]),
    ("min-nodes-above-supernodes", lambda t, d, r: ["--num-supernodes", "2", "--set",
                                                    "fl.min-nodes=3"],
     ["fl.min-nodes=3", "2 simulated supernodes"]),
    ("classes-not-covered", lambda t, d, r: ["--num-supernodes", "3", "--set",
                                             "fl.partition=classes", "--set", "fl.min-nodes=3"],
     ["fl.classes-per-client=2 and 3 partitions", "at least 4", "at least 5 partitions"]),
    ("share-without-pool", lambda t, d, r: ["--set", "fl.shared-share=0.4"],
     ["fl.shared-share=0.4", "fl.shared-pool=0", "set fl.shared-pool > 0"]),
    ("no-loss-term", lambda t, d, r: ["--set", "train.weight-clean=0", "--set",
                                      "train.adversarial=false", "--set", "train.noise-std=0"],
     ["no loss term", "train.noise-std > 0"]),
    ("width-beyond-bound", lambda t, d, r: ["--set", f"model.width={2**63}"],
     ["model.width", "<= 256", "GiB to train"]),
    ("model-too-big-for-memory", lambda t, d, r: ["--set", "model.width=256", "--set",
                                                  "train.batch-size=65536"],
     ["will not fit in memory", "model.width=256", "train.batch-size=65536", "GiB to train"]),
]


def older_checkpoint(tmp_path: Path, run: Path) -> Path:
    """The finished run's checkpoint as a release from before train.objective wrote it."""
    import torch

    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    del ckpt["identity"]["train.objective"]
    folder = tmp_path / "older-run"
    folder.mkdir(exist_ok=True)
    torch.save(ckpt, folder / "checkpoint.pt")
    return folder / "checkpoint.pt"


def corrupt_checkpoint(tmp_path: Path) -> Path:
    folder = tmp_path / "corrupt-run"
    folder.mkdir(exist_ok=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    return folder / "checkpoint.pt"


@pytest.mark.parametrize("case, build, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_up_front_and_leaves_results_alone(
        case, build, fragments, tmp_path, data_dir, broken_data, finished_run, capsys):
    before = snapshot(finished_run)
    args = ["run", "--set", f"data.dir={data_dir}", "--set", f"out.dir={tmp_path / 'out'}",
            *build(tmp_path, broken_data, finished_run)]
    code = cli_main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ")
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in: {err}"
    assert snapshot(finished_run) == before
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.csv"))


def test_too_few_classes_are_refused_in_the_first_second(tmp_path, data_dir, capsys):
    """Before the data is read or Flower starts, not in a Ray actor minutes later."""
    started = time.monotonic()
    code = cli_main(["run", "--num-supernodes", "3", "--set", "fl.partition=classes",
                     "--set", "fl.min-nodes=3", "--set", f"data.dir={data_dir}",
                     "--set", f"out.dir={tmp_path / 'out'}"])
    assert time.monotonic() - started < 1.0
    assert code == 2 and "fl.classes-per-client=2" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_sweep_refuses_cells_whose_classes_are_not_covered_before_any_cell_runs(
        tmp_path, data_dir, capsys):
    out = tmp_path / "sweep"
    code = cli_main(["sweep", "noniid", "--scale", "toy", "--num-supernodes", "3",
                     "--out", str(out), "--set", f"data.dir={data_dir}"])
    assert code == 2 and "fl.classes-per-client=2 and 3 partitions" in capsys.readouterr().err
    assert not out.exists()  # not even the IID cells, which could run, were started


@pytest.mark.parametrize("node_config, fragment", [
    ({}, "lacks 'partition-id'"),
    ({"partition-id": 4, "num-partitions": 4}, "partition-id = 4 must lie in 0..3"),
    ({"partition-id": 0, "num-partitions": 0}, "num-partitions = 0"),
    ({"partition-id": 0, "num-partitions": 2, "data-dir": 3}, "data-dir"),
])
def test_bad_node_config_names_the_key(node_config, fragment):
    with pytest.raises(NodeConfigError, match=fragment):
        NodeSettings.from_node_config(node_config)


def test_resume_accepts_the_same_experiment_with_other_paths(finished_run, tmp_path):
    cfg = ExperimentConfig.from_flat({"resume-from": str(finished_run), "fl.num-rounds": 3,
                                      "fl.node-wait": 5.0})
    with pytest.raises(Exception, match="different experiment.*fl.num-rounds"):
        RunStore.locate(cfg)  # more rounds is another experiment (the LR schedule moves)
    ckpt = torch.load(finished_run / "checkpoint.pt")
    ckpt["round"] = 1
    torch.save(ckpt, finished_run / "checkpoint.pt")
    cfg = ExperimentConfig.from_flat({"resume-from": str(finished_run), "fl.num-rounds": 2,
                                      "fl.node-wait": 5.0, "out.dir": "/elsewhere"})
    store, resume = RunStore.locate(cfg)
    assert store.root == finished_run and resume.next_round == 2


def test_config_error_lists_all_problems_at_once():
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_flat({"attack.eps": 2.0, "fl.partition": "x", "model.width": 0})
    assert str(err.value).count("\n  - ") == 3
