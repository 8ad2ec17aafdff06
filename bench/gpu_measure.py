"""The measurements of `python -m bench.gpu`, one function each: a Rig in, a dict of figures
out. They time the project's own code (common.training.train, common.attacks.pgd as
common.evaluation runs it), never a copy of it."""

from __future__ import annotations

import copy
import dataclasses
import gc
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from common import autoattack, protocol
from common.attacks import GaussianNoise, eval_mode, pgd
from common.config import ExperimentConfig
from common.data import to_float
from common.evaluation import AttackSpec, EvalSettings, _attack
from common.models import build_model
from common.training import FastPath, TrainSettings, make_optimizer, train

from .at_measure import bare_passes
from .timing import interleaved, median, paired_ratio, spread

VARIANTS = {  # the two ends of the training path: plain, and what train() does on CUDA
    "fp32 NCHW": FastPath(),
    "channels_last + bf16": FastPath(channels_last=True, autocast=True),
}
CHANNELS_LAST = FastPath(channels_last=True)
CPU_EFFICIENCY = 0.969  # docs/performance.md: width 8, batch 32, PGD-3, one CPU thread
MEMORY_MARGIN = 0.10  # of the GPU's memory kept free when counting the clients that fit
GIB = 1024**3


@dataclass(frozen=True)
class Rig:
    """What every measurement shares: the preset at the bench's scale, the data on the
    device, and how many steps to warm up and to time."""

    cfg: ExperimentConfig
    device: torch.device
    images: torch.Tensor  # uint8 (N, 3, 32, 32) on the device
    labels: torch.Tensor
    attacks: tuple[AttackSpec, AttackSpec]  # the evaluation's PGD and EOT-PGD, as timed
    client_images: int  # what one client of the preset holds on its device
    warmup: int  # untimed steps per contender
    steps: int  # steps per timed call
    reps: int  # timed calls per contender (medians reported)
    compile_backend: str

    @property
    def settings(self) -> TrainSettings:
        """Round 1 of the preset, one epoch: PGD-k + noise + clean, soft labels, SGD."""
        return dataclasses.replace(protocol.train_settings(self.cfg, 1), epochs=1)

    @property
    def batch(self) -> int:
        return self.cfg.train.batch_size

    def model(self, fast: FastPath = FastPath()) -> torch.nn.Module:
        """The preset's model, the same initial weights every time, in fast's layout."""
        torch.manual_seed(0)
        m = self.cfg.model
        model = build_model(m.activation, m.width, m.variant).to(self.device)
        return model.to(memory_format=torch.channels_last) if fast.channels_last else model


def not_on_cpu(what: str) -> dict:
    return {"status": "skipped", "reason": f"not applicable on cpu: {what}"}


def _train_calls(model, rig: Rig, fast: FastPath, optimizer=None
                 ) -> Callable[[int], Callable[[], object]]:
    """steps -> a call of train() over that many batches (one optimizer across calls)."""
    settings = rig.settings
    optimizer = optimizer or make_optimizer(model, settings)
    seeds = itertools.count()

    def make(steps: int):
        x, y = rig.images[:steps * rig.batch], rig.labels[:steps * rig.batch]
        return lambda: train(model, x, y, settings, seed=next(seeds), optimizer=optimizer,
                             fast=fast)

    return make


def _timed(rig: Rig, makers: dict[str, Callable[[int], Callable[[], object]]]):
    """Seconds per call of rig.steps steps, per contender, after rig.warmup untimed steps
    (the first call also compiles, when the model is compiled)."""
    for make in makers.values():
        if rig.warmup:
            make(rig.warmup)()
    return interleaved({name: make(rig.steps) for name, make in makers.items()},
                       reps=rig.reps, warmup=0, device=rig.device)


def _rates(seconds: list[float], images: int, steps: int) -> dict:
    return {"images_per_s": images / median(seconds),
            "ms_per_step": 1000 * median(seconds) / steps, "spread": spread(seconds),
            "seconds": seconds}


def train_step(rig: Rig, compiled: bool = False) -> dict:
    """Images/s of train() (each image with its PGD and noise copies), fp32 NCHW against
    channels_last + bf16, with or without torch.compile as client/app.py applies it."""
    makers = {}
    for name, fast in VARIANTS.items():
        model = rig.model(fast)
        if compiled:
            model = torch.compile(model, backend=rig.compile_backend)
        makers[name] = _train_calls(model, rig, fast)
    seconds = _timed(rig, makers)
    out = {"variants": {n: _rates(s, rig.batch * rig.steps, rig.steps)
                        for n, s in seconds.items()},
           "speedup_of_channels_last_bf16": paired_ratio(seconds["fp32 NCHW"],
                                                         seconds["channels_last + bf16"])}
    if compiled:
        out["backend"] = rig.compile_backend
    return out


