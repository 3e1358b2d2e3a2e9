"""Tokenizer specs: which dataset field a tokenizer eats, its architecture and how to train it.

A spec is a config file with get_config() (tokenizers/<name>.py) returning

    dataset, field, image_size     where the training images come from: a dataset directory or TFDS
                                   name (resolved under data_dir), the record field, the crop size
    data_dir, format               'tfds' (our ArrayRecord + TFDS metadata) or 'image_folder' (dataset
                                   is then the root of ml-4m's folder layout, field a folder)
    train_split, eval_split        held-out metrics come from eval_split (None: no evaluation)
    tokenizer                      TokenizerConfig fields
    train                          LossConfig fields + the optimisation recipe (batch, steps, lr, ...)

`load` reads and validates one (with command-line style overrides); `make_spec` builds one from
the shared training recipe so spec files only state what differs per modality.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from fourm_jax import configs
from fourm_jax.configs import ConfigError
from fourm_jax.tokenizers.config import TokenizerConfig
from fourm_jax.tokenizers.train import LossConfig

# ml-4m's VQ-VAE recipe (AdamW (0.9, 0.99), grad clip 1.0, model EMA 0.99, dead-code coefficient
# 32, codebook EMA 0.99, commitment weight 1, random resized crops of scale >= 0.8 with flips), with
# a learning rate and length for small images. The peak learning rate is
# base_lr * batch_size / 256 (ml-4m's scaling rule, fourm_jax.train.optimizer).
TRAIN_RECIPE = dict(
    loss_fn="mse", codebook_weight=1.0, model_ema_decay=0.99,
    batch_size=64, steps=10_000, warmup_steps=500, base_lr=4e-3, min_base_lr=4e-5, weight_decay=0.05,
    b1=0.9, b2=0.99, clip_grad=1.0, coef_ema_dead_code=32.0, seed=0,
    min_crop_scale=0.8, hflip=0.5,
    log_every=50, eval_every=1000, eval_examples=512, eval_batch_size=128, checkpoint_every=1000,
    keep_checkpoints=2,
)
SOURCE_FORMATS = ("tfds", "image_folder")
DATA_DEFAULTS = dict(data_dir="data", format="tfds", train_split="train", eval_split="validation")


@dataclasses.dataclass(frozen=True)
class Spec:
    config: ml_collections.ConfigDict
    tokenizer: TokenizerConfig
    loss: LossConfig


def make_spec(*, dataset: str, field: str, image_size: int, tokenizer: Mapping[str, Any],
              train: Mapping[str, Any] | None = None, **data: Any) -> ml_collections.ConfigDict:
    """A spec from the shared recipe; `data` overrides DATA_DEFAULTS (data_dir, format, splits)."""
    unknown = sorted(set(train or {}) - set(TRAIN_RECIPE))
    if unknown:
        raise ConfigError(f"unknown train field(s) {', '.join(unknown)}; known: {', '.join(TRAIN_RECIPE)}")
    unknown = sorted(set(data) - set(DATA_DEFAULTS))
    if unknown:
        raise ConfigError(f"unknown spec field(s) {', '.join(unknown)}; known: {', '.join(DATA_DEFAULTS)}")
    return ml_collections.ConfigDict(dict(
        dataset=dataset, field=field, image_size=image_size, **dict(DATA_DEFAULTS, **data),
        tokenizer=dict(tokenizer, image_size=image_size), train=dict(TRAIN_RECIPE, **(train or {}))))


def load(path: str, overrides: Sequence[str] = ()) -> Spec:
    """Reads a spec file (`path[:arg]`), applies `a.b=value` overrides and validates it."""
    config = configs.load(path, overrides)
    for field in ("dataset", "field", "image_size", "tokenizer", "train", *DATA_DEFAULTS):
        if field not in config:
            raise ConfigError(f"{path}: spec has no field {field!r}")
    if config.format not in SOURCE_FORMATS:
        raise ConfigError(f"{path}: format {config.format!r} is not one of {SOURCE_FORMATS}")
    tokenizer = TokenizerConfig.from_config(config.tokenizer)
    if tokenizer.image_size != config.image_size:
        raise ConfigError(f"{path}: tokenizer.image_size {tokenizer.image_size} differs from image_size "
                          f"{config.image_size}")
    return Spec(config=config, tokenizer=tokenizer, loss=LossConfig.from_config(config.train))
