"""Loads ml_collections config files (`path.py[:arg]`) with dotted overrides, outside absl flags.

Command-line tools use `ml_collections.config_flags`; this is the same contract for code that
composes runs (tests, sweeps): `load("configs/model.py:fm_tiny_6e_6d_gelu", ["model.dim=256"])`.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field."""


def reject_unknown_fields(cls, values: Mapping[str, Any], prefix: str) -> None:
    """Raises ConfigError naming every key of `values` that is not a field of dataclass `cls`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(f'{prefix}.{k}' for k in unknown)}; "
                          f"known: {', '.join(sorted(known))}")


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    path, _, arg = spec.partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_fourm_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} defines no get_config()")
    config = module.get_config(arg) if arg else module.get_config()
    for override in overrides:
        apply_override(config, override)
    return config


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Sets `a.b.c=value`; the value is a Python literal when it parses as one, else a string."""
    key, sep, raw = override.partition("=")
    if not sep:
        raise ValueError(f"override {override!r} is not of the form field.path=value")
    *parents, leaf = key.strip().split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node:
            raise KeyError(f"override {override!r}: config has no field {'.'.join(parents[:i + 1])!r}")
        node = node[part]
    if leaf not in node:
        raise KeyError(f"override {override!r}: config has no field {key.strip()!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    current = node[leaf]
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        value = type(current)(value)
    node[leaf] = value
