"""Trained tokenizers as small artifact directories, and the one-call loader for them.

    tokenizers/scenes_64/<name>/          name: rgb, depth, normal, semseg (the shipped ones)
      model.safetensors, config.json      ml-4m's release format (ml4m.save), so ml4m.load reads it
      spec.json                           the training spec: dataset, field, image size, recipe
      quality.json                        held-out metrics of exactly these weights, steps, machine

    tok, variables = load_tokenizer("tok_rgb@64")       # the 4M modality a shipped tokenizer makes
    tok, variables = load_tokenizer("scenes_64/rgb")    # a name under the repository's tokenizers/
    tok, variables = load_tokenizer("path/to/artifact") # any artifact (or ml-4m tokenizer) directory

Variables come back as numpy arrays (`compiled.replicate` puts them on a mesh).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

from fourm_jax.tokenizers import ml4m
from fourm_jax.tokenizers.vqvae import VQVAE

SHIPPED_DIR = pathlib.Path(__file__).resolve().parents[2] / "tokenizers"
# The 4M modality each shipped tokenizer produces -> its artifact under SHIPPED_DIR.
SHIPPED = {
    "tok_rgb@64": "scenes_64/rgb",
    "tok_depth@64": "scenes_64/depth",
    "tok_normal@64": "scenes_64/normal",
    "tok_semseg@64": "scenes_64/semseg",
}
SPEC_FILE = "spec.json"
QUALITY_FILE = "quality.json"


def save(directory: str | os.PathLike, tokenizer: VQVAE, variables: dict, spec: Mapping[str, Any],
         quality: Mapping[str, Any]) -> pathlib.Path:
    """Writes an artifact directory, replacing any previous one only once the new one is complete."""
    directory = pathlib.Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    ml4m.save(staging, tokenizer, variables)
    (staging / SPEC_FILE).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    (staging / QUALITY_FILE).write_text(json.dumps(quality, indent=2, sort_keys=True) + "\n")
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old)
    else:
        directory.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, directory)
    return directory


def resolve(name_or_dir: str | os.PathLike) -> pathlib.Path:
    """The artifact directory of a shipped modality name, a name under tokenizers/, or a path."""
    name = str(name_or_dir)
    for candidate in (SHIPPED_DIR / SHIPPED[name] if name in SHIPPED else None, SHIPPED_DIR / name,
                      pathlib.Path(name)):
        if candidate is not None and (candidate / ml4m.WEIGHTS_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"no tokenizer {name!r}: expected a directory with {ml4m.WEIGHTS_FILE}, a name under {SHIPPED_DIR} "
        f"or one of the shipped modalities {sorted(SHIPPED)} (build them with `make tokenizers`)")


def load_tokenizer(name_or_dir: str | os.PathLike) -> tuple[VQVAE, dict]:
    """(tokenizer, variables) of an artifact; see the module docstring for the names. An artifact
    saved without a decoder (its config names no dec_type) loads encoder-only."""
    directory = resolve(name_or_dir)
    config_file = directory / ml4m.CONFIG_FILE
    encoder_only = config_file.is_file() and "dec_type" not in json.loads(config_file.read_text())
    return ml4m.load(directory, encoder_only=encoder_only)


def read_spec(name_or_dir: str | os.PathLike) -> dict[str, Any]:
    """The training spec stored beside an artifact's weights."""
    path = resolve(name_or_dir) / SPEC_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the artifact has no training spec (not made by train_tokenizer)")
    return json.loads(path.read_text())


def token_modality(spec: Mapping[str, Any]) -> str:
    """The 4M modality an artifact's tokens form: `tok_<field>@<image size>`."""
    return f"tok_{spec['field']}@{spec['image_size']}"
