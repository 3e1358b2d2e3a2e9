"""Per-modality input handling, as ml-4m prepares tokenizer inputs (MODALITY_TRANSFORMS_DIVAE).

    raw (what files / datasets hold)        ->  model input (what VQVAE.encode takes)
    rgb, normal, image: uint8 [..., H, W, C]  ->  x / 255, then (x - 0.5) / 0.5: [-1, 1]
    depth: uint16 [..., H, W] (PNG / 65535)   ->  [..., H, W, 1], robust per-image standardisation
    semseg: uint8 ids [..., H, W]             ->  int32 ids + 1 (mod 256: 255 "ignore" -> 0 "no class")
    feature_map, vector: float                ->  unchanged

The array functions use jax.numpy and work on host arrays and inside jit alike. `check_input`
and `read_file` validate on the host and raise errors that name the file or field.
"""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from fourm_jax.tokenizers.config import TokenizerConfig

DEPTH_PNG_SCALE = 2**16 - 1
DEPTH_TRUNCATION = 0.1  # ml-4m drops the lowest and highest 10% of values for the statistics
DEPTH_EPS = 1e-6


def normalize_image(x: jax.Array) -> jax.Array:
    """uint8 (or [0, 1] float) image -> [-1, 1] (ml-4m's mean = std = 0.5 normalisation)."""
    x = jnp.asarray(x)
    if x.dtype == jnp.uint8:
        x = x.astype(jnp.float32) / 255.0
    return (x.astype(jnp.float32) - 0.5) / 0.5


def denormalize_image(x: jax.Array) -> jax.Array:
    """Decoder output in [-1, 1] -> [0, 1] (clipped), for display and metrics."""
    return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def depth_statistics(depth: jax.Array, truncation: float = DEPTH_TRUNCATION) -> tuple[jax.Array, jax.Array]:
    """(mean, sqrt(var + 1e-6)) `[..., 1, 1]` of ml-4m's truncated depth standardisation: per image
    (last two axes), sort the values, keep indices [int(t n), int((1 - t) n)), unbiased variance."""
    depth = jnp.asarray(depth, jnp.float32)
    n = depth.shape[-1] * depth.shape[-2]
    lo, hi = int(truncation * n), int((1 - truncation) * n)
    kept = jnp.sort(depth.reshape(*depth.shape[:-2], n), axis=-1)[..., lo:hi]
    return kept.mean(-1)[..., None, None], jnp.sqrt(kept.var(-1, ddof=1) + DEPTH_EPS)[..., None, None]


def standardize_depth(depth: jax.Array, truncation: float = DEPTH_TRUNCATION) -> jax.Array:
    """ml-4m's robust per-image standardisation `(depth - mean) / scale`, applied to the whole map."""
    mean, scale = depth_statistics(depth, truncation)
    return (jnp.asarray(depth, jnp.float32) - mean) / scale


def depth_input(raw: jax.Array) -> jax.Array:
    """uint16 depth PNG values `[..., H, W]` (or float depth) -> standardised `[..., H, W, 1]`."""
    raw = jnp.asarray(raw)
    depth = raw.astype(jnp.float32) / DEPTH_PNG_SCALE if raw.dtype == jnp.uint16 else raw
    return standardize_depth(depth)[..., None]


def shift_semseg(ids: jax.Array) -> jax.Array:
    """ml-4m's `shift_idx_by_one` on uint8 ids: c -> c + 1, 255 (ignore) wraps to 0."""
    return (jnp.asarray(ids).astype(jnp.int32) + 1) % 256


def normalize(modality: str, raw: jax.Array) -> jax.Array:
    """Raw modality values -> the tokenizer's model input (see the module docstring)."""
    if modality in ("rgb", "normal", "image"):
        return normalize_image(raw)
    if modality == "depth":
        return depth_input(raw)
    if modality == "semseg":
        return shift_semseg(raw)
    if modality in ("feature_map", "vector"):
        return jnp.asarray(raw, jnp.float32)
    raise ValueError(f"unknown modality {modality!r}")