def efficiency(rig: Rig) -> dict:
    """bench.at_step's ratio on this device: the bare passes of an AT step (PGD-k input
    gradients, one fwd/bwd/SGD on the concatenated batch) over a train() step, both on the
    path train() takes here."""
    s = rig.settings
    fast = FastPath.for_device(rig.device, s.amp)
    model = rig.model(fast)
    x = fast.layout(to_float(rig.images[:rig.batch]))
    optimizer = make_optimizer(model, s)
    parts = len(s.part_weights())
    seconds = _timed(rig, {
        "train": _train_calls(model, rig, fast, optimizer),
        "bare": lambda steps: bare_passes(model, optimizer, x, rig.labels[:rig.batch], s.steps,
                                          parts, steps, fast),
    })
    return {"ratio": paired_ratio(seconds["bare"], seconds["train"]),
            "cpu_reference": CPU_EFFICIENCY, "fast_path": dataclasses.asdict(fast),
            "train": _rates(seconds["train"], rig.batch * rig.steps, rig.steps),
            "bare": _rates(seconds["bare"], rig.batch * rig.steps, rig.steps)}


def eval_attacks(rig: Rig) -> dict:
    """Throughput of the evaluation's PGD (plain model) and EOT-PGD (through the test-time
    noise), called as common.evaluation calls them: channels_last, fp32, eval mode."""
    e = rig.cfg.eval
    settings = EvalSettings(rig.attacks, eps=e.eps, step=e.step, noise_std=e.noise_std,
                            eot_samples=e.eot_samples, batch_size=e.batch_size)
    cuda = rig.device.type == "cuda"
    base = torch.cuda.memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = rig.model(CHANNELS_LAST)
    x = to_float(rig.images[:e.batch_size]).contiguous(memory_format=torch.channels_last)
    y = rig.labels[:e.batch_size]
    gen = torch.Generator(device=rig.device).manual_seed(0)
    (pgd_spec, eot_spec), batch = rig.attacks, x.shape[0]
    # name -> (spec, target, randomized, gradient passes per image)
    runs = {"pgd": (pgd_spec, model, False, pgd_spec.steps * pgd_spec.restarts),
            "eot_pgd": (eot_spec, GaussianNoise(model, e.noise_std), True,
                        eot_spec.steps * e.eot_samples)}
    with eval_mode(model):
        seconds = interleaved(
            {name: (lambda r=r: _attack(r[0], r[1], x, y, settings, r[2], gen))
             for name, r in runs.items()},
            reps=rig.reps, warmup=1 if rig.warmup else 0, device=rig.device)
    out = {name: {"attack": spec.text, "batch": batch, "gradient_passes": passes,
                  "images_per_s": batch / median(seconds[name]),
                  "us_per_image_pass": 1e6 * median(seconds[name]) / (batch * passes),
                  "seconds": seconds[name]}
           for name, (spec, _, _, passes) in runs.items()}
    out["eot_pgd"]["samples"] = e.eot_samples
    out["apgd_ce"] = _apgd_ce(model, x, e.eps, rig)
    if cuda:
        out["peak_allocated_gib"] = (torch.cuda.max_memory_allocated() - base) / GIB
    return out


def _apgd_ce(model: torch.nn.Module, x: torch.Tensor, eps: float, rig: Rig) -> dict:
    """AutoAttack's first stage through pyautoattack, as common.evaluation runs it. APGD
    attacks only the images the model gets right, so the labels are the model's own
    predictions: every image of the batch is attacked for all of APGD's steps."""
    try:
        import pyautoattack  # noqa: F401  (an optional package on a bare GPU machine)
    except ImportError as exc:
        return {"status": "skipped", "reason": f"pyautoattack is not installed: {exc}"}
    with eval_mode(model), torch.no_grad():
        y = model(x).argmax(1)
    with eval_mode(model):
        seconds = interleaved({"apgd_ce": lambda: autoattack.run(
            model, x, y, "apgd-ce", eps=eps, seed=0, randomized=False)},
            reps=min(rig.reps, 2), warmup=1 if rig.warmup else 0, device=x.device)["apgd_ce"]
    steps = 100  # AutoAttack's standard APGD-CE: one run of 100 steps
    return {"status": "ok", "batch": x.shape[0], "gradient_passes": steps,
            "images_per_s": x.shape[0] / median(seconds),
            "us_per_image_pass": 1e6 * median(seconds) / (x.shape[0] * steps),
            "seconds": seconds}


