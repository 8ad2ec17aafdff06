"""A two-axis sweep (2 x 1 cells) at toy scale: interrupted after its first cell, resumed,
reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pandas as pd
import pytest

from .conftest import ROOT
from .processes import kill_all, wait_until_gone

pytestmark = [pytest.mark.flower, pytest.mark.slow]

# Two axes, so that cells are named from both; two cells, because each starts its own Flower.
CELLS = ["activation=relu-schedule=cosine", "activation=telu-schedule=cosine"]


def sweep_command(data_dir, out):
    return [sys.executable, "-m", "simulation", "sweep", "grid", "--scale", "toy",
            "--grid", "model.activation=relu,telu", "--grid", "train.schedule=cosine",
            "--centralized", "--out", str(out), "--set", f"data.dir={data_dir}",
            "--attacks", "fgsm,pgd3,cw2,deepfool", "--noise-attacks", "fgsm,eot-pgd2"]


def test_sweep_resumes_after_an_interruption_and_reports_each_cell_once(data_dir, tmp_path):
    out = tmp_path / "sweep"
    marker = f"harness-{uuid.uuid4().hex}"
    env = {**os.environ, "ROBUSTFL_TEST_MARKER": marker}
    first = out / "cells" / CELLS[0] / "status.json"
    try:
        # A suite started in the background inherits an ignored SIGINT, and Python then
        # installs no KeyboardInterrupt handler: give the harness Ctrl-C's default back.
        proc = subprocess.Popen(sweep_command(data_dir, out), cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 300
        while not (first.exists() and '"finished"' in first.read_text()):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the first cell did not finish in 300 s"
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
    assert f"[cell 1/2 {CELLS[0]}] finished earlier: skipped" in resumed.stdout

    table = pd.read_csv(out / "report" / "results.csv")
    assert sorted(table["cell"]) == sorted(CELLS)  # each cell exactly once
    assert (table["status"] == "finished").all()
    assert table[["natural_acc", "pgd3_acc", "eot_pgd2_noise_acc", "deepfool_median_l2"]] \
        .notna().all().all()
    assert pd.read_parquet(out / "report" / "results.parquet")["cell"].tolist() \
        == table["cell"].tolist()
    rounds = pd.read_csv(out / "cells" / CELLS[0] / "rounds.csv")
    assert rounds["round"].tolist() == [1]  # the finished cell was not run again
    assert (out / "report" / "accuracy_per_round.png").stat().st_size > 10_000
    # a grid over activations draws the activation study's figure
    assert (out / "report" / "natural_vs_robust_by_activation.png").stat().st_size > 10_000
    tables = (out / "report" / "tables.md").read_text()
    assert "| cell |" in tables and "overstates" in tables
