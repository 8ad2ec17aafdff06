"""SIGTERM and SIGHUP stop the harness the way Ctrl-C does: every process it started is
stopped, the run is recorded as stopped and stays resumable, the exit code is 128 + signal.
The harness also runs from the interpreter's own environment (no activated venv on PATH)."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pandas as pd
import pytest
import torch

from .conftest import ROOT
from .processes import kill_all, processes_with, wait_for, wait_until_gone

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# A stand-in for the harness: one child that survives SIGTERM (so stop_tree needs its whole
# timeout and then SIGKILL) and says when stop_tree's SIGTERM reached it, torn down in a
# `finally`, under cli.main's signal handling.
SCRIPT = textwrap.dedent(r"""
    import subprocess, sys, time
    from simulation.procs import stop_reason, stop_signal, stop_signals, stop_tree

    STUBBORN = ("import os, signal, time; "
                "signal.signal(signal.SIGTERM, lambda *_: os.write(2, b'TERM received\\n')); "
                "print('ready', flush=True); time.sleep(60)")
    with stop_signals():
        try:
            child = subprocess.Popen([sys.executable, "-c", STUBBORN], start_new_session=True,
                                     stdout=subprocess.PIPE)
            child.stdout.readline()  # it survives SIGTERM from now on
            print("child", child.pid, flush=True)
            try:
                if sys.argv[1] == "wait":
                    print("waiting", flush=True)
                    time.sleep(60)
            finally:
                print("teardown", flush=True)
                if sys.argv[1] == "wait":
                    time.sleep(0.5)  # teardown work besides stop_tree (files, status.json)
                stop_tree(child, timeout=1.5)
                print("torn down", flush=True)
        except KeyboardInterrupt as exc:
            print(stop_reason(exc), flush=True)
            sys.exit(128 + stop_signal(exc))
    print("finished", flush=True)
""")


def start_script(mode, ignored=()):
    def signals():  # a suite started in the background inherits ignored signals
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-c", SCRIPT, mode], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=signals)


def read_until(proc, text, seen, timeout=30.0):
    """Read the script's output (bounded) until `text` appears; return all of it so far."""
    deadline = time.monotonic() + timeout
    while text not in seen[0]:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} within {timeout:.0f} s:\n{seen[0]}"
        if select.select([proc.stdout], [], [], left)[0]:
            chunk = os.read(proc.stdout.fileno(), 4096).decode()
            assert chunk, f"the script ended before {text!r}:\n{seen[0]}"
            seen[0] += chunk
    return seen[0]


def finish(proc, seen, timeout=30.0):
    """Wait for the script to exit; return all its output (a surviving child may hold the
    pipe open, so read what is there instead of waiting for its end)."""
    proc.wait(timeout=timeout)
    while select.select([proc.stdout], [], [], 0.2)[0]:
        chunk = os.read(proc.stdout.fileno(), 4096).decode()
        if not chunk:
            break
        seen[0] += chunk
    return seen[0]


def child_pid(output):
    return int(output.split("child ", 1)[1].split()[0])


def gone(pid):
    from simulation.procs import alive

    alive_now = alive(pid)
    if alive_now:
        os.kill(pid, signal.SIGKILL)  # do not leave it behind when the test fails
    return not alive_now


