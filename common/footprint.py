"""Will the model fit? Training and evaluation memory of a config against the device's memory.

An estimate, checked before any work starts (harness preflight, ServerApp start), never in
the config parse, which stays device-independent:

  training   = 4 B x parameters x 3 (weights, gradients, SGD momentum)
               + PEAK_OVER_SAVED x saved activations of one step's batch
                 (train.batch-size images x the loss parts: clean, PGD, noise copies)
               + the client's uint8 images on the device + RUNTIME_BYTES
  evaluation = 4 B x parameters + PEAK_OVER_SAVED x saved activations of one
               eval.batch-size attack batch + the evaluation images + RUNTIME_BYTES

The activations a step saves for its backward pass are counted, not guessed: the model runs
once at widths 1 and 2 on two CPU images, and since every saved tensor is a feature map (whose
size grows with the width) or a constant, the count at any width follows by a straight line.
That covers every activation (whose saved tensors differ) and both variants.
PEAK_OVER_SAVED is the largest measured ratio of the peak RSS of a real training step on CPU
to that count, rounded up (the measurements: docs/performance.md): the backward pass's
gradient buffers and temporaries. On CUDA, bf16 autocast saves smaller
activations, so the estimate errs on the safe side there.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from .config import ConfigError, ExperimentConfig
from .device import CLIENT_GPUS_ENV, choose_client_device, server_device
from .models import build_model

GIB = 1024**3
FLOAT_BYTES = 4
PEAK_OVER_SAVED = 1.5
RUNTIME_BYTES = 512 * 1024**2  # the interpreter with torch loaded, or the CUDA context
IMAGE_BYTES = 3 * 32 * 32  # uint8, as images stay on the training device
TRAIN_IMAGES, TEST_IMAGES = 50_000, 10_000  # CIFAR-10: what data.*-limit = 0 means
PROBE_IMAGES = 2


@functools.lru_cache(maxsize=64)
def parameters(width: int, variant: str) -> int:
    """Exact parameter count, from a model built without memory (meta device)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model("relu", width, variant).parameters())


@functools.lru_cache(maxsize=64)
def _saved_bytes(activation: str, width: int, variant: str) -> int:
    """Bytes one training-mode forward of PROBE_IMAGES images saves for its backward pass,
    each storage counted once (in-place ReLU saves into its input's storage), without the
    weights the convolutions save (they are the parameters, counted apart)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        model = build_model(activation, width, variant).train()
        x = torch.rand(PROBE_IMAGES, 3, 32, 32, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    for tensor in (*model.parameters(), *model.buffers()):
        storages.pop(tensor.untyped_storage().data_ptr(), None)
    return sum(storages.values())


def activation_bytes(activation: str, width: int, variant: str, images: int) -> int:
    """Saved activations of a forward pass over `images` images at `width`, in fp32."""
    at_1, at_2 = _saved_bytes(activation, 1, variant), _saved_bytes(activation, 2, variant)
    per_probe = at_1 + (at_2 - at_1) * (width - 1)
    return per_probe * images // PROBE_IMAGES


@dataclass(frozen=True)
class Estimate:
    """Bytes of one training process or of the central evaluation."""

    state: int  # parameters (and, for training, gradients and momentum)
    activations: int  # of `batch` images x `copies` (training: the loss parts)
    batch: int
    copies: int
    data: int  # the uint8 images held on the device
    total: int


def _estimate(cfg: ExperimentConfig, batch: int, copies: int, tensors: int,
              data_images: int) -> Estimate:
    m = cfg.model
    state = tensors * FLOAT_BYTES * parameters(m.width, m.variant)
    saved = activation_bytes(m.activation, m.width, m.variant, batch * copies)
    acts = int(PEAK_OVER_SAVED * saved)
    data = data_images * IMAGE_BYTES
    return Estimate(state, acts, batch, copies, data, state + acts + data + RUNTIME_BYTES)


def training(cfg: ExperimentConfig) -> Estimate:
    """One client's training step; a batch never holds more images than the training set."""
    held = cfg.data.train_limit or TRAIN_IMAGES
    parts = len(cfg.train.loss_parts())
    return _estimate(cfg, min(cfg.train.batch_size, held), parts, 3, held)


def evaluation(cfg: ExperimentConfig) -> Estimate:
    """The central evaluation: an attack's forward and backward pass over one eval batch."""
    held = cfg.data.eval_limit or TEST_IMAGES
    return _estimate(cfg, min(cfg.eval.batch_size, held), 1, 1, held)


def _meminfo_total() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemTotal line")


def device_memory(device: str, share: float | None = None) -> tuple[int, str]:
    """(bytes, description) of what a process on `device` may use: the GPU's total memory
    (times the share the harness caps a client at), else the system's RAM."""
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        total = props.total_memory
        if share is not None and share < 1:
            return int(total * share), (f"{share:g} of the {total / GIB:.1f} GiB of GPU "
                                        f"{props.name}")
        return total, f"GPU {props.name}"
    return _meminfo_total(), "system RAM (MemTotal)"


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def check_fits(cfg: ExperimentConfig, gpu_share: float | None = None) -> None:
    """Refuse a config whose training or central evaluation cannot fit the memory of the
    device it would run on (this machine's). gpu_share: the GPU share per client the harness
    is about to give; None: what the environment says, as the clients will read it (unset
    under plain `flwr run` and on SuperNodes: a client uses a visible GPU whole)."""
    problems = []
    client_gpus = os.environ.get(CLIENT_GPUS_ENV) if gpu_share is None else str(gpu_share)
    client = choose_client_device(torch.cuda.is_available(), client_gpus)
    limit, where = device_memory(client.device, client.memory_fraction)
    t = training(cfg)
    if t.total > limit:
        problems.append(
            f"model.width={cfg.model.width} ({cfg.model.variant}, {cfg.model.activation}) "
            f"with train.batch-size={cfg.train.batch_size} needs about {_gib(t.total)} to "
            f"train (estimate: parameters, gradients and momentum {_gib(t.state)}, "
            f"activations of a batch of {t.batch:,} images x {t.copies} loss parts "
            f"({', '.join(cfg.train.loss_parts())}) {_gib(t.activations)}, images and "
            f"runtime {_gib(t.data + RUNTIME_BYTES)}), "
            f"more than the {_gib(limit)} of {where}; lower model.width or "
            "train.batch-size")
    limit, where = device_memory(server_device().type)
    e = evaluation(cfg)
    if e.total > limit:
        problems.append(
            f"model.width={cfg.model.width} with eval.batch-size={cfg.eval.batch_size} needs "
            f"about {_gib(e.total)} for the central evaluation's attacks (estimate: "
            f"parameters {_gib(e.state)}, activations of {e.batch:,} images "
            f"{_gib(e.activations)}), more than the {_gib(limit)} of {where}; lower "
            "model.width or eval.batch-size")
    if problems:
        raise ConfigError("the model will not fit in memory:\n  - " + "\n  - ".join(problems))
