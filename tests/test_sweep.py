"""A two-axis sweep (1 x 1 cell) with two seeds at toy scale: interrupted after its first
run, resumed, reported with a row per seed and intervals over the seeds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest

from simulation.cli import main as cli_main
from simulation.overrides import UsageError, flower_overrides
from simulation.studies import select_cells, study_cells
from simulation.sweep import check_same_sweep, seed_configs

from .conftest import ROOT
from .processes import kill_all, wait_until_gone

# Two axes, so that the cell is named from both; one cell with two seeds: two runs, because
# each starts its own Flower. Seed 0 is the cell's own (the config's seed), seed 1 beside it.
CELL = "activation=relu-schedule=cosine"
RUNS = [CELL, f"{CELL}-seed1"]


def sweep_command(data_dir, out):
    return [sys.executable, "-m", "simulation", "sweep", "grid", "--scale", "toy",
            "--grid", "model.activation=relu", "--grid", "train.schedule=cosine",
            "--centralized", "--seeds", "2", "--out", str(out), "--set", f"data.dir={data_dir}",
            "--attacks", "fgsm,pgd3,cw2,deepfool", "--noise-attacks", "fgsm,eot-pgd2",
            # the gradient-masking checks cost minutes a run here: test_diagnostics.py has them
            "--no-diagnostics"]


@pytest.mark.flower
@pytest.mark.slow
def test_sweep_resumes_after_an_interruption_and_reports_each_cell_and_seed_once(data_dir,
                                                                                  tmp_path):
    out = tmp_path / "sweep"
    marker = f"harness-{uuid.uuid4().hex}"
    env = {**os.environ, "ROBUSTFL_TEST_MARKER": marker}
    first = out / "cells" / RUNS[0] / "status.json"
    try:
        # A suite started in the background inherits an ignored SIGINT, and Python then
        # installs no KeyboardInterrupt handler: give the harness Ctrl-C's default back.
        proc = subprocess.Popen(sweep_command(data_dir, out), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 300
        while not (first.exists() and '"finished"' in first.read_text()):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the first run did not finish in 300 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the harness stops its Flower processes
        proc.wait(timeout=60)
        assert proc.returncode != 0
        assert not wait_until_gone(f"ROBUSTFL_TEST_MARKER={marker}")
        assert not (out / "report" / "results.csv").exists()

        resumed = subprocess.run(sweep_command(data_dir, out), cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=600)
    finally:
        kill_all(f"ROBUSTFL_TEST_MARKER={marker}")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"[run 1/2 {CELL} seed 0] finished earlier: skipped" in resumed.stdout
    rounds = pd.read_csv(out / "cells" / RUNS[0] / "rounds.csv")
    assert rounds["round"].tolist() == [1]  # the finished run was not run again
    check_seeded_report(out)


def check_seeded_report(out):
    """The report of the two-seed sweep: a row per cell and seed, intervals over seeds."""
    table = pd.read_csv(out / "report" / "results.csv")
    # one row per cell and seed, each from its own run folder
    assert table[["cell", "seed", "run"]].values.tolist() == [[CELL, 0, RUNS[0]],
                                                               [CELL, 1, RUNS[1]]]
    assert (table["status"] == "finished").all()
    assert table[["natural_acc", "pgd3_acc", "eot_pgd2_noise_acc", "deepfool_median_l2"]] \
        .notna().all().all()
    assert (table["eval_examples"] == 40).all()  # the toy scale's data.eval-limit, counted
    assert pd.read_parquet(out / "report" / "results.parquet")[["cell", "seed"]] \
        .equals(table[["cell", "seed"]])
    all_rounds = pd.read_csv(out / "report" / "rounds.csv")
    assert all_rounds[["cell", "seed", "round"]].values.tolist() == [[CELL, 0, 1],
                                                                      [CELL, 1, 1]]
    assert (out / "report" / "accuracy_per_round.png").stat().st_size > 10_000
    tables = (out / "report" / "tables.md").read_text()
    assert "mean ± 95% interval over 2 seeds" in tables and "overstates" in tables
    mean = 100 * table["natural_acc"].mean()
    row = next(line for line in tables.splitlines() if line.startswith(f"| {CELL} | 2 |"))
    assert f"| {mean:.1f} ± " in row  # the natural accuracy's mean over the seeds, ± its t


def test_each_seed_of_a_cell_is_a_run_of_its_own(tmp_path):
    cell, = study_cells("grid", "toy", ["model.activation=relu"], centralized=True)
    runs = seed_configs(cell, tmp_path, {"seed": 7}, 3)
    assert [seed for seed, _ in runs] == [7, 8, 9]  # the config's seed, + 1, + 2
    assert [cfg.seed for _, cfg in runs] == [7, 8, 9]
    # what Flower's run config gets
    assert [flower_overrides(cfg)["seed"] for _, cfg in runs] == [7, 8, 9]
    assert [cfg.run_name() for _, cfg in runs] == [
        "activation=relu", "activation=relu-seed8", "activation=relu-seed9"]
    assert {cfg.out.dir for _, cfg in runs} == {str(tmp_path / "cells")}


def test_a_sweep_json_from_before_seeds_goes_on_more_cells_extend_it_others_are_refused(tmp_path):
    old = {"sweep": "grid", "cells": ["a", "b"], "extra": {}}  # no "seeds": one seed each
    (tmp_path / "sweep.json").write_text(json.dumps(old))
    check_same_sweep(tmp_path, {**old, "seeds": 3})  # the same cells, more seeds: fine
    assert json.loads((tmp_path / "sweep.json").read_text())["seeds"] == 3
    with pytest.raises(UsageError, match="holds a sweep with other cells"):
        check_same_sweep(tmp_path, {**old, "cells": ["a"], "seeds": 3})
    with pytest.raises(UsageError, match=r"\['b'\] not in this one"):
        check_same_sweep(tmp_path, {**old, "cells": ["a", "c"], "seeds": 3})
    # more cells of the same study extend it; the record then lists them all
    check_same_sweep(tmp_path, {**old, "cells": ["a", "b", "c"], "seeds": 3})
    assert json.loads((tmp_path / "sweep.json").read_text())["cells"] == ["a", "b", "c"]
    with pytest.raises(UsageError, match="holds a sweep with other cells"):
        check_same_sweep(tmp_path, {**old, "seeds": 3})  # and cannot shrink back


@pytest.mark.parametrize("command, fragment", [
    (["sweep", "grid", "--scale", "toy", "--grid", "model.activation=relu", "--seeds", "0"],
     "--seeds must be between 1 and 100, got 0"),
    (["run", "--seeds", "101"], "--seeds must be between 1 and 100, got 101"),
    (["run", "--seeds", "2", "--set", "seed=4294967295"], "goes past the largest seed"),
    (["run", "--seeds", "2", "--set", "resume-from=/x/checkpoint.pt"],
     "with --seeds use --set resume=true"),
    # the second seed's folder holds results: refused before the first seed starts
    (["run", "--seeds", "2", "--set", "out.run-name=r"], "results already exist in"),
])
def test_seeds_are_checked_before_any_run_starts(command, fragment, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "r-seed1").mkdir(parents=True)
    (out / "r-seed1" / "rounds.csv").write_text("round\n1\n")
    where = ["--out", str(out)] if command[0] == "sweep" else ["--set", f"out.dir={out}"]
    assert cli_main([*command, *where]) == 2
    assert fragment in capsys.readouterr().err
    written = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert written == [Path("r-seed1", "rounds.csv")]  # nothing written, nothing touched
    assert (out / "r-seed1" / "rounds.csv").read_text() == "round\n1\n"


def test_cells_picks_a_part_of_a_study_and_a_pattern_matching_nothing_is_refused(
        tmp_path, capsys):
    cells = study_cells("noniid", "cpu")
    picked = select_cells(cells, "baseline-no-at, partition=classes-*")
    assert [c.name for c in picked] == ["baseline-no-at"] + [
        f"partition=classes-shared-share={s}" for s in ("0.0", "0.2", "0.4", "0.6")]
    out = tmp_path / "out"
    assert cli_main(["sweep", "noniid", "--cells", "baseline-no-at,iid-*", "--out",
                     str(out)]) == 2
    err = capsys.readouterr().err
    assert "iid-*" in err and "partition=iid-shared-share=0.0" in err  # names what exists
    assert not out.exists()


def test_run_summary_gives_each_seed_and_the_interval_over_seeds():
    from simulation.cli import seed_summary

    def rounds(natural, pgd):  # round 2 had no evaluation: the last evaluated is round 1
        return pd.DataFrame({"round": [1, 2], "natural_acc": [natural, None],
                             "pgd10_acc": [pgd, None], "eval_examples": [500, None]})

    text = seed_summary({0: rounds(0.30, 0.10), 1: rounds(0.32, 0.12), 2: rounds(0.31, 0.11)})
    assert "mean ± 95% interval over 3 seeds" in text
    natural = next(line for line in text.splitlines() if line.startswith("natural_acc"))
    # the seeds' 2.48 and Wilson's 4.04 for 155 of 500 validation images, in quadrature
    assert natural.split() == ["natural_acc", "30.0", "32.0", "31.0", "31.0", "±", "4.7"]
    one = seed_summary({5: rounds(0.30, 0.10)})  # one seed: Wilson over its 500 images
    assert "Wilson" in one and "30.0 [26.1, 34.2]" in one