@pytest.mark.parametrize("first", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_runs_the_whole_teardown_even_when_more_signals_follow(first):
    proc, seen = start_script("wait"), [""]
    try:
        read_until(proc, "waiting", seen)
        proc.send_signal(first)
        read_until(proc, "teardown", seen)
        proc.send_signal(signal.SIGTERM)  # impatient: `kill` again, Ctrl-C again
        proc.send_signal(signal.SIGINT)
        output = finish(proc, seen)
    finally:
        proc.kill()
    assert proc.returncode == 128 + first, output
    assert "torn down" in output and f"stopped by {signal.Signals(first).name}" in output
    assert gone(child_pid(output))


def test_a_signal_during_teardown_waits_until_the_processes_are_stopped():
    proc, seen = start_script("run-through"), [""]
    try:
        read_until(proc, "TERM received", seen)  # stop_tree is waiting for the child
        proc.send_signal(signal.SIGTERM)
        output = finish(proc, seen)
    finally:
        proc.kill()
    # Raised after stop_tree had SIGKILLed the child (it ignores SIGTERM), not inside it.
    assert proc.returncode == 143 and "stopped by SIGTERM" in output, output
    assert gone(child_pid(output))
    assert "torn down" not in output and "finished" not in output


def test_a_signal_ignored_at_start_stays_ignored():
    """`nohup` ignores SIGHUP; the harness must not undo that."""
    proc, seen = start_script("wait", ignored=(signal.SIGHUP,)), [""]
    try:
        read_until(proc, "waiting", seen)
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert proc.poll() is None and "teardown" not in seen[0]
        proc.send_signal(signal.SIGTERM)
        output = finish(proc, seen)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "stopped by SIGTERM" in output, output


@pytest.mark.flower
def test_a_superlink_that_fails_to_start_is_reported_with_its_log(tmp_path, monkeypatch):
    """The log named in the error still exists, and its end is in the message."""
    from simulation import engine

    with socket.socket() as taken:  # the SuperLink's port is in use: it cannot start
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(engine, "free_port", lambda: taken.getsockname()[1])
        monkeypatch.setattr(engine, "START_TIMEOUT", 60.0)
        with pytest.raises(engine.EngineError) as error:
            with engine.simulation_link(tmp_path / "run"):
                pass
    message = str(error.value)
    log = tmp_path / "run" / "superlink.log"
    assert f"the end of {log}:" in message and log.is_file()
    assert "address already in use" in message  # the cause, from the log's last lines


TINY = ["data.eval-limit=50", "train.local-epochs=1", "train.batch-size=32", "model.width=8",
        "eval.attacks=fgsm", "data.train-limit=300"]


@pytest.mark.flower
def test_sigterm_mid_run_stops_every_process_and_leaves_a_resumable_stopped_run(
        data_dir, tmp_path):
    """Also: the harness runs with no venv on PATH (as from cron or an IDE), and its clients
    are told that they have no GPU share."""
    from common.run_folder import RunStore
    from simulation.overrides import build_config

    bare_path = "/usr/bin:/bin"
    assert shutil.which("flower-superexec", path=bare_path) is None
    marker = f"harness-{uuid.uuid4().hex}"
    env = {**os.environ, "ROBUSTFL_TEST_MARKER": marker, "PATH": bare_path}
    out = tmp_path / "runs"
    assignments = [f"data.dir={data_dir}", f"out.dir={out}", "out.run-name=stopped",
                   "fl.num-rounds=30", *TINY]
    run = out / "stopped"
    output = tmp_path / "harness.out"

    def status():
        path = run / "status.json"
        return json.loads(path.read_text()) if path.exists() else {}

    with output.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "simulation", "run", "--num-supernodes", "2",
             *[arg for pair in assignments for arg in ("--set", pair)]],
            cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    try:
        wait_for(lambda: proc.poll() is not None or
                 status().get("phase", "").startswith("round 2:"), 300,
                 "round 2 of the run to start", lambda: output.read_text()[-3000:])
        assert proc.poll() is None, output.read_text()[-3000:]
        before = processes_with(f"ROBUSTFL_TEST_MARKER={marker}")
        workers = [pid for pid, cmd in before.items() if cmd.startswith("ray::")]
        shares = {pid: _env_value(pid, "ROBUSTFL_CLIENT_GPUS") for pid in workers}
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=90)
        stop_seconds = time.monotonic() - sent
        leftovers = wait_until_gone(f"ROBUSTFL_TEST_MARKER={marker}")
    finally:
        proc.kill()
        kill_all(f"ROBUSTFL_TEST_MARKER={marker}")
    text = output.read_text()
    print(f"{len(before)} processes before SIGTERM; harness exited after {stop_seconds:.1f} s")
    assert not leftovers, leftovers
    assert code == 143, text[-3000:]
    assert stop_seconds < 60
    assert len(before) >= 5, before  # SuperLink, SuperExec, flwr run, ServerApp, Ray, ...
    assert workers and set(shares.values()) == {"0"}, (before, shares)
    assert "stopped by SIGTERM; continue with the same command plus --set resume=true" in text

    final = status()
    assert final["status"] == "stopped" and final["reason"] == "stopped by SIGTERM", final
    done = final["last_round"]
    assert done >= 1
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=True)["round"]
    assert checkpoint in (done, done + 1)  # killed between the checkpoint and the status
    assert pd.read_csv(run / "rounds.csv")["round"].tolist()[:done] == list(range(1, done + 1))
    assert (run / "superlink.log").stat().st_size > 0  # kept in the run folder

    cfg = build_config([], [*assignments, "resume=true"])
    _, resume = RunStore.locate(cfg)
    assert resume.next_round == checkpoint + 1


def _env_value(pid, key):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = f.read().decode(errors="replace").split("\0")
    except OSError:
        return None
    return next((p.split("=", 1)[1] for p in pairs if p.startswith(f"{key}=")), None)
