"""Run-config overrides from preset files and --set key=value, validated up front."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from common.config import ConfigError, ExperimentConfig, defaults, key_type

CENTRALIZED = {  # one client holding the whole training set: the centralized baseline
    "fl.partition": "iid",
    "fl.shared-share": 0.0,
    "fl.shared-pool": 0.0,
    "fl.min-nodes": 1,
    "fl.fraction-train": 1.0,
}


class UsageError(ValueError):
    """A command-line argument is wrong; the message says how to fix it."""


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        name = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            flat.update(flatten(v, name))
        else:
            flat[name] = v
    return flat


def load_preset(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"preset file {path} not found (presets live in presets/*.toml)")
    try:
        return flatten(tomllib.loads(path.read_text()))
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"preset file {path} is not valid TOML: {exc}") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """'key=value' with a TOML value. For string keys the text is taken as it is (quotes
    optional), so fl.partition=iid and fault.partitions=1,3 need no TOML quoting."""
    if "=" not in text:
        raise UsageError(f"--set expects key=value, got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    if key_type(key) is str:
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            raw = raw[1:-1]
        return key, raw
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # let the config check report the type
    return key, value


def absolutize_paths(flat: dict[str, Any]) -> dict[str, Any]:
    """The harness knows the user's working directory, Flower's processes do not: make
    relative paths absolute here."""
    out = dict(flat)
    for key in ("data.dir", "out.dir", "resume-from"):
        value = out.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            out[key] = str(Path(value).expanduser().resolve())
    return out


def build_config(presets: list[str], assignments: list[str], centralized: bool = False
                 ) -> ExperimentConfig:
    """The validated config of presets, then --set assignments, on top of the defaults."""
    overrides: dict[str, Any] = {}
    for preset in presets:
        overrides.update(load_preset(preset))
    for text in assignments:
        key, value = parse_assignment(text)
        overrides[key] = value
    if centralized:
        overrides.update(CENTRALIZED)
    overrides = absolutize_paths(overrides)
    return ExperimentConfig.from_flat({**defaults(), **overrides})  # raises ConfigError


def flower_overrides(cfg: ExperimentConfig) -> dict[str, Any]:
    """What Flower's run config gets on top of pyproject.toml's defaults, which are the
    config's own (tests/test_config.py): every key whose value differs from them. The config
    is the one thing the harness passes down; this is derived from it when a run starts."""
    base = defaults()
    return {k: v for k, v in cfg.to_flat().items() if v != base[k]}


__all__ = ["CENTRALIZED", "ConfigError", "UsageError", "build_config", "flower_overrides",
           "load_preset"]
