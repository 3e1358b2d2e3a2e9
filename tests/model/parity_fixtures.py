"""Reads ml-4m parity fixtures (../shared/fixtures/parity format): weights rebuilt from the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re

import numpy as np

from fourm_jax.convert.safetensors_io import write_safetensors

FIXTURE_DIR = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "parity"
ENV_VAR = "FOURM_PARITY_FIXTURES"


def fixture_dirs() -> list[pathlib.Path]:
    """Every fixture directory (one holding manifest.json) under $FOURM_PARITY_FIXTURES if set, else
    under tests/fixtures/parity."""
    root = pathlib.Path(os.environ[ENV_VAR]) if os.environ.get(ENV_VAR) else FIXTURE_DIR
    return sorted(p.parent for p in root.glob("*/manifest.json"))


def materialise_weights(fixture: pathlib.Path, out_path: pathlib.Path) -> None:
    """Writes model.safetensors from manifest.json + buffers.npz, checking every entry's sha256."""
    manifest = json.loads((fixture / "manifest.json").read_text())
    buffers = np.load(fixture / "buffers.npz")
    seed = manifest["seed"]
    values: dict[str, np.ndarray] = {}
    for i, entry in enumerate(manifest["entries"]):
        shape, key = tuple(entry["shape"]), entry["key"]
        if "init" in entry:
            noise = np.random.default_rng([seed, i]).standard_normal(shape)
            value = (entry["init"]["mean"] + entry["init"]["std"] * noise).astype(np.float32)
        elif "same_as" in entry:
            value = values[entry["same_as"]].copy()
        elif entry.get("buffer"):
            value = np.asarray(buffers[entry["npz_key"]], dtype=np.float32)
        else:
            raise ValueError(f"{fixture}/manifest.json: entry {key!r} has no rule")
        value = value.astype(np.dtype(entry["dtype"]).newbyteorder("<")).reshape(shape)
        digest = hashlib.sha256(value.tobytes()).hexdigest()
        if digest != entry["sha256"]:
            raise ValueError(f"{fixture}/manifest.json: entry {key!r} rebuilt with sha256 {digest}, "
                             f"expected {entry['sha256']}")
        values[key] = value
    write_safetensors(out_path, [(k, v.shape, v.dtype, lambda v=v: v) for k, v in values.items()])


def batches(fixture: pathlib.Path) -> dict[str, tuple[dict, int, int]]:
    """{'b0': (batch, num_encoder_tokens, num_decoder_tokens), ...} from batch.npz."""
    data = np.load(fixture / "batch.npz")
    names = sorted({k.split("/")[0] for k in data.files})
    out = {}
    for b in names:
        batch = {}
        for modality in data[f"{b}/modalities"]:
            batch[str(modality)] = {field: data[f"{b}/{modality}/{field}"] for field in
                                    ("tensor", "input_mask", "target_mask", "decoder_attention_mask")}
        out[b] = (batch, int(data[f"{b}/num_encoder_tokens"]), int(data[f"{b}/num_decoder_tokens"]))
    return out


def tolerances(fixture: pathlib.Path) -> dict[str, float]:
    """(loss rtol, activation atol) from the fixture README's 'Tolerances' line; defaults 1e-5 / 1e-4."""
    text = (fixture / "README.md").read_text() if (fixture / "README.md").exists() else ""
    number = r"([0-9]+(?:\.[0-9]+)?(?:e-?[0-9]+)?)"
    loss = re.search(r"losses rel " + number, text)
    act = re.search(r"activations and logits abs " + number, text)
    return dict(loss_rtol=float(loss.group(1)) if loss else 1e-5,
                activation_atol=float(act.group(1)) if act else 1e-4)