def hflip(modality: str, x: jax.Array) -> jax.Array:
    """Horizontal flip of a model input `[..., H, W(, C)]`; surface normals also negate their x
    component (ml-4m flips the PNG and sets R <- 255 - R, which is negation in [-1, 1])."""
    x = jnp.asarray(x)
    if modality == "semseg":
        return x[..., ::-1]
    x = x[..., ::-1, :]
    if modality == "normal":
        x = x.at[..., 0].multiply(-1)
    return x


# ----------------------------------------------------------------------------- validation

def check_input_shape(config: TokenizerConfig, shape: tuple[int, ...], dtype, name: str,
                      size: tuple[int, int] | None = None) -> None:
    """Validates the shape and dtype of a batch of model inputs (works on traced arrays too):
    rank and channels, the size (when given) and its divisibility by the patch, integer semseg ids."""
    example = tuple(shape[1:])
    if config.modality == "vector":
        ok = len(example) == 1 and example[0] == config.n_channels
        expected = f"[B, {config.n_channels}]"
    elif config.modality == "semseg":
        ok = len(example) == 2
        expected = "[B, H, W] class ids"
    else:
        ok = len(example) == 3 and example[-1] == config.n_channels
        expected = f"[B, H, W, {config.n_channels}]"
    if not shape or not ok:
        raise ValueError(f"{name}: expected {config.modality} input of shape {expected}, got {tuple(shape)}")
    if config.modality != "vector":
        height, width = example[:2]
        if size is not None and (height, width) != tuple(size):
            raise ValueError(f"{name}: expected size {size[0]}x{size[1]}, got {height}x{width}")
        if height % config.token_patch or width % config.token_patch:
            raise ValueError(f"{name}: size {height}x{width} is not divisible by the patch size "
                             f"{config.token_patch}")
    if config.modality == "semseg" and not np.issubdtype(dtype, np.integer):
        raise ValueError(f"{name}: semseg input must hold integer class ids, got dtype {dtype}")


def check_input(config: TokenizerConfig, x: np.ndarray, name: str,
                size: tuple[int, int] | None = None) -> None:
    """Validates a batch of model inputs on the host; errors name `name` (a file or field).

    `check_input_shape`, plus semseg ids in [0, n_labels) and finite values elsewhere.
    """
    x = np.asarray(x)
    check_input_shape(config, x.shape, x.dtype, name, size)
    if config.modality == "semseg":
        if x.size and (x.min() < 0 or x.max() >= config.n_labels):
            raise ValueError(f"{name}: class ids must lie in [0, {config.n_labels}), got "
                             f"[{x.min()}, {x.max()}]")
    elif not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: contains {np.count_nonzero(~np.isfinite(x))} NaN or infinite value(s)")


def read_file(path: str | os.PathLike, modality: str) -> np.ndarray:
    """Raw values of one modality file: a PNG/JPEG (via PIL) or a .npy array.

    rgb / normal / image -> uint8 [H, W, 3]; depth -> [H, W] (16-bit PNGs stay uint16);
    semseg -> uint8 ids [H, W] (palette index); feature_map / vector -> the .npy array.
    Unreadable files and wrong channel counts are errors naming the file.
    """
    path = pathlib.Path(path)
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read the array ({e})") from e
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if modality in ("rgb", "normal", "image"):
                array = np.asarray(image.convert("RGB"))
            elif modality == "semseg":
                array = np.asarray(image if image.mode in ("P", "L") else image.convert("L"))
            elif modality == "depth":
                array = np.asarray(image)
                if array.dtype == np.int32:  # PIL reads 16-bit PNGs as mode "I"
                    array = array.astype(np.uint16)
            else:
                raise ValueError(f"{path}: modality {modality!r} is not read from images; use a .npy file")
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{path}: cannot read the image ({e})") from e
    if modality in ("depth", "semseg") and array.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel {modality} image, got shape {array.shape}")
    return array
