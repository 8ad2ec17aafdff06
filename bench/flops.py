"""FLOPs of the paper preset's model, counted with FlopCounterMode, and what they mean in
GPU hours for presets/paper.toml (training + the periodic honest evaluation)."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from common.config import ExperimentConfig
from common.evaluation import parse_attacks
from common.models import build_model
from common.partition import in_run_eval_size, split_for
from common.training import make_optimizer

from .fixtures import Options, cpu_settings, preset_config
from .result import Result
from .timing import interleaved, median

# Assumed accelerator: NVIDIA A100 (SXM) dense peaks, no sparsity.
GPU = "A100"
PEAK_BF16 = 312e12  # training and training-time PGD run under bf16 autocast
PEAK_TF32 = 156e12  # evaluation attacks run in fp32; cuDNN convolutions use TF32
UTILISATION = (0.15, 0.30, 0.50)  # low / assumed / high fraction of peak reached
ASSUMED = 0.30
COUNT_BATCH = 4
CIFAR_TRAIN, CIFAR_TEST, CIFAR_CLASSES = 50_000, 10_000, 10


def _counted(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / COUNT_BATCH


def pass_flops(width: int) -> dict[str, float]:
    """FLOPs per image of a forward, a forward + input-gradient (PGD step) and a
    forward + full backward (training), at 32x32."""
    torch.manual_seed(0)
    model = build_model("relu", width)
    x = torch.rand(COUNT_BATCH, 3, 32, 32)
    y = torch.arange(COUNT_BATCH)

    def forward():
        with torch.no_grad():
            model(x)

    def input_grad():
        # A non-leaf input: FlopCounterMode's module hooks reject autograd.grad on a leaf.
        x_in = x.clone().requires_grad_(True) * 1.0
        torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)

    def train_pass():
        F.cross_entropy(model(x), y).backward()

    model.eval()
    counts = {"forward": _counted(forward), "pgd_pass": _counted(input_grad)}
    model.train()
    counts["train_pass"] = _counted(train_pass)
    return counts


def epoch_images(cfg: ExperimentConfig) -> int:
    """Images all clients train on per local epoch: partitions + their shares of G, for the
    full, class-balanced CIFAR-10 training set."""
    labels = np.repeat(np.arange(CIFAR_CLASSES), CIFAR_TRAIN // CIFAR_CLASSES)
    plan = split_for(cfg, labels, cfg.fl.min_nodes)
    return int(sum(p.size + plan.share(i, cfg.fl.shared_share, cfg.seed).size
                   for i, p in enumerate(plan.partitions)))


def eval_passes(cfg: ExperimentConfig) -> tuple[float, float]:
    """(PGD passes, plain forwards) per test image in one central evaluation."""
    grads = forwards = 0.0
    suffixes = [False, True] if cfg.eval.noise_std > 0 else [False]
    for noisy in suffixes:
        forwards += 1  # natural accuracy
        for spec in parse_attacks(cfg.eval.attacks):
            if spec.kind == "fgsm":
                grads, forwards = grads + 1, forwards + 1
            elif spec.kind in ("pgd", "cw"):
                grads += spec.steps * spec.restarts
                forwards += 1 + (spec.restarts if spec.restarts > 1 else 0)
            elif spec.kind == "eot-pgd":
                grads += spec.steps * (cfg.eval.eot_samples if noisy else 1)
                forwards += 1
            else:  # deepfool: ~steps x (1 + classes) gradients; not in the paper preset
                grads, forwards = grads + 50 * (1 + CIFAR_CLASSES), forwards + 50
    return grads, forwards


def cpu_rate(opts: Options, width: int = 64, batch: int = 32) -> float:
    """Measured FLOP/s of a fwd/bwd/SGD step at this width on this machine's CPU."""
    torch.manual_seed(0)
    model = build_model("relu", width).to(opts.device)
    optimizer = make_optimizer(model, cpu_settings())
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    seconds = interleaved({"step": step}, reps=opts.reps(3, 2), warmup=1)["step"]
    return pass_flops(width)["train_pass"] * batch / median(seconds)