def peak_memory(rig: Rig) -> dict:
    """GPU memory of one client: its images on the device, the model, SGD state and one
    train() call, and so how many such processes fit the GPU."""
    if rig.device.type != "cuda":
        return not_on_cpu("CUDA memory statistics (torch.cuda.max_memory_allocated)")
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base_allocated, base_reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    images = rig.images[:rig.client_images].clone()  # a client holds all its images there
    labels = rig.labels[:rig.client_images].clone()
    fast = FastPath.for_device(rig.device, rig.settings.amp)
    model = rig.model(fast)
    n = min(2 * rig.batch, images.shape[0])
    train(model, images[:n], labels[:n], rig.settings, seed=0, fast=fast)
    torch.cuda.synchronize()
    allocated = torch.cuda.max_memory_allocated() - base_allocated
    reserved = torch.cuda.max_memory_reserved() - base_reserved
    free, total = torch.cuda.mem_get_info()
    # The CUDA context and the libraries' handles live outside the caching allocator; every
    # client is a process of its own and pays them again.
    outside = total - free - torch.cuda.memory_reserved()
    per_client = reserved + outside
    usable = (1 - MEMORY_MARGIN) * total
    return {"client_images": images.shape[0], "peak_allocated_gib": allocated / GIB,
            "peak_reserved_gib": reserved / GIB, "outside_allocator_gib": outside / GIB,
            "per_client_gib": per_client / GIB, "gpu_total_gib": total / GIB,
            "margin": MEMORY_MARGIN, "clients_per_gpu": int(usable // per_client),
            "min_gpus_per_client": per_client / usable,
            "assumption": (f"one client = peak reserved by PyTorch's allocator during a "
                           f"train() call + this process's memory outside it (CUDA context, "
                           f"libraries; other processes on the GPU would count here too); "
                           f"{MEMORY_MARGIN:.0%} of the GPU kept free")}


def _pgd_checks(rig: Rig) -> dict[str, Callable[[int], object]]:
    """steps -> PGD, as train() generates it and as the evaluation's EOT-PGD runs it."""
    s, e = rig.settings, rig.cfg.eval
    fast = FastPath.for_device(rig.device, s.amp)
    model = rig.model(fast)
    x = fast.layout(to_float(rig.images[:rig.batch]))
    y = rig.labels[:rig.batch]
    gen = torch.Generator(device=rig.device).manual_seed(0)
    settings = EvalSettings(rig.attacks, eps=e.eps, step=e.step, noise_std=e.noise_std,
                            eot_samples=e.eot_samples)
    noisy = GaussianNoise(model, e.noise_std)

    def training(steps):
        with fast.context(rig.device):
            return pgd(model, x, y, s.eps, s.step, steps, s.random_start, generator=gen)

    def evaluation(steps):
        spec = dataclasses.replace(rig.attacks[1], steps=steps)
        return _attack(spec, noisy, x, y, settings, True, gen)

    return {"training pgd (train() path)": training,
            "evaluation eot-pgd (fp32, noise)": evaluation}


def sync_free_pgd(rig: Rig) -> dict:
    """PGD under torch.cuda.set_sync_debug_mode("error"): any host synchronisation raises."""
    if rig.device.type != "cuda":
        return not_on_cpu("torch.cuda.set_sync_debug_mode checks CUDA synchronisations only")
    cases = {}
    for name, run in _pgd_checks(rig).items():
        run(1)  # outside the check: lazy initialisation may synchronise once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run(rig.settings.steps)
            cases[name] = {"passed": True, "error": None}
        except RuntimeError as exc:
            cases[name] = {"passed": False, "error": str(exc)[:2000]}
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.cuda.synchronize()
    return {"passed": all(c["passed"] for c in cases.values()), "cases": cases}


def bf16_vs_fp32(rig: Rig) -> dict:
    """One train() step and one training PGD from the same weights, batch and seed, in
    channels_last fp32 and channels_last + bf16: how far bf16 moves the loss and the
    adversarial images (the initial, untrained model)."""
    s = rig.settings
    x_u8, y = rig.images[:rig.batch], rig.labels[:rig.batch]
    start = rig.model(CHANNELS_LAST)
    out = {}
    for name, fast in (("fp32", CHANNELS_LAST), ("bf16", VARIANTS["channels_last + bf16"])):
        model = copy.deepcopy(start)
        gen = torch.Generator(device=rig.device).manual_seed(0)
        x = fast.layout(to_float(x_u8))
        with fast.context(rig.device):  # as train() generates its PGD copies
            adv = pgd(model, x, y, s.eps, s.step, s.steps, s.random_start, generator=gen)
        loss = train(model, x_u8, y, s, seed=0, fast=fast).loss
        out[name] = (loss, adv.float())
    (loss32, adv32), (loss16, adv16) = out["fp32"], out["bf16"]
    diff = (adv16 - adv32).abs()
    return {"loss_fp32": loss32, "loss_bf16": loss16, "loss_abs_diff": abs(loss16 - loss32),
            "loss_rel_diff": abs(loss16 - loss32) / abs(loss32),
            "adv_pixels_differing": float((diff > 1e-6).float().mean()),
            "adv_max_abs_diff": float(diff.max()),
            "adv_mean_abs_diff_in_steps": float(diff.mean()) / s.step}
