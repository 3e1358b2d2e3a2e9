"""Checkpoint conversion between directories: ml-4m release format <-> fourm_jax Orbax.

    kind ml4m:  DIR/model.safetensors + DIR/config.json (what FM.from_pretrained / load_safetensors read)
    kind orbax: DIR/params + DIR/config (fourm_jax.train.checkpoint; trainer and sampler read it)

Tensors stream one at a time (safetensors is memory-mapped on read and written tensor by tensor),
so the peak memory is about one copy of the model. Output goes to a temporary directory beside the
destination and is renamed into place when complete: on any error nothing is left at DST.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile

from flax import nnx

from fourm_jax.convert.ml4m import (
    ConversionError,
    config_from_ml4m,
    config_to_ml4m,
    export_tensors,
    fill_from,
    model_from_source,
)
from fourm_jax.convert.safetensors_io import TensorSource, write_safetensors
from fourm_jax.model.fourm import FourM, abstract_fourm
from fourm_jax.train import checkpoint

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
KINDS = ("ml4m", "orbax")


def read_ml4m_config(directory: str | pathlib.Path) -> dict:
    path = pathlib.Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (an ml-4m checkpoint directory holds {CONFIG_FILE} and "
                                f"{WEIGHTS_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def read_ml4m(directory: str | pathlib.Path, **overrides) -> FourM:
    """A FourM (jax arrays) from an ml-4m checkpoint directory; `overrides` set ModelConfig fields
    that ml-4m's config does not carry (scan_layers, dtype, remat_policy, ...)."""
    config = config_from_ml4m(read_ml4m_config(directory), **overrides)
    return model_from_source(TensorSource(pathlib.Path(directory) / WEIGHTS_FILE), config)


@contextlib.contextmanager
def _staged(destination: pathlib.Path):
    """Yields a temporary path beside `destination`; renames it to `destination` on success."""
    destination = destination.absolute()
    if destination.exists():
        raise FileExistsError(f"{destination} already exists; remove it or choose another destination")
    destination.parent.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        staged = scratch / destination.name
        yield staged
        os.rename(staged, destination)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_ml4m(model: FourM, directory: str | pathlib.Path) -> None:
    """Writes model.safetensors (every key ml-4m's strict loader expects, float32, both copies of
    shared and tied tensors, zero buffers) and config.json in ml-4m's release format. The config
    is also stored as safetensors metadata, as in ml-4m's released files."""
    ml4m_config = config_to_ml4m(model.config)
    with _staged(pathlib.Path(directory)) as staged:
        staged.mkdir()
        (staged / CONFIG_FILE).write_text(json.dumps(ml4m_config, indent=2) + "\n")
        metadata = {key: json.dumps(value) for key, value in ml4m_config.items()}
        write_safetensors(staged / WEIGHTS_FILE, export_tensors(model), metadata)


def ml4m_to_orbax(source: str | pathlib.Path, destination: str | pathlib.Path, **overrides) -> None:
    """ml-4m checkpoint directory -> fourm_jax Orbax checkpoint (host memory: one model copy)."""
    config = config_from_ml4m(read_ml4m_config(source), **overrides)
    model = abstract_fourm(config)
    fill_from(model, TensorSource(pathlib.Path(source) / WEIGHTS_FILE))
    with _staged(pathlib.Path(destination)) as staged:
        checkpoint.save_params(staged, nnx.state(model), config)


def orbax_to_ml4m(source: str | pathlib.Path, destination: str | pathlib.Path) -> None:
    """fourm_jax Orbax checkpoint (params-only, or a training run / step) -> ml-4m directory."""
    config, state = checkpoint.load_params(source, as_numpy=True)
    model = nnx.merge(nnx.graphdef(abstract_fourm(config)), state)
    write_ml4m(model, destination)


def convert(source_kind: str, source: str | pathlib.Path, destination_kind: str,
            destination: str | pathlib.Path, **overrides) -> None:
    """Converts between checkpoint kinds ('ml4m', 'orbax')."""
    for kind in (source_kind, destination_kind):
        if kind not in KINDS:
            raise ValueError(f"unknown checkpoint kind {kind!r}; kinds: {', '.join(KINDS)}")
    if (source_kind, destination_kind) == ("ml4m", "orbax"):
        ml4m_to_orbax(source, destination, **overrides)
    elif (source_kind, destination_kind) == ("orbax", "ml4m"):
        if overrides:
            raise ValueError("config overrides apply only when reading an ml-4m checkpoint")
        orbax_to_ml4m(source, destination)
    else:
        raise ValueError(f"nothing to convert from {source_kind} to {destination_kind}")

