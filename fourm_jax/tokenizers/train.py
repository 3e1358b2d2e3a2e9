"""Training core of a VQ-VAE tokenizer, as ml-4m's `run_training_vqvae.py` trains one.

One step = loss and gradients (reconstruction + codebook_weight * commitment), an optimizer
update of `params`, the lucid codebook's EMA update and dead-code restart in `buffers`, and an
optional EMA copy of all variables (ml-4m's ModelEma). `make_train_step` returns a pure function
`step(state, x, rng) -> (state, metrics)` for the caller to jit with its shardings and
`donate_argnums=0`; the batch `x` is the model input (what `VQVAE.encode` takes), which is also the
reconstruction target. Randomness comes from `fold_in(rng, state.step)`, so a resumed run draws
the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from fourm_jax.configs import ConfigError
from fourm_jax.tokenizers import losses, metrics, quantizers
from fourm_jax.tokenizers.config import TokenizerConfig
from fourm_jax.tokenizers.vqvae import VQVAE


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """How a tokenizer is trained (ml-4m's defaults: commitment weight 1, model EMA 0.99)."""

    loss_fn: str = "mse"
    codebook_weight: float = 1.0
    model_ema_decay: float | None = 0.99  # None: no EMA copy of the variables

    def __post_init__(self):
        if self.loss_fn not in losses.LOSS_FNS:
            raise ConfigError(f"train.loss_fn: must be one of {losses.LOSS_FNS}, got {self.loss_fn!r}")
        if self.codebook_weight < 0:
            raise ConfigError(f"train.codebook_weight: must be >= 0, got {self.codebook_weight!r}")
        if self.model_ema_decay is not None and not 0 <= self.model_ema_decay < 1:
            raise ConfigError(f"train.model_ema_decay: must be in [0, 1) or None, got "
                              f"{self.model_ema_decay!r}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ml_collections.ConfigDict) -> LossConfig:
        """From a spec's `train` section; keys that are not loss settings (lr, steps, ...) are ignored."""
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def dead_code_threshold(global_batch_size: int, tokens_per_image: int, codebook_size: int,
                        coef_ema_dead_code: float = 32.0) -> float:
    """ml-4m's rule: a code is dead below 1/coef of its share under uniform use of one batch."""
    return global_batch_size * tokens_per_image / codebook_size / coef_ema_dead_code


def with_dead_code_threshold(config: TokenizerConfig, global_batch_size: int, image_size: int,
                             coef_ema_dead_code: float = 32.0) -> TokenizerConfig:
    """The config with `threshold_ema_dead_code` set for a batch size, as ml-4m's get_model does."""
    grid_h, grid_w = config.token_grid(image_size, image_size)
    threshold = dead_code_threshold(global_batch_size, grid_h * grid_w * config.num_codebooks,
                                    config.codebook_size, coef_ema_dead_code)
    return dataclasses.replace(config, threshold_ema_dead_code=threshold)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    buffers: Any
    opt_state: Any
    ema_variables: Any  # {'params', 'buffers'} averaged, or None

    @property
    def variables(self) -> dict:
        return {"params": self.params, "buffers": self.buffers}


def init_train_state(tokenizer: VQVAE, optimizer: optax.GradientTransformation, rng: jax.Array,
                     loss_config: LossConfig = LossConfig(), variables: dict | None = None) -> TrainState:
    """A fresh state (or one around given variables, e.g. an imported ml-4m tokenizer)."""
    variables = tokenizer.init(rng) if variables is None else variables
    variables = jax.tree.map(jnp.asarray, variables)
    # A copy, not the same buffers: the train step donates the state, and one buffer cannot be
    # donated twice.
    ema = jax.tree.map(jnp.copy, variables) if loss_config.model_ema_decay is not None else None
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], buffers=variables["buffers"],
                      opt_state=optimizer.init(variables["params"]), ema_variables=ema)


def loss_and_outputs(tokenizer: VQVAE, loss_config: LossConfig, params: dict, buffers: dict, x: jax.Array,
                     rng: jax.Array) -> tuple[jax.Array, dict]:
    """(total loss, aux) of one batch with the quantizer in training mode."""
    variables = {"params": params, "buffers": buffers}
    z = tokenizer.encode_latents(variables, x)
    quantized = tokenizer.quantize_for_training(variables, z, rng)
    output = tokenizer.decode_quant(variables, quantized["quant"])
    reconstruction = losses.reconstruction_loss(loss_config.loss_fn, output, x)
    total = reconstruction + loss_config.codebook_weight * quantized["commitment"]
    return total, {"reconstruction": reconstruction, "commitment": quantized["commitment"],
                   "tokens": quantized["tokens"], "latents": quantized["latents"], "ids": quantized["ids"]}


def make_train_step(tokenizer: VQVAE, optimizer: optax.GradientTransformation,
                    loss_config: LossConfig = LossConfig()) -> Callable:
    """`step(state, x, rng) -> (state, metrics)`, pure; jit it (with shardings, donating the state)."""
    config = tokenizer.config

    def step(state: TrainState, x: jax.Array, rng: jax.Array):
        rng = jax.random.fold_in(rng, state.step)
        rng_quantizer, rng_restart = jax.random.split(rng)
        loss_fn = lambda p: loss_and_outputs(tokenizer, loss_config, p, state.buffers, x, rng_quantizer)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        buffers = state.buffers
        step_metrics = {"loss": loss, "reconstruction": aux["reconstruction"],
                        "commitment": aux["commitment"], "grad_norm": optax.tree.norm(grads)}
        if config.quant_type == "lucid":
            codebook = buffers["quantizer"]
            embed, cluster_size = quantizers.ema_codebook_update(
                codebook["embed"], codebook["cluster_size"], aux["latents"], aux["ids"], config.ema_decay)
            embed = quantizers.restart_dead_codes(
                rng_restart, embed, cluster_size, aux["latents"], config.threshold_ema_dead_code,
                config.code_replacement_policy)
            buffers = {**buffers, "quantizer": {"embed": embed, "cluster_size": cluster_size}}
            step_metrics["dead_codes"] = (cluster_size < config.threshold_ema_dead_code).sum()
        histogram = metrics.token_histogram(aux["tokens"], config.codebook_size)
        step_metrics |= {"codebook_usage": metrics.codebook_usage(histogram),
                         "perplexity": metrics.perplexity(histogram)}
        ema = state.ema_variables
        if ema is not None:
            decay = loss_config.model_ema_decay
            current = {"params": params, "buffers": buffers}
            ema = jax.tree.map(lambda e, v: decay * e + (1 - decay) * v, ema, current)
        new_state = state.replace(step=state.step + 1, params=params, buffers=buffers, opt_state=opt_state,
                                  ema_variables=ema)
        return new_state, step_metrics

    return step


def make_eval_step(tokenizer: VQVAE, *, num_labels: int | None = None) -> Callable:
    """`eval_step(variables, x, raw=None) -> stats` (metrics.reconstruction_stats of one batch, the
    tokenizer in inference mode); add the stats over batches and `metrics.summarize` them."""
    config = tokenizer.config

    def eval_step(variables: dict, x: jax.Array, raw: jax.Array | None = None) -> dict:
        quant, tokens = tokenizer.quantize(variables, tokenizer.encode_latents(variables, x))
        output = tokenizer.decode_quant(variables, quant)
        return metrics.reconstruction_stats(config.modality, output, x, tokens, config.codebook_size,
                                            raw_target=raw, num_labels=num_labels or config.n_labels)

    return eval_step
