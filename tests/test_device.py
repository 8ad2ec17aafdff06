"""Device choice: a client with no GPU share trains on the CPU even where CUDA is visible; a
fractional share caps its GPU memory; the harness passes the share to every client."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from common.device import CLIENT_GPUS_ENV, DeviceChoice, choose_client_device, valid_gpu_share
from simulation.cli import main as cli_main
from simulation.engine import flower_env


@pytest.mark.parametrize("cuda, share, expected", [
    (True, "0", DeviceChoice("cpu")),  # --gpus-per-client 0 on a CUDA host
    (True, "0.25", DeviceChoice("cuda", 0.25)),
    (True, "1", DeviceChoice("cuda")),
    (True, "2", DeviceChoice("cuda")),
    (False, "0.5", DeviceChoice("cpu")),
    (False, "0", DeviceChoice("cpu")),
    (True, None, DeviceChoice("cuda")),  # plain `flwr run`, SuperNodes: no share given
    (False, None, DeviceChoice("cpu")),
    (True, "", DeviceChoice("cuda")),
])
def test_client_device_follows_the_gpu_share(cuda, share, expected):
    assert choose_client_device(cuda, share) == expected


@pytest.mark.parametrize("share", ["-0.5", "1.5", "nan", "inf", "lots"])
def test_a_bad_gpu_share_in_the_environment_is_named(share):
    with pytest.raises(ValueError, match=rf"{CLIENT_GPUS_ENV}='{share}'.*whole number"):
        choose_client_device(True, share)


def test_gpu_shares_a_client_can_be_given():
    assert all(valid_gpu_share(g) for g in (0, 0.1, 0.5, 1, 2, 8))
    assert not any(valid_gpu_share(g) for g in (-0.1, 1.5, 2.5, float("nan"), float("inf")))


def test_the_harness_tells_every_flower_process_the_share_and_lets_ray_hide_unshared_gpus(
        tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    cpu_only = flower_env(tmp_path, 0.0)
    assert cpu_only[CLIENT_GPUS_ENV] == "0"
    assert cpu_only["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "1"  # Ray empties CUDA_VISIBLE_DEVICES
    shared = flower_env(tmp_path, 0.25)
    assert shared[CLIENT_GPUS_ENV] == "0.25"
    assert choose_client_device(True, shared[CLIENT_GPUS_ENV]) == DeviceChoice("cuda", 0.25)
    # The interpreter's own console scripts come first, activated venv or not.
    assert cpu_only["PATH"] == f"{Path(sys.executable).parent}:/usr/bin:/bin"


@pytest.mark.parametrize("value, problem", [
    ("1.5", "must be 0 (CPU only), a fraction in (0, 1]"),
    ("-1", "must be 0 (CPU only), a fraction in (0, 1]"),
    ("0.5", "this machine has no CUDA GPU"),
])
def test_bad_gpus_per_client_is_refused_before_anything_starts(value, problem, tmp_path,
                                                                capsys, monkeypatch):
    import torch

    if value == "0.5" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "runs"
    code = cli_main(["run", "--gpus-per-client", value, "--set", f"out.dir={out}"])
    assert code == 2
    assert problem in capsys.readouterr().err
    assert not out.exists()