def run(opts: Options) -> Result:
    began = time.perf_counter()
    cfg = preset_config("paper")
    f = pass_flops(cfg.model.width)
    k = cfg.attack.steps
    parts = 3  # clean + PGD + noise copies, one concatenated fwd/bwd
    step_per_image = k * f["pgd_pass"] + parts * f["train_pass"]
    images = epoch_images(cfg) * cfg.train.local_epochs * cfg.fl.num_rounds
    train_flops = images * step_per_image
    evals = sum(1 for r in range(1, cfg.fl.num_rounds + 1)
                if r % cfg.eval.every == 0 or r == cfg.fl.num_rounds)
    test_images = in_run_eval_size(cfg.data.val_size, cfg.data.eval_limit, CIFAR_TEST)
    grads, forwards = eval_passes(cfg)
    eval_flops = evals * test_images * (grads * f["pgd_pass"] + forwards * f["forward"])
    hours = {u: (train_flops / (PEAK_BF16 * u) + eval_flops / (PEAK_TF32 * u)) / 3600
             for u in UTILISATION}
    rate = cpu_rate(opts)
    cpu_hours = (train_flops + eval_flops) / rate / 3600
    rows = [
        {"quantity": "forward, width 64, 32x32", "GFLOP/image": f["forward"] / 1e9},
        {"quantity": "PGD pass (fwd + input-grad bwd)", "GFLOP/image": f["pgd_pass"] / 1e9},
        {"quantity": "train pass (fwd + full bwd)", "GFLOP/image": f["train_pass"] / 1e9},
        {"quantity": f"AT step per image: {k} PGD + {parts} train passes",
         "GFLOP/image": step_per_image / 1e9},
    ]
    notes = [
        f"Training: {cfg.fl.num_rounds} rounds x {cfg.train.local_epochs} local epochs x "
        f"{epoch_images(cfg):,} images per epoch (10 partitions of the pool + their "
        f"{cfg.fl.shared_share:.0%} shares of G) = {images:,} AT steps-per-image = "
        f"{train_flops / 1e15:.1f} PFLOP (bf16).",
        f"Evaluation: {evals} central evaluations x {test_images:,} "
        f"{'validation' if cfg.data.val_size else 'test'} images x "
        f"({grads:.0f} PGD passes + {forwards:.0f} forwards) for `{cfg.eval.attacks}` with "
        f"and without noise = {eval_flops / 1e15:.1f} PFLOP (fp32/TF32).",
        f"Assumed {GPU}: {PEAK_BF16 / 1e12:.0f} TFLOP/s bf16 dense, {PEAK_TF32 / 1e12:.0f} "
        f"TFLOP/s TF32 dense, at {ASSUMED:.0%} utilisation (small 32x32 convolutions rarely "
        f"reach more): training {train_flops / (PEAK_BF16 * ASSUMED) / 3600:.1f} h + "
        f"evaluation {eval_flops / (PEAK_TF32 * ASSUMED) / 3600:.1f} h; total at "
        + ", ".join(f"{u:.0%}: {h:.1f} h" for u, h in hours.items()) + ".",
        f"This CPU reaches {rate / 1e9:.1f} GFLOP/s on a width-64 train step (batch 32): the "
        f"same run would take {cpu_hours:,.0f} h (~{cpu_hours / 24 / 365:.1f} years) here.",
    ]
    return Result(
        name="flops", title=f"Paper preset on one {GPU} (estimate)", ratio=None,
        meaning="FLOPs counted by torch.utils.flop_counter.FlopCounterMode (a multiply-add "
                "counts 2); BatchNorm and element-wise ops are not counted.",
        details={"per_image": f, "epoch_images": epoch_images(cfg), "train_flops": train_flops,
                 "eval_flops": eval_flops, "evaluations": evals, "eval_passes":
                 [grads, forwards], "gpu_hours": hours, "assumed_utilisation": ASSUMED,
                 "cpu_flops_per_s": rate, "cpu_hours": cpu_hours},
        table=rows, notes=notes, seconds=time.perf_counter() - began)
