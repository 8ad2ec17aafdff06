"""The GPU check: the CUDA path of the paper preset (presets/paper.toml), measured.

    python -m bench.gpu --out DIR [--data-dir D]     # on a CUDA GPU, under 8 minutes
    python -m bench.gpu --dry-run --out DIR          # the same code on the CPU, width 8

At the preset's width and batch (64, 128) it measures train()'s images/s (fp32 NCHW against
channels_last + bf16, eager and torch.compile), the step's efficiency against its bare passes,
the evaluation's PGD and EOT-PGD throughput, one client's peak GPU memory (and so how many
clients fit the GPU), PGD under torch.cuda.set_sync_debug_mode("error"), and how far bf16
moves one step's loss and adversarial images; then it estimates the preset's wall time on
this GPU. Only torch, numpy, common/ and the preset loader run: no Flower, no Ray. Each measurement is recorded
on its own (a failure becomes an error string, the rest still runs), DIR/gpu.json and
DIR/gpu.md are rewritten after each one, and a time budget skips what would run past it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import platform
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common.config import ExperimentConfig
from common.data import NUM_CLASSES, DataError, load_cifar10
from common.evaluation import EvalSettings, parse_attacks
from common.partition import in_run_eval_size, split_for

from . import gpu_measure as measure
from .fixtures import DEFAULT_OUT, batch_of, preset_config
from .result import fmt, markdown_table
from .timing import torch_threads

CIFAR10_TRAIN_PER_CLASS, CIFAR10_TEST = 5_000, 10_000


@dataclass(frozen=True)
class Scale:
    device: str
    sets: tuple[str, ...]  # --set changes to presets/paper.toml
    attacks: str  # the evaluation attacks timed: a PGD and an EOT-PGD
    warmup: int
    steps: int
    reps: int
    budget_s: float
    compile_backend: str


FULL = Scale("cuda", (), "pgd20,eot-pgd20", warmup=5, steps=10, reps=5, budget_s=420,
             compile_backend="inductor")
# The rehearsal: the same code at CPU size. torch.compile traces with the "eager" backend
# (Dynamo, no code generation): inductor's C++ build takes minutes on a CPU.
DRY_RUN = Scale("cpu", ("model.width=8", "train.batch-size=8", "attack.steps=2",
                        "eval.batch-size=8", "eval.eot-samples=2"),
                "pgd2,eot-pgd2", warmup=1, steps=1, reps=2, budget_s=240,
                compile_backend="eager")

# In order of importance: cheap and essential first, torch.compile (slow to build) last.
MEASUREMENTS = {
    "peak_memory": measure.peak_memory,
    "sync_free_pgd": measure.sync_free_pgd,
    "bf16_vs_fp32": measure.bf16_vs_fp32,
    "train_step": measure.train_step,
    "efficiency": measure.efficiency,
    "eval_attacks": measure.eval_attacks,
    "train_step_compiled": functools.partial(measure.train_step, compiled=True),
}


class OverBudget(Exception):
    """The time budget ran out while a measurement was running."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise OverBudget in the main thread once `seconds` have passed (a compile or a slow
    step is stopped between two Python bytecodes, not after it ends)."""
    def ring(signum, frame):
        raise OverBudget(f"the time budget (--budget) ran out {seconds:.1f} s into this "
                         "measurement")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def guarded(fn, *args, seconds_left: float | None = None) -> dict:
    """fn's figures with a status: ok, skipped (with the reason) or error (with the text)."""
    if seconds_left is not None and seconds_left <= 0:
        return {"status": "skipped", "reason": "the time budget (--budget) was spent",
                "seconds": 0.0}
    started = time.perf_counter()
    try:
        with deadline(seconds_left) if seconds_left is not None else contextlib.nullcontext():
            out = {"status": "ok", **fn(*args)}
    except Exception as exc:  # one failure must not cost the other figures
        out = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
               "traceback": traceback.format_exc(limit=-4)[-3000:]}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    out["seconds"] = time.perf_counter() - started
    return out


# --- the paper preset's workload and its estimate ---------------------------------------------

def workload(cfg) -> dict:
    """Images per round, rounds, evaluations of the preset, from its own partition code
    (CIFAR-10's training set holds 5,000 images of each class; only the counts matter)."""
    labels = np.repeat(np.arange(NUM_CLASSES), CIFAR10_TRAIN_PER_CLASS)
    clients = cfg.fl.min_nodes  # the harness starts 10 supernodes by default; the preset's 10
    plan = split_for(cfg, labels, clients)
    share = plan.share(0, cfg.fl.shared_share, cfg.seed).size
    per_client = [p.size + share for p in plan.partitions]
    sampled = max(1, round(cfg.fl.fraction_train * clients))
    rounds = cfg.fl.num_rounds
    return {"clients": clients, "clients_per_round": sampled, "share_per_client": share,
            "images_per_client_min": min(per_client), "images_per_client_max": max(per_client),
            "images_per_round": int(sum(sorted(per_client)[-sampled:])),
            "local_epochs": cfg.train.local_epochs, "rounds": rounds,
            # server/rounds.py evaluates every eval.every rounds and after the last
            "evaluations": sum(r % cfg.eval.every == 0 or r == rounds
                               for r in range(1, rounds + 1)),
            "eval_images": in_run_eval_size(cfg.data.val_size, cfg.data.eval_limit,
                                            CIFAR10_TEST)}


