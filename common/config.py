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
    train_limit: int = key(at_least(0), "class-balanced training subset size; 0 = all",
                           default=0)
    eval_limit: int = key(at_least(0), "central evaluation subset size; 0 = whole test set",
                          default=500)


@dataclass(frozen=True)
class ModelConfig:
    activation: str = key(one_of(*activations.NAMES), "activation function", default="relu")
    width: int = key(at_least(1), "channels of the first stage (64 = standard ResNet-18)",
                     default=8)
    variant: str = key(one_of(*VARIANTS), "standard or no-downsample", default="standard")


@dataclass(frozen=True)
class TrainConfig:
    lr: float = key(positive, "base learning rate", default=0.05)
    schedule: str = key(one_of(*schedules.NAMES), "learning-rate schedule", default="fixed")
    local_epochs: int = key(at_least(1), "epochs per round on each client", default=2)
    batch_size: int = key(at_least(1), "images per step (before adding PGD/noise copies)",
                          default=32)
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
    amp: bool = key(None, "bf16 autocast on CUDA (ignored on CPU)", identity=False,
                    default=True)
    compile: bool = key(None, "torch.compile the model", identity=False, default=False)


@dataclass(frozen=True)
class AttackConfig:
    eps: float = key(in_range(0.0, 1.0), "training PGD L-inf budget in [0,1] pixels",
                     default=EPS_8)
    step: float = key(positive, "training PGD step size", default=2.5 * EPS_8 / 3)
    steps: int = key(at_least(1), "training PGD iterations", default=3)
    random_start: bool = key(None, "start PGD at a random point of the eps-ball", default=True)


@dataclass(frozen=True)
class EvalConfig:
    attacks: str = key(attack_list, "comma-separated attacks, e.g. fgsm,pgd20,pgd50x5,"
                       "eot-pgd20,cw20,deepfool", default="fgsm,pgd10")
    noise_std: float = key(at_least(0.0), "test-time noise sigma; >0 adds noisy columns",
                           default=0.05)
    eps: float = key(in_range(0.0, 1.0), "evaluation L-inf budget", default=EPS_8)
    step: float = key(positive, "evaluation PGD step size", default=2 / 255)
    eot_samples: int = key(at_least(1), "noise draws per EOT-PGD step", default=10)
    deepfool_l2: float = key(positive, "L2 bound for DeepFool accuracy", default=0.5)
    batch_size: int = key(at_least(1), "evaluation batch size", identity=False, default=250)
    every: int = key(at_least(1), "central evaluation every N rounds (last always)",
                     default=1)


@dataclass(frozen=True)
class FLConfig:
    num_rounds: int = key(at_least(1), "federated rounds (centralized: epochs / local-epochs)",
                          default=3)
    partition: str = key(one_of("iid", "classes", "dirichlet"), "client data partition",
                         default="iid")
    classes_per_client: int = key(in_range(1, 10), "k for the k-classes scheme", default=2)
    dirichlet_alpha: float = key(positive, "concentration of the Dirichlet scheme",
                                 default=0.5)
    min_partition_size: int = key(at_least(0), "Dirichlet: resample until every client has "
                                  "this many images", default=10)
    shared_pool: float = key(in_range(0.0, 1.0, hi_open=True),
                             "beta: size of the shared pool G as a fraction of training data",
                             default=0.1)
    shared_share: float = key(in_range(0.0, 1.0),
                              "alpha: fraction of G each client receives", default=0.0)
    min_nodes: int = key(at_least(1), "nodes needed before a round starts", default=2)
    fraction_train: float = key(in_range(0.0, 1.0), "fraction of nodes sampled per round",
                                default=1.0)
    fraction_evaluate: float = key(in_range(0.0, 1.0), "fraction of nodes running local "
                                   "evaluation per round (0 = none)", default=0.0)
    node_wait: float = key(at_least(0.0), "seconds to wait for min-nodes before giving up",
                           identity=False, default=300.0)
    round_timeout: float = key(positive, "seconds to wait for the replies of one round",
                               identity=False, default=3600.0)
    aggregation: str = key(one_of("fedavg", "fedmedian", "fedtrimmedavg", "krum"),
                           "how client updates are combined", default="fedavg")
    trim_fraction: float = key(in_range(0.0, 0.5, hi_open=True),
                               "FedTrimmedAvg: fraction cut at each end", default=0.2)
    krum_byzantine: int = key(at_least(0), "Krum: number of malicious nodes tolerated",
                              default=1)


@dataclass(frozen=True)
class FaultConfig:
    """Fault injection, to test robust aggregation and failure handling."""

    mode: str = key(one_of("none", "nan", "wrong-shape", "wrong-dtype", "sign-flip", "delay"),
                    "what the partitions in fault.partitions do", default="none")
    partitions: str = key(int_list, "partition ids that misbehave, e.g. \"1,3\"", default="")
    rounds: str = key(int_list, "rounds in which they misbehave (empty = every round)",
                      default="")
    delay: float = key(at_least(0.0), "seconds a 'delay' client sleeps before training",
                       default=0.0)


@dataclass(frozen=True)
class ExperimentConfig:
    seed: int = key(at_least(0), "seed of every random draw", default=0)
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
        if t.weight_clean + (t.weight_adv if t.adversarial else 0) + t.weight_noise == 0:
            raise ConfigError(
                "invalid run config: train.weight-clean, train.weight-adv and "
                "train.weight-noise are all 0 (or adversarial=false with the others 0); "
                "at least one loss term needs a positive weight"
            )
        if self.resume and self.resume_from:
            raise ConfigError("invalid run config: set either resume=true or resume-from, "
                              "not both")

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
