"""The validation split (data.val-size) and best.pt: checkpoints are selected on training
images that no client and no shared pool holds, never on the test set."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from common import results
from common.config import ConfigError, ExperimentConfig
from common.models import build_model
from common.partition import (
    PartitionError,
    available_indices,
    balanced_subset,
    make_plan,
    shared_plan,
    split_for,
    validation_indices,
)
from common.run_folder import RunStore, best_round

LABELS = np.repeat(np.arange(10), 500)[np.random.default_rng(0).permutation(5000)]


# --- the split ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["iid", "classes", "dirichlet"])
@pytest.mark.parametrize("train_limit", [0, 2000])
def test_the_validation_split_is_disjoint_from_every_client_and_from_g(scheme, train_limit):
    val = validation_indices(LABELS, 500, seed=7)
    p = make_plan(LABELS, scheme, 10, seed=7, train_limit=train_limit, val_size=500,
                  shared_fraction=0.1, min_partition_size=10)
    clients = np.concatenate(p.partitions)
    assert val.size == 500 and np.unique(val).size == 500
    assert np.intersect1d(val, clients).size == 0
    assert np.intersect1d(val, p.shared).size == 0
    used = np.concatenate([clients, p.shared])
    if train_limit:  # train-limit counts the images outside the split
        assert used.size == train_limit
    else:  # nothing else is held back: clients, G and val cover the training set
        assert np.array_equal(np.sort(np.concatenate([used, val])), np.arange(LABELS.size))


def test_the_validation_split_is_class_balanced_and_seeded():
    val = validation_indices(LABELS, 500, seed=7)
    assert np.bincount(LABELS[val], minlength=10).tolist() == [50] * 10
    assert np.array_equal(val, validation_indices(LABELS, 500, seed=7))
    assert not np.array_equal(val, validation_indices(LABELS, 500, seed=8))
    # its own stream: not the first images of the training subset's draw
    assert not np.array_equal(val, available_indices(LABELS, 500, seed=7))


def test_no_validation_split_keeps_the_earlier_training_subset():
    """val-size 0 draws exactly the subset (and so the split) of runs before the key."""
    earlier = balanced_subset(LABELS, 1500, np.random.default_rng([7, 11]))
    assert np.array_equal(available_indices(LABELS, 1500, seed=7, val_size=0), earlier)
    assert validation_indices(LABELS, 0, seed=7).size == 0


def test_train_limit_beyond_what_the_split_leaves_takes_all_of_it():
    """The local 5,000-image subset with cpu-small's train-limit 5000: 4,500 remain."""
    val = validation_indices(LABELS, 500, seed=0)
    used = available_indices(LABELS, 5000, seed=0, val_size=500)
    assert np.array_equal(used, np.setdiff1d(np.arange(5000), val))


def test_a_split_that_leaves_nothing_to_train_on_is_refused():
    with pytest.raises(PartitionError, match=r"data.val-size=5000 would take all 5,000 .*"
                                             r"lower data.val-size"):
        split_for(ExperimentConfig.from_flat({"data.val-size": 5000}), LABELS, 2)
    with pytest.raises(ConfigError, match=r"data.val-size = 20000 is invalid.*<= 10,000"):
        ExperimentConfig.from_flat({"data.val-size": 20000})


def test_the_harness_refuses_a_split_larger_than_the_data_before_flower_starts(data_dir,
                                                                               tmp_path):
    from simulation.runner import Resources, preflight

    cfg = ExperimentConfig.from_flat({"data.dir": str(data_dir), "data.val-size": 5000,
                                      "out.dir": str(tmp_path)})
    with pytest.raises(PartitionError, match="data.val-size=5000 would take all 5,000"):
        preflight(cfg, Resources(2))
    preflight(cfg.replace(**{"data.val-size": 4999}), Resources(2))


SCRIPT = """
import hashlib, numpy as np
from common.partition import make_plan, validation_indices
labels = np.repeat(np.arange(10), 500)[np.random.default_rng(0).permutation(5000)]
for scheme in ("iid", "classes", "dirichlet"):
    p = make_plan(labels, scheme, 6, seed=3, train_limit=3000, val_size=400,
                  shared_fraction=0.1)
    h = hashlib.sha256(validation_indices(labels, 400, 3).tobytes())
    for part in (p.shared, *p.partitions):
        h.update(part.tobytes())
    print(h.hexdigest())
"""