def gradient_passes(cfg) -> tuple[int, list[str]]:
    """Input-gradient passes per test image of one central evaluation, and what is left out."""
    e = cfg.eval
    settings = EvalSettings(parse_attacks(e.attacks), noise_std=e.noise_std)
    total, left_out = 0, []
    for suffix in settings.suffixes():
        for spec in settings.attacks:
            per = {"fgsm": 1, "pgd": spec.steps * spec.restarts, "cw": spec.steps,
                   "eot-pgd": spec.steps * (e.eot_samples if suffix else 1)}.get(spec.kind)
            if per is None:
                left_out.append(spec.text + suffix)  # DeepFool's passes depend on the data
            else:
                total += per
    return total, left_out


def paper_estimate(cfg, measurements: dict) -> dict:
    """Wall time of the preset on one GPU of this kind, from the measured throughputs."""
    w = workload(cfg)
    variant = "channels_last + bf16" if cfg.train.amp else "fp32 NCHW"
    source = "train_step_compiled" if cfg.train.compile else "train_step"
    if measurements[source]["status"] != "ok":
        raise RuntimeError(f"needs {source}, which did not run ({measurements[source]['status']})")
    images_per_s = measurements[source]["variants"][variant]["images_per_s"]
    train_s = w["rounds"] * w["images_per_round"] * w["local_epochs"] / images_per_s
    out = {**w, "train_path": f"{source}: {variant}", "train_images_per_s": images_per_s,
           "train_hours": train_s / 3600}
    passes, left_out = gradient_passes(cfg)
    attacks = measurements["eval_attacks"]
    if attacks["status"] == "ok":
        eval_s = (w["evaluations"] * w["eval_images"] * passes
                  * attacks["pgd"]["us_per_image_pass"] / 1e6)
        out.update(eval_gradient_passes_per_image=passes, eval_hours=eval_s / 3600,
                   total_hours=(train_s + eval_s) / 3600)
    out["assumptions"] = [
        f"training: {w['images_per_round']:,} images per round (client partitions plus their "
        f"{w['share_per_client']:,}-image shares of G) x {w['local_epochs']} local epochs x "
        f"{w['rounds']} rounds / {images_per_s:,.0f} images/s of one client; clients that "
        "share the GPU split that throughput, so the round takes as long as the clients back "
        "to back (k clients per GPU: each runs at 1/k of it); no gain from overlap assumed",
        f"evaluation: {w['evaluations']} central evaluations x {w['eval_images']:,} images x "
        f"{passes} input-gradient passes per image ({cfg.eval.attacks}, plain and through "
        f"the noise) at PGD's measured cost per pass; forward-only passes not counted"
        + (f"; left out: {', '.join(left_out)}" if left_out else ""),
        "not counted: Flower/Ray start-up and messaging, checkpoints, the clients' data loading",
    ]
    return out


# --- the run --------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT / "gpu",
                   help=f"folder for gpu.json and gpu.md (default {DEFAULT_OUT / 'gpu'})")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="CIFAR-10 folder (holding cifar-10-batches-py/); default: random "
                        "uint8 images (the speed does not depend on the pixels)")
    p.add_argument("--dry-run", action="store_true",
                   help="the same code on the CPU at width 8, a few steps: seconds")
    for name, what in (("warmup", "untimed steps per contender"),
                       ("steps", "steps per timed call"), ("reps", "timed calls per contender")):
        p.add_argument(f"--{name}", type=int, default=None,
                       help=f"{what} (default {getattr(FULL, name)}; dry run "
                            f"{getattr(DRY_RUN, name)})")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds after which the remaining measurements are skipped "
                        f"(default {FULL.budget_s:g}; dry run {DRY_RUN.budget_s:g})")
    return p


def _scale(args) -> Scale:
    scale = DRY_RUN if args.dry_run else FULL
    changes = {}
    for name, lowest in (("warmup", 0), ("steps", 1), ("reps", 1)):
        value = getattr(args, name)
        if value is not None and value < lowest:
            raise ValueError(f"--{name} must be >= {lowest}, got {value}")
        changes[name] = getattr(scale, name) if value is None else value
    if args.budget is not None and not args.budget > 0:
        raise ValueError(f"--budget must be a positive number of seconds, got {args.budget}")
    return dataclasses.replace(scale, **changes, budget_s=args.budget or scale.budget_s)


def _pool(data_dir: Path | None, n: int, device: torch.device):
    """n uint8 images and labels on the device: CIFAR-10 when given, else random ones."""
    if data_dir is not None:
        return batch_of(load_cifar10(data_dir), n, device)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return x.to(device), torch.randint(0, NUM_CLASSES, (n,), generator=gen).to(device)


def _environment(device: torch.device) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(),
           "device": device.type, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=props.total_memory / measure.GIB,
                   capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   tf32_conv=torch.backends.cudnn.allow_tf32,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return env


