"""Where models train and evaluate: the one home of device choice.

The simulation harness tells its clients their GPU share in ROBUSTFL_CLIENT_GPUS, because Ray
only schedules by that number: whether it hides the GPU from a 0-GPU actor depends on the Ray
version and RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO, and it never bounds a fractional actor's GPU
memory. Without the variable (plain `flwr run`, real SuperNodes) a client uses CUDA when it
sees a GPU; where Ray assigned GPUs to the actor it has already narrowed CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

CLIENT_GPUS_ENV = "ROBUSTFL_CLIENT_GPUS"
GPU_SHARE_RULE = ("0 (CPU only), a fraction in (0, 1] (clients share a GPU, each capped at "
                  "that fraction of its memory) or a whole number of GPUs")


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # "cuda" or "cpu"
    memory_fraction: float | None = None  # cap on this process's share of the GPU's memory


def valid_gpu_share(share: float) -> bool:
    """0, a fraction in (0, 1] or a whole number: what one client can be given of GPUs."""
    return math.isfinite(share) and share >= 0 and (share <= 1 or share == int(share))


def choose_client_device(cuda_available: bool, client_gpus: str | None) -> DeviceChoice:
    """The client's device from CUDA availability and the harness's GPU share (None: unset)."""
    if client_gpus is None or not client_gpus.strip():
        return DeviceChoice("cuda" if cuda_available else "cpu")
    try:
        share = float(client_gpus)
    except ValueError:
        share = math.nan
    if not valid_gpu_share(share):
        raise ValueError(f"{CLIENT_GPUS_ENV}={client_gpus!r}: the GPU share per client must "
                         f"be {GPU_SHARE_RULE}; unset it to use a visible GPU whole")
    if share == 0 or not cuda_available:
        return DeviceChoice("cpu")
    return DeviceChoice("cuda", share if share < 1 else None)


_memory_capped = False


def training_device() -> torch.device:
    """The ClientApp's device; caps this process's GPU memory at its share, once."""
    global _memory_capped
    choice = choose_client_device(torch.cuda.is_available(), os.environ.get(CLIENT_GPUS_ENV))
    if choice.memory_fraction is not None and not _memory_capped:
        torch.cuda.set_per_process_memory_fraction(choice.memory_fraction)
        _memory_capped = True
    return torch.device(choice.device)


def server_device() -> torch.device:
    """The ServerApp's central evaluation: CUDA when present (outside Ray's accounts)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