def test_server_and_clients_derive_the_same_split():
    """A client (another process, split_for from its config) and the server (shared_plan: G
    without partitions) agree on the partitions, G and the validation split."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    for scheme, digest in zip(("iid", "classes", "dirichlet"), out, strict=True):
        cfg = ExperimentConfig.from_flat({"seed": 3, "fl.partition": scheme,
                                          "fl.shared-pool": 0.1, "data.train-limit": 3000,
                                          "data.val-size": 400})
        p = split_for(cfg, LABELS, 6)
        h = hashlib.sha256(validation_indices(LABELS, 400, cfg.seed).tobytes())
        for part in (p.shared, *p.partitions):
            h.update(part.tobytes())
        assert digest == h.hexdigest(), scheme
        assert np.array_equal(shared_plan(cfg, LABELS).shared, p.shared)


def _image_hashes(images: torch.Tensor) -> set[str]:
    return {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in images.cpu()}


def test_the_in_run_evaluation_uses_the_split_not_the_test_set(cifar):
    """Real data: the evaluator's images are validation images (training images that no
    client holds), none of them is a test image; eval-limit takes a balanced part."""
    from server.central import CentralEvaluator

    cfg = ExperimentConfig.from_flat({"data.val-size": 500, "data.eval-limit": 200,
                                      "fl.shared-pool": 0.1, "data.train-limit": 4000,
                                      "eval.attacks": "fgsm", "eval.noise-std": 0.0})
    evaluator = CentralEvaluator(cfg, cifar, torch.device("cpu"))
    assert evaluator.eval_set == "val" and evaluator.images.shape[0] == 200
    assert np.bincount(evaluator.labels.numpy(), minlength=10).tolist() == [20] * 10
    val = validation_indices(cifar.train_y.numpy(), 500, cfg.seed)
    seen = _image_hashes(evaluator.images)
    assert seen <= _image_hashes(cifar.train_x[val])
    assert not seen & _image_hashes(cifar.test_x)
    plan = split_for(cfg, cifar.train_y.numpy(), 10)
    held = np.concatenate([plan.shared, *plan.partitions])
    assert not seen & _image_hashes(cifar.train_x[held])

    state = build_model("relu", 8).state_dict()
    assert evaluator(state, 1)["eval_set"] == "val"
    test_run = CentralEvaluator(cfg.replace(**{"data.val-size": 0}), cifar, torch.device("cpu"))
    assert test_run.eval_set == "test" and _image_hashes(test_run.images) <= \
        _image_hashes(cifar.test_x)


# --- best.pt --------------------------------------------------------------------------------


def rows(*values, eval_set="val"):
    """rounds.csv rows with these worst_acc values (None: round not evaluated)."""
    return pd.DataFrame([{"round": r, "natural_acc": 0.5 if v is not None else math.nan,
                          "worst_acc": v if v is not None else math.nan,
                          "eval_set": eval_set if v is not None else math.nan}
                         for r, v in enumerate(values, start=1)])


def test_best_round_is_the_highest_validation_robust_accuracy():
    assert best_round(rows(0.1, 0.3, 0.2), up_to=3).round == 2  # robust overfitting
    assert best_round(rows(0.1, 0.3, 0.3, 0.2), up_to=4).round == 2  # a tie keeps the earlier
    assert best_round(rows(0.1, None, 0.05), up_to=3).round == 1  # unevaluated rounds skip
    assert best_round(rows(0.1, 0.3, 0.2), up_to=1).round == 1  # rows after up_to ignored
    best = best_round(rows(0.1, 0.3), up_to=2)
    assert (best.column, best.value) == ("worst_acc", 0.3)


def test_rows_evaluated_on_the_test_set_never_select():
    assert best_round(rows(0.1, 0.3, eval_set="test"), up_to=2) is None
    mixed = pd.concat([rows(0.2), rows(0.1, 0.9, eval_set="test").iloc[1:]])
    assert best_round(mixed, up_to=2).round == 1
    assert best_round(pd.DataFrame(), up_to=2) is None


def test_without_an_l_inf_attack_the_natural_accuracy_selects():
    frame = rows(0.1, 0.3).drop(columns=["worst_acc"]).assign(natural_acc=[0.6, 0.4])
    assert (best_round(frame, up_to=2).round, best_round(frame, up_to=2).column) == \
        (1, "natural_acc")


def _state(seed: int) -> dict[str, torch.Tensor]:
    return {"w": torch.full((3,), float(seed))}


def _finish(store, cfg, rnd, worst):
    row = {"round": rnd, "natural_acc": 0.5, "worst_acc": worst, "eval_set": "val"}
    store.finish_round(cfg, row, [], _state(rnd))


def _best(store):
    return torch.load(store.best_path, weights_only=True)


def test_best_pt_follows_the_best_round_and_survives_a_resume(tmp_path):
    cfg = ExperimentConfig.from_flat({"out.dir": str(tmp_path), "out.run-name": "r",
                                      "fl.num-rounds": 5})
    store, _ = RunStore.open(cfg)
    for rnd, worst in [(1, 0.1), (2, 0.3), (3, 0.2)]:
        _finish(store, cfg, rnd, worst)
    best = _best(store)
    assert best["round"] == 2 and torch.equal(best["model"]["w"], _state(2)["w"])
    assert best["metric"] == "worst_acc" and best["value"] == pytest.approx(0.3)
    store.set_status("running", 3)
    assert store.status()["best_round"] == 2

    # Killed between round 4's checkpoint and its best.pt: resume writes it from the
    # checkpoint, the model of round 4.
    row = {"round": 4, "natural_acc": 0.5, "worst_acc": 0.4, "eval_set": "val"}
    store.record_round(row, [])
    store.save_checkpoint(cfg, 4, _state(4))
    assert _best(store)["round"] == 2
    resumed, point = RunStore.open(cfg.replace(resume=True))
    assert point.next_round == 5 and _best(resumed)["round"] == 4
    assert torch.equal(_best(resumed)["model"]["w"], _state(4)["w"])

    # Killed after round 5's rows but before its checkpoint: the stale row selects nothing
    # on resume, and the repeated round replaces it.
    store.record_round({"round": 5, "natural_acc": 0.5, "worst_acc": 0.9, "eval_set": "val"},
                       [])
    resumed, point = RunStore.open(cfg.replace(resume=True))
    assert point.next_round == 5 and _best(resumed)["round"] == 4
    _finish(resumed, cfg, 5, 0.35)
    assert _best(resumed)["round"] == 4
    resumed.save_final(_state(5))
    assert _best(resumed)["round"] == 4


def test_a_run_without_a_validation_split_writes_no_best_pt(tmp_path):
    cfg = ExperimentConfig.from_flat({"out.dir": str(tmp_path), "out.run-name": "r",
                                      "data.val-size": 0})
    store, _ = RunStore.open(cfg)
    row = {"round": 1, "natural_acc": 0.5, "worst_acc": 0.4, "eval_set": "test"}
    store.finish_round(cfg, row, [], _state(1))
    store.save_final(_state(1))
    assert not store.best_path.exists()


# --- the final evaluation on the test set: final and best ---------------------------------


def _finished_run(tmp_path, data_dir, best_round_: int, rounds: int = 3, best=None):
    """A finished run's folder: config, final.pt (a seeded width-8 model) and best.pt of
    round best_round_ (the final model when that is the last round)."""
    cfg = ExperimentConfig.from_flat({
        "data.dir": str(data_dir), "data.eval-limit": 16, "fl.num-rounds": rounds,
        "eval.attacks": "fgsm", "eval.noise-std": 0.0, "out.dir": str(tmp_path),
        "out.run-name": "run"})
    store = RunStore(tmp_path / "run")
    store.write_config(cfg)
    torch.manual_seed(0)
    final = build_model("relu", 8).state_dict()
    torch.save(final, store.final_path)
    if best is None:
        best = final if best_round_ == rounds else build_model("relu", 8).state_dict()
    results.save_torch(store.best_path, {"format": 1, "round": best_round_, "model": best,
                                         "metric": "worst_acc", "value": 0.5})
    return store.root, final, best


def _one_class_best(cifar) -> tuple[dict[str, torch.Tensor], float, float]:
    """A best.pt model that answers one class whatever the input, chosen so that its natural
    accuracy on the 16 test images of _finished_run differs from final.pt's: (its
    state_dict, its natural accuracy, final.pt's). Each row then shows which file it measured."""
    from common.partition import eval_indices

    idx = torch.from_numpy(eval_indices(cifar.test_y.numpy(), 16, 0))
    images, labels = cifar.test_x[idx].float() / 255, cifar.test_y[idx]
    torch.manual_seed(0)
    model = build_model("relu", 8).eval()
    with torch.no_grad():
        final_acc = (model(images).argmax(1) == labels).float().mean().item()
    shares = torch.bincount(labels, minlength=10) / 16
    k = int(next(c for c in range(10) if shares[c] != final_acc))
    best = {n: v.clone() for n, v in model.state_dict().items()}
    best["fc.weight"].zero_()
    best["fc.bias"].copy_(10 * torch.nn.functional.one_hot(torch.tensor(k), 10))
    return best, shares[k].item(), final_acc