def prepare(args) -> tuple[Scale, measure.Rig, ExperimentConfig]:
    """Check every input before any measurement; raise ValueError naming the fix."""
    scale = _scale(args)
    if (args.out / "gpu.json").exists():
        raise ValueError(f"{args.out / 'gpu.json'} holds an earlier run's results; pass "
                         "another --out or move it away")
    if scale.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device visible (torch.cuda.is_available() is False); this "
                         "check needs a GPU; `python -m bench.gpu --dry-run` rehearses it on "
                         "the CPU")
    paper = preset_config("paper")
    cfg = preset_config("paper", *scale.sets)
    pgd_spec, eot_spec = parse_attacks(scale.attacks)
    w = workload(paper)
    device = torch.device(scale.device)
    client_images = w["images_per_client_max"] if device.type == "cuda" else 0
    n = max(client_images, max(scale.warmup, scale.steps) * cfg.train.batch_size,
            cfg.eval.batch_size)
    images, labels = _pool(args.data_dir, n, device)  # DataError names a bad --data-dir
    rig = measure.Rig(cfg, device, images, labels, (pgd_spec, eot_spec), client_images,
                      scale.warmup, scale.steps, scale.reps, scale.compile_backend)
    return scale, rig, paper


def to_markdown(report: dict) -> str:
    s = report["settings"]
    where = ("DRY RUN on the CPU: the code is exercised, the figures mean nothing"
             if report["dry_run"] else report["environment"].get("gpu"))
    lines = [f"# GPU check ({where})", "",
             f"`{report['command']}`, {report['started']}, {report['seconds']:.0f} s; "
             f"width {s['width']}, batch {s['batch']}, PGD-{s['pgd_steps']}; {s['warmup']} "
             f"warm-up steps, {s['reps']} timed calls of {s['steps']} steps per contender; "
             f"data: {s['data']}; torch {report['environment']['torch']}.", ""]
    rows = []
    for name, result in report["measurements"].items():
        rows += [{"measurement": name, "figure": key, "value": value}
                 for key, value in _flat(result) if key != "traceback"]
    lines += markdown_table(rows) + [""]
    estimate = report["measurements"].get("paper_estimate", {})
    lines += [f"- {a}" for a in estimate.get("assumptions", [])]
    return "\n".join(lines) + "\n"


def _flat(d: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _flat(value, f"{prefix}{key}.")
        elif isinstance(value, str):  # one table cell: no line breaks, no column bars
            yield f"{prefix}{key}", value.replace("\n", " ").replace("|", "/")
        elif not isinstance(value, list):  # raw timings and assumptions stay in the JSON
            yield f"{prefix}{key}", fmt(value)


def _strict(value):
    """NaN and infinities (a spread of too few timings) as null: strict JSON."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    as_json = json.dumps(_strict(report), indent=2, default=str, allow_nan=False) + "\n"
    for name, text in (("gpu.json", as_json),
                       ("gpu.md", to_markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)  # a killed run leaves the last complete file


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    try:
        scale, rig, paper = prepare(args)
    except DataError as exc:
        print(f"bench.gpu: --data-dir {args.data_dir}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # a bad argument, or a preset that fails its checks
        print(f"bench.gpu: {exc}", file=sys.stderr)
        return 2
    cfg = rig.cfg
    given = sys.argv[1:] if argv is None else argv
    report = {
        "command": " ".join(["python -m bench.gpu", *given]),
        "dry_run": args.dry_run,
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": _environment(rig.device),
        "settings": {"width": cfg.model.width, "batch": rig.batch, "pgd_steps": cfg.attack.steps,
                     "warmup": scale.warmup, "steps": scale.steps, "reps": scale.reps,
                     "budget_s": scale.budget_s, "compile_backend": scale.compile_backend,
                     "data": f"CIFAR-10 from {args.data_dir}" if args.data_dir
                     else "random uint8 images"},
        "measurements": {}, "seconds": 0.0,
    }
    # One CPU thread for the rehearsal: spinning OpenMP threads stall on a shared machine.
    with torch_threads(1 if rig.device.type == "cpu" else torch.get_num_threads()):
        for name, fn in MEASUREMENTS.items():
            left = scale.budget_s - (time.perf_counter() - started)
            result = guarded(fn, rig, seconds_left=left)
            report["measurements"][name] = result
            report["seconds"] = time.perf_counter() - started
            print(f"{name}: {result['status']} ({result['seconds']:.1f} s)"
                  + (f": {result.get('error') or result.get('reason')}"
                     if result["status"] != "ok" else ""), flush=True)
            write(report, args.out)
    report["measurements"]["paper_estimate"] = guarded(paper_estimate, paper,
                                                       report["measurements"])
    report["seconds"] = time.perf_counter() - started
    write(report, args.out)
    estimate = report["measurements"]["paper_estimate"]
    if estimate["status"] == "ok" and math.isfinite(estimate.get("total_hours", math.nan)):
        print(f"paper preset on this device: about {estimate['total_hours']:.1f} h "
              f"({estimate['train_hours']:.1f} h training)")
    print(f"total {report['seconds']:.0f} s; results in {args.out}/gpu.json and gpu.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
