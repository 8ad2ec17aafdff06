"""The experiment config: frozen, typed and validated, built from a flat dotted dict.

A Flower run config is a flat dict of bool/int/float/str with dotted keys ("attack.eps").
`ExperimentConfig.from_flat` turns it into nested frozen dataclasses and reports every
unknown key, wrong type and out-of-range value in one `ConfigError` that names the key, the
value and what is allowed. Each dataclass field carries its own check; the dotted key is
derived from the section and the field name (`train.local_epochs` -> "train.local-epochs").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import activations, schedules
from .models import VARIANTS
from .objectives import NAMES as OBJECTIVES

Check = Callable[[Any], str | None]  # returns what is allowed if the value is bad


class ConfigError(ValueError):
    """One or more run-config entries are invalid; the message lists each of them."""


# --- checks --------------------------------------------------------------------------------


def at_least(lo: float) -> Check:
    return lambda v: None if v >= lo else f"a number >= {lo}"


def in_range(lo: float, hi: float, hi_open: bool = False) -> Check:
    def check(v):
        ok = lo <= v < hi if hi_open else lo <= v <= hi
        return None if ok else f"a number in [{lo}, {hi}{')' if hi_open else ']'}"

    return check


def positive(v) -> str | None:
    return None if v > 0 else "a number > 0"


def all_of(*checks: Check) -> Check:
    def check(v):
        return next((allowed for c in checks if (allowed := c(v))), None)

    return check


def at_most(hi: float, why: str) -> Check:
    return lambda v: None if v <= hi else f"a number <= {hi:,} ({why})"


def between(lo: float, hi: float, why: str | Callable[[], str]) -> Check:
    """lo <= v <= hi, where the upper bound keeps a run finite and within memory; `why` says
    what lies beyond it (a callable when the reason is computed)."""
    def check(v):
        if lo <= v <= hi:
            return None
        reason = why() if callable(why) else why
        return f"a number >= {lo} and <= {hi:,} ({reason})"

    return check


def _width_reason() -> str:
    from .footprint import GIB, training  # torch and a probe model: only when refusing

    need = training(ExperimentConfig().replace(**{"model.width": MAX_WIDTH,
                                                  "train.batch-size": 128})).total
    return (f"4x the standard ResNet-18's 64 channels; at width {MAX_WIDTH} a ResNet-18 "
            f"already needs about {need / GIB:.0f} GiB to train at batch size 128")


MAX_WIDTH = 256
MAX_STEPS = 10_000
MAX_ROUNDS = 100_000
MAX_BATCH = 65_536
MAX_NODES = 10_000
MAX_SECONDS = 7 * 24 * 3600.0
CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000
STEPS_WHY = (f"PGD with {MAX_STEPS:,} steps already costs 1,000x the paper's PGD-10 per "
             "batch; every step is a forward and backward pass")
BATCH_WHY = (f"a batch never holds more than CIFAR-10's {CIFAR_TRAIN:,} training images, "
             "and its activations must fit the device")
SECONDS_WHY = "a week, the harness's default --timeout; longer waits hide a hung run"


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"one of: {', '.join(choices)}"


def absolute_path_or_empty(v: str) -> str | None:
    if v == "" or os.path.isabs(os.path.expanduser(v)):
        return None
    return ("an absolute path (or empty for the default); relative paths are ambiguous "
            "because Flower runs the app from its own working directory")


def int_list(v: str) -> str | None:
    try:
        parse_int_list(v)
    except ValueError:
        return 'a comma-separated list of non-negative integers, e.g. "1,3" (or empty)'
    return None


def parse_int_list(v: str) -> tuple[int, ...]:
    items = tuple(int(s) for s in v.split(",") if s.strip()) if v.strip() else ()
    if any(i < 0 for i in items):
        raise ValueError(v)
    return items


def attack_list(v: str) -> str | None:
    from .evaluation import parse_attacks  # evaluation imports attacks/models: keep lazy

    try:
        parse_attacks(v)
    except ValueError as exc:
        return str(exc)
    return None


def key(check: Check | None = None, help: str = "", identity: bool = True, **kw) -> Any:
    """A config field: its check, a one-line help, and whether it defines the experiment.

    Fields with identity=False (paths, timeouts, resume flags) may change between a run and
    its resumption without changing the run's identity hash.
    """
    return field(metadata={"check": check, "help": help, "identity": identity}, **kw)


EPS_8 = 8 / 255
SHARING_MODES = ("none", "raw", "means", "server")

# --- sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutConfig:
    dir: str = key(absolute_path_or_empty, "results root (absolute); empty = ~/robustfl-runs",
                   identity=False, default="")
    run_name: str = key(None, "run folder name; empty = derived from the config hash",
                        identity=False, default="")


@dataclass(frozen=True)
class DataConfig:
    dir: str = key(absolute_path_or_empty, "folder holding cifar-10-batches-py/ (absolute)",
                   identity=False, default="")
    download: bool = key(None, "fetch CIFAR-10 with torchvision if missing (needs internet)",
                         identity=False, default=False)
    train_limit: int = key(between(0, CIFAR_TRAIN, f"CIFAR-10 has {CIFAR_TRAIN:,} training "
                                   "images; 0 = all of them"),
                           "class-balanced training subset size (of the images outside the "
                           "validation split); 0 = all", default=0)
    val_size: int = key(between(0, CIFAR_TEST, f"the size of CIFAR-10's {CIFAR_TEST:,}-image "
                                "test set; the clients train on the rest"),
                        "class-balanced validation split held out of training: in-run "
                        "evaluation, best.pt; 0 = none (test subset in-run, no best.pt)",
                        default=500)
    eval_limit: int = key(between(0, CIFAR_TEST, f"CIFAR-10 has {CIFAR_TEST:,} test images; "
                                  "0 = all of them"),
                          "images per evaluation: of the validation split in-run, of the test "
                          "set in the final evaluation; 0 = all", default=500)


@dataclass(frozen=True)
class ModelConfig:
    activation: str = key(one_of(*activations.NAMES), "activation function", default="relu")
    width: int = key(between(1, MAX_WIDTH, _width_reason),
                     "channels of the first stage (64 = standard ResNet-18)", default=8)
    variant: str = key(one_of(*VARIANTS), "standard or no-downsample", default="standard")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = key(positive, "base learning rate", default=0.05)
    schedule: str = key(one_of(*schedules.NAMES), "learning-rate schedule", default="fixed")
    local_epochs: int = key(between(1, 1000, "1,000 local epochs are 5x the paper's whole "
                                    "200-epoch training, in every round"),
                            "epochs per round on each client", default=2)
    batch_size: int = key(between(1, MAX_BATCH, BATCH_WHY),
                          "images per step (before adding PGD/noise copies)", default=32)
    momentum: float = key(in_range(0.0, 1.0, hi_open=True), "SGD momentum", default=0.9)
    weight_decay: float = key(at_least(0.0), "SGD weight decay", default=2e-4)
    label_smoothing: float = key(in_range(0.0, 1.0, hi_open=True),
                                 "soft-label alpha: true class 1-a(N-1)/N, others a/N",
                                 default=0.05)
    noise_std: float = key(at_least(0.0), "sigma of the Gaussian-noise copies (0 = none)",
                           default=0.05)
    adversarial: bool = key(None, "add PGD copies to every batch", default=True)
    weight_clean: float = key(at_least(0.0), "loss weight of clean images", default=1.0)
    weight_adv: float = key(at_least(0.0), "loss weight of PGD images", default=1.0)
    weight_noise: float = key(at_least(0.0), "loss weight of noisy images", default=1.0)
    objective: str = key(one_of(*OBJECTIVES), "loss of local training: mixed (the paper's "
                         "clean + PGD + noise copies), trades, mart, fgsm-rs, calfat",
                         default="mixed")
    trades_beta: float = key(positive, "trades: weight of its KL term (Zhang et al.: 6)",
                             default=6.0)
    mart_beta: float = key(at_least(0.0), "mart: weight of its confidence-weighted KL term "
                           "(Wang et al.: 6)", default=6.0)
    fgsm_rs_step: float = key(positive, "fgsm-rs: FGSM step in units of attack.eps (Wong et "
                              "al.: 1.25)", default=1.25)
    calfat_scale: float = key(positive, "calfat: logit scale s of its calibrated CE(s*z + "
                              "log prior) (1 = plain logit adjustment; the authors' code: 10)",
                              default=1.0)
    amp: bool = key(None, "bf16 autocast on CUDA (ignored on CPU)", identity=False,
                    default=True)
    compile: bool = key(None, "torch.compile the model", identity=False, default=False)

    def loss_parts(self) -> tuple[str, ...]:
        """The copies every training batch holds, as common.training builds them: clean when
        its weight is > 0, PGD when adversarial and its weight is > 0, noise when noise-std
        and its weight are > 0 (TrainSettings.part_weights; tests keep the two in step)."""
        present = {"clean": self.weight_clean > 0,
                   "adv": self.adversarial and self.weight_adv > 0,
                   "noise": self.noise_std > 0 and self.weight_noise > 0}
        return tuple(part for part, used in present.items() if used)


@dataclass(frozen=True)
class AttackConfig:
    eps: float = key(in_range(0.0, 1.0), "training PGD L-inf budget in [0,1] pixels",
                     default=EPS_8)
    step: float = key(positive, "training PGD step size", default=2.5 * EPS_8 / 3)
    steps: int = key(between(1, MAX_STEPS, STEPS_WHY), "training PGD iterations", default=3)
    random_start: bool = key(None, "start PGD at a random point of the eps-ball", default=True)


@dataclass(frozen=True)
class EvalConfig:
    attacks: str = key(attack_list, "comma-separated attacks, e.g. fgsm,pgd20,pgd50x5,"
                       "eot-pgd20,cw20,aa,apgd-ce,apgd-t,square,deepfool", default="fgsm,pgd10")
    noise_std: float = key(at_least(0.0), "test-time noise sigma; >0 adds noisy columns",
                           default=0.05)
    noise_protocol: str = key(one_of("fresh", "fixed"), "test-time noise: a fresh draw in "
                              "every forward pass, or one fixed draw per image that attacker "
                              "and classifier share", default="fresh")
    noise_draws: int = key(between(1, 1000, "each draw is one more forward pass of every "
                                   "clean and adversarial batch; 10-100 decide a vote"),
                           "noise draws whose majority vote classifies through fresh noise",
                           default=10)
    square_queries: int = key(between(1, 100_000, "20x AutoAttack's 5,000; each query is a "
                                      "forward pass of the images still robust"),
                              "queries of Square, alone and inside aa (5000 = AutoAttack's "
                              "standard version)", default=5000)
    eps: float = key(in_range(0.0, 1.0), "evaluation L-inf budget", default=EPS_8)
    step: float = key(positive, "evaluation PGD step size", default=2 / 255)
    eot_samples: int = key(between(1, 1000, "each EOT-PGD step runs one forward and "
                                   "backward pass per draw; evaluations use 10-100"),
                           "noise draws per EOT-PGD step", default=10)
    deepfool_l2: float = key(positive, "L2 bound for DeepFool accuracy", default=0.5)
    batch_size: int = key(between(1, MAX_BATCH, f"more than CIFAR-10's {CIFAR_TEST:,} test "
                                  "images, and an attack batch's activations must fit the "
                                  "device"),
                          "evaluation batch size", identity=False, default=250)
    every: int = key(between(1, MAX_ROUNDS, "fl.num-rounds is at most "
                             f"{MAX_ROUNDS:,}, and the last round is always evaluated"),
                     "central evaluation every N rounds (last always)", default=1)
    # Only the post-hoc diagnostics.csv depends on these, and its rows record them: they
    # do not define the experiment (a run keeps its name and can resume when they change).
    diagnostic_images: int = key(between(1, CIFAR_TEST, f"CIFAR-10 has {CIFAR_TEST:,} test "
                                         "images"),
                                 "test images of the gradient-masking diagnostics (at most "
                                 "the final evaluation's)", identity=False, default=200)
    diagnostic_queries: int = key(between(1, 100_000, "20x AutoAttack's 5,000; each query is "
                                          "a forward pass of the images still robust"),
                                  "Square queries of the diagnostics' black-box check",
                                  identity=False, default=1000)


@dataclass(frozen=True)
class FLConfig:
    num_rounds: int = key(between(1, MAX_ROUNDS, f"{MAX_ROUNDS:,} rounds are 500x the paper's "
                                  "200; every round writes results and a checkpoint"),
                          "federated rounds (centralized: epochs / local-epochs)", default=3)
    partition: str = key(one_of("iid", "classes", "dirichlet"), "client data partition",
                         default="iid")
    client_data: str = key(one_of("partition", "local"), "a node's training images: its "
                           "partition of the data set (node config partition-id, "
                           "num-partitions) or all images in its own data-dir (node config "
                           "node-name, data-dir; G and evaluation data from the server's data.dir)",
                           default="partition")
    classes_per_client: int = key(in_range(1, 10), "k for the k-classes scheme", default=2)
    dirichlet_alpha: float = key(positive, "concentration of the Dirichlet scheme",
                                 default=0.5)
    min_partition_size: int = key(between(0, CIFAR_TRAIN, f"no client can hold more than "
                                          f"CIFAR-10's {CIFAR_TRAIN:,} training images"),
                                  "Dirichlet: resample until every client has "
                                  "this many images", default=10)
    shared_pool: float = key(in_range(0.0, 1.0, hi_open=True),
                             "beta: size of the shared pool G as a fraction of training data, "
                             "held back from the clients (0 = no pool)", default=0.0)
    shared_share: float = key(in_range(0.0, 1.0), "alpha: fraction of G each client "
                              "receives (> 0 needs fl.shared-pool > 0)", default=0.0)
    sharing: str = key(one_of(*SHARING_MODES), "what helps non-IID clients: none, raw (each "
                       "client receives its fl.shared-share of G), means (FedMix's NaiveMix: "
                       "clients share averages of fl.means-size images, never an image), "
                       "server (G stays on the server, which fine-tunes after aggregation)",
                       default="raw")
    # FedMix's NaiveMix on CIFAR-10 (Yoon et al., ICLR 2021; Flower's fedmix baseline lists the
    # paper's settings): each client averages all of its local data, mixup ratio 0.1.
    means_size: int = key(between(0, CIFAR_TRAIN, f"no client holds more than CIFAR-10's "
                                  f"{CIFAR_TRAIN:,} training images"),
                          "means: images per average a client sends (0 = all of its images: "
                          "one average, FedMix's CIFAR-10 setting)", default=0)
    mix_weight: float = key(in_range(0.0, 1.0, hi_open=True),
                            "means: mixup weight lambda of the pooled averages, x' = (1-lambda)"
                            " x + lambda x_bar (FedMix's NaiveMix on CIFAR-10: 0.1)",
                            default=0.1)
    server_steps: int = key(between(1, MAX_STEPS, "every step is an adversarial-training "
                                    "step of train.batch-size images on the server, in every "
                                    "round"),
                            "server: steps of adversarial fine-tuning on G after each "
                            "aggregation (train.batch-size images each)", default=10)
    min_nodes: int = key(between(1, MAX_NODES, f"{MAX_NODES:,} clients would hold 5 of "
                                 f"CIFAR-10's {CIFAR_TRAIN:,} training images each"),
                         "nodes needed before a round starts", default=2)
    fraction_train: float = key(in_range(0.0, 1.0), "fraction of nodes sampled per round",
                                default=1.0)
    fraction_evaluate: float = key(in_range(0.0, 1.0), "fraction of nodes running local "
                                   "evaluation per round (0 = none)", default=0.0)
    node_wait: float = key(between(0.0, MAX_SECONDS, SECONDS_WHY),
                           "seconds to wait for min-nodes before giving up",
                           identity=False, default=300.0)
    hello_timeout: float = key(positive, "seconds to wait for new nodes to answer the hello "
                               "(they load and check their data first)", identity=False,
                               default=120.0)
    round_timeout: float = key(all_of(positive, at_most(MAX_SECONDS, SECONDS_WHY)),
                               "seconds to wait for the replies of one round",
                               identity=False, default=3600.0)
    aggregation: str = key(one_of("fedavg", "fedmedian", "fedtrimmedavg", "krum"),
                           "how client updates are combined", default="fedavg")
    trim_fraction: float = key(in_range(0.0, 0.5, hi_open=True),
                               "FedTrimmedAvg: fraction cut at each end", default=0.2)
    krum_byzantine: int = key(between(0, MAX_NODES, f"fl.min-nodes is at most {MAX_NODES:,}"),
                              "Krum: number of malicious nodes tolerated", default=1)


@dataclass(frozen=True)
class FaultConfig:
    """Fault injection, to test robust aggregation and failure handling."""

    mode: str = key(one_of("none", "nan", "wrong-shape", "wrong-dtype", "sign-flip", "delay",
                           "inflate-examples"),
                    "what the partitions in fault.partitions do", default="none")
    partitions: str = key(int_list, "partition ids that misbehave, e.g. \"1,3\"", default="")
    rounds: str = key(int_list, "rounds in which they misbehave (empty = every round)",
                      default="")
    delay: float = key(between(0.0, MAX_SECONDS, SECONDS_WHY),
                       "seconds a 'delay' client sleeps before training", default=0.0)


@dataclass(frozen=True)
class ExperimentConfig:
    seed: int = key(between(0, 2**32 - 1, "the seed range numpy and torch both accept"),
                    "seed of every random draw", default=0)
    resume: bool = key(None, "continue the run in <out.dir>/<run-name> from its checkpoint",
                       identity=False, default=False)
    resume_from: str = key(absolute_path_or_empty, "checkpoint file or run folder to resume",
                           identity=False, default="")
    out: OutConfig = field(default_factory=OutConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    fl: FLConfig = field(default_factory=FLConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> ExperimentConfig:
        """Build from a flat dotted dict; missing keys take their defaults."""
        specs = _specs()
        problems: list[str] = []
        for k in flat:
            if k not in specs:
                problems.append(f"unknown key {k!r}" + _did_you_mean(k, specs))
        values: dict[str, Any] = {}
        for k, v in flat.items():
            if k not in specs:
                continue
            spec = specs[k]
            coerced = _coerce(v, spec.type)
            if coerced is None:
                problems.append(f"{k} = {v!r} has type {type(v).__name__}; expected "
                                f"{spec.type.__name__}")
                continue
            allowed = spec.check(coerced) if spec.check else None
            if allowed:
                problems.append(f"{k} = {v!r} is invalid; allowed: {allowed}")
                continue
            values[k] = coerced
        if problems:
            raise ConfigError("invalid run config:\n  - " + "\n  - ".join(problems))
        config = _build(cls, values, prefix="")
        config._check_across_keys()
        return config

    def _check_across_keys(self) -> None:
        t = self.train
        if t.objective != "mixed":
            self._check_objective()
        elif not t.loss_parts():
            raise ConfigError(
                f"invalid run config: no loss term is left (train.weight-clean="
                f"{t.weight_clean}, train.adversarial={str(t.adversarial).lower()}, "
                f"train.weight-adv={t.weight_adv}, train.noise-std={t.noise_std}, "
                f"train.weight-noise={t.weight_noise}): the clean term needs "
                "train.weight-clean > 0, the PGD term train.adversarial=true and "
                "train.weight-adv > 0, the noise term train.noise-std > 0 and "
                "train.weight-noise > 0; enable one of them"
            )
        self._check_sharing()
        if self.fl.shared_share > 0 and self.fl.shared_pool == 0:
            raise ConfigError(
                f"invalid run config: fl.shared-share={self.fl.shared_share} shares a part of "
                "the shared pool G, but fl.shared-pool=0 makes no pool; set fl.shared-pool "
                "> 0 (e.g. 0.1: 10% of the training data, held back from the clients) or "
                "fl.shared-share=0"
            )
        if self.fl.client_data == "local" and self.fl.fraction_evaluate > 0:
            raise ConfigError(
                f"invalid run config: fl.fraction-evaluate={self.fl.fraction_evaluate} asks "
                "nodes to evaluate on their own test images, which fl.client-data=local nodes "
                "do not hold (their data-dir holds training images only); set "
                "fl.fraction-evaluate=0: the server evaluates centrally on its data.dir"
            )
        if self.resume and self.resume_from:
            raise ConfigError("invalid run config: set either resume=true or resume-from, "
                              "not both")

    def _check_sharing(self) -> None:
        """What does not combine with fl.sharing (see common.means, server.finetune)."""
        fl, mode = self.fl, f"fl.sharing={self.fl.sharing}"
        if fl.sharing != "raw" and fl.shared_share > 0:
            raise ConfigError(
                f"invalid run config: fl.shared-share={fl.shared_share} sends each client raw "
                f"images of G, which only fl.sharing=raw does; {mode} sends "
                + {"none": "nothing", "means": "only averages of client images",
                   "server": "no image (G stays on the server)"}[fl.sharing]
                + ". Set fl.shared-share=0 (G is still held back from the clients when "
                "fl.shared-pool > 0), or fl.sharing=raw")
        if fl.sharing == "server" and fl.shared_pool == 0:
            raise ConfigError(
                "invalid run config: fl.sharing=server fine-tunes the global model on the "
                "shared pool G, but fl.shared-pool=0 makes no pool; set fl.shared-pool > 0 "
                "(e.g. 0.1: 10% of the training data, held back from the clients)")
        if fl.sharing == "means" and self.train.objective != "mixed":
            raise ConfigError(
                f"invalid run config: fl.sharing=means trains on mixup targets, soft labels "
                f"that only train.objective=mixed (soft-label cross-entropy on every copy) "
                f"learns from; train.objective={self.train.objective} needs the hard label of "
                "each image. Set train.objective=mixed, or another fl.sharing")

    def _check_objective(self) -> None:
        """What does not combine with an objective other than mixed (common.objectives)."""
        t, name = self.train, f"train.objective={self.train.objective}"
        if not t.adversarial:
            raise ConfigError(
                f"invalid run config: {name} trains on adversarial examples by definition; "
                "train.adversarial=false only drops the PGD copies of train.objective=mixed. "
                "Set train.adversarial=true, or train.objective=mixed for clean (+ noise) "
                "training")
        if t.weight_clean != 1.0 or t.weight_adv != 1.0:
            raise ConfigError(
                f"invalid run config: train.weight-clean={t.weight_clean} and "
                f"train.weight-adv={t.weight_adv} weight the copies of train.objective=mixed; "
                f"{name} has its own terms (weighted by train.trades-beta, train.mart-beta). "
                "Leave both at 1.0, or use train.objective=mixed")
        if not self.attack.random_start and t.objective in ("trades", "calfat", "fgsm-rs"):
            why = ("is FGSM from a random start; from the clean image FGSM training "
                   "overfits catastrophically (Wong et al. 2020)" if t.objective == "fgsm-rs"
                   else "maximizes a KL divergence whose gradient is 0 at the clean image, "
                   "so its attack must start at x + 0.001 N(0, I)")
            raise ConfigError(f"invalid run config: {name} {why}; set "
                              "attack.random-start=true")

    def to_flat(self) -> dict[str, Any]:
        return {k: _get(self, s.path) for k, s in _specs().items()}

    def replace(self, **flat_updates: Any) -> ExperimentConfig:
        """A copy with some dotted keys changed, validated again (keys as in the run config:
        pass them via a dict, e.g. cfg.replace(**{"fl.num-rounds": 2}))."""
        return ExperimentConfig.from_flat({**self.to_flat(), **flat_updates})

    def identity(self) -> dict[str, Any]:
        """The keys that define the experiment (not where it runs or how long it waits)."""
        return {k: v for k, v in self.to_flat().items() if _specs()[k].identity}

    def identity_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def run_name(self) -> str:
        if self.out.run_name:
            return self.out.run_name
        return f"{self.fl.partition}-{self.model.activation}-{self.identity_hash()}"


# --- schema plumbing -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    path: tuple[str, ...]
    type: type
    check: Check | None
    help: str
    identity: bool
    default: Any


def _dotted(section: str, name: str) -> str:
    name = name.replace("_", "-")
    return f"{section}.{name}" if section else name


def _specs() -> dict[str, _Spec]:
    if not _SPECS:
        _collect(ExperimentConfig, (), "", _SPECS)
    return _SPECS


_SPECS: dict[str, _Spec] = {}


def _collect(cls, path, section, out) -> None:
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for name, f in hints.items():
        if _is_section(f):
            _collect(f.default_factory, path + (name,), name, out)
            continue
        typ = {"str": str, "int": int, "float": float, "bool": bool}[str(f.type)]
        out[_dotted(section, name)] = _Spec(
            path + (name,), typ, f.metadata["check"], f.metadata["help"],
            f.metadata["identity"], f.default,
        )


def _is_section(f: dataclasses.Field) -> bool:
    return dataclasses.is_dataclass(f.default_factory)


def _coerce(v: Any, typ: type) -> Any:
    """v as `typ`, or None when it is not acceptable (bool is not an int; int is a float)."""
    if typ is bool:
        return v if isinstance(v, bool) else None
    if typ is int:
        return v if isinstance(v, int) and not isinstance(v, bool) else None
    if typ is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return float(v) if math.isfinite(v) else None
    return v if isinstance(v, str) else None


def _build(cls, values: dict[str, Any], prefix: str):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if _is_section(f):
            kwargs[f.name] = _build(f.default_factory, values, f.name)
        else:
            k = _dotted(prefix, f.name)
            if k in values:
                kwargs[f.name] = values[k]
    return cls(**kwargs)


def _get(obj, path):
    for name in path:
        obj = getattr(obj, name)
    return obj


def _did_you_mean(k: str, specs: Mapping[str, _Spec]) -> str:
    import difflib

    close = difflib.get_close_matches(k, specs, n=1, cutoff=0.8)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f" ({hint}all keys: `python -m simulation keys`)"


def key_type(key: str) -> type | None:
    """The Python type of a run-config key (None for unknown keys)."""
    spec = _specs().get(key)
    return spec.type if spec else None


def defaults() -> dict[str, Any]:
    """Every key with its default value."""
    return ExperimentConfig().to_flat()


def describe() -> list[tuple[str, Any, str]]:
    """(key, default, help) for every key, in schema order."""
    return [(k, s.default if s.default is not dataclasses.MISSING else None, s.help)
            for k, s in _specs().items()]