def test_final_evaluation_reports_final_and_best(data_dir, cifar, tmp_path):
    from simulation.final_eval import evaluate_run

    best, best_acc, final_acc = _one_class_best(cifar)
    run, _, _ = _finished_run(tmp_path, data_dir, best_round_=2, best=best)
    frame = evaluate_run(run, [0.0], attacks="fgsm")
    assert sorted(zip(frame["model"], frame["model_round"])) == [("best", 2), ("final", 3)]
    by_model = frame.set_index("model")
    assert by_model.loc["final", "natural_acc"] == pytest.approx(final_acc)
    assert by_model.loc["best", "natural_acc"] == pytest.approx(best_acc)


def test_best_at_the_last_round_reuses_the_final_rows(data_dir, tmp_path, monkeypatch):
    from simulation import final_eval

    run, _, _ = _finished_run(tmp_path, data_dir, best_round_=3)
    evaluated = []
    real = final_eval._evaluate_model
    monkeypatch.setattr(final_eval, "_evaluate_model",
                        lambda *a, **k: evaluated.append(1) or real(*a, **k))
    frame = final_eval.evaluate_run(run, [0.0], attacks="fgsm")
    assert len(evaluated) == 1  # final.pt only
    final, best = (frame[frame["model"] == m].iloc[0] for m in ("final", "best"))
    assert best["model_round"] == final["model_round"] == 3
    assert best["fgsm_acc"] == final["fgsm_acc"]


def test_rows_cached_before_the_model_column_are_reused_as_final(data_dir, tmp_path,
                                                                  monkeypatch):
    from simulation import final_eval

    run, _, _ = _finished_run(tmp_path, data_dir, best_round_=2)
    first = final_eval.evaluate_run(run, [0.0], attacks="fgsm")
    old = first[first["model"] == "final"].drop(columns=["model", "model_round"])
    old.assign(natural_acc=0.123).to_csv(run / "final_eval.csv", index=False)  # as cached
    evaluated = []
    real = final_eval._evaluate_model
    monkeypatch.setattr(final_eval, "_evaluate_model",
                        lambda *a, **k: evaluated.append(1) or real(*a, **k))
    again = final_eval.evaluate_run(run, [0.0], attacks="fgsm")
    assert len(evaluated) == 1  # best.pt only: the old row is final.pt's
    final = again[again["model"] == "final"].iloc[0]
    assert final["natural_acc"] == 0.123 and final["model_round"] == 3


def test_the_report_keeps_final_columns_and_adds_best_ones(data_dir, cifar, tmp_path):
    from simulation.final_eval import FinalEval
    from simulation.report import CellRun, collect
    from simulation.studies import Cell
    from simulation.sweep import evaluate_runs

    run, _, _ = _finished_run(tmp_path, data_dir, best_round_=2, best=_one_class_best(cifar)[0])
    pd.DataFrame([{"round": r, "natural_acc": 0.1, "round_seconds": 1.0}
                  for r in (1, 2, 3)]).to_csv(run / "rounds.csv", index=False)
    outcomes = [CellRun(Cell("c", {}, True, 1), run, "finished")]
    final = FinalEval(attacks="fgsm,pgd2", noise_attacks="fgsm", eval_limit=16,
                      noise_levels=(0.0,), diagnostics=False)
    evaluate_runs(outcomes, final)
    table, _ = collect(outcomes, final)
    frame = pd.read_csv(run / "final_eval.csv").set_index("model")
    row = table.iloc[0]
    assert row["natural_acc"] == frame.loc["final", "natural_acc"]
    assert row["pgd2_acc"] == frame.loc["final", "pgd2_acc"]
    assert row["best_round"] == 2
    assert row["best_natural_acc"] == frame.loc["best", "natural_acc"]
    assert row["best_strongest"] == frame.loc["best", "pgd2_acc"]
    assert row["natural_acc"] != row["best_natural_acc"]  # two models, told apart
