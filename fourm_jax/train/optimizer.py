"""AdamW as ml-4m trains 4M: decoupled weight decay except on norms and biases, linear warmup then
cosine decay, lr scaled by global batch / 256, optional clipping, non-finite steps skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """ml-4m's linear scaling rule: lr = blr * global_batch / 256."""
    return base_lr * global_batch / 256


def warmup_cosine_schedule(peak_lr: float, total_steps: int, warmup_steps: int,
                           min_lr: float = 0.0) -> optax.Schedule:
    """ml-4m's cosine_scheduler as a function of the step.

    Warmup is `linspace(0, peak, W)` (both ends included, so step 0 has lr 0 and the peak appears
    at steps W-1 and W); then `min + (peak - min)(1 + cos(pi i / (T - W))) / 2` for i = step - W.
    Steps past T keep the last value.
    """
    if total_steps <= 0 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}), "
                         "total_steps > 0")
    decay_steps = total_steps - warmup_steps

    def schedule(step):
        step = jnp.minimum(jnp.asarray(step, jnp.float32), total_steps - 1)
        warm = peak_lr * step / max(warmup_steps - 1, 1)
        i = step - warmup_steps
        cosine = min_lr + 0.5 * (peak_lr - min_lr) * (1 + jnp.cos(math.pi * i / max(decay_steps, 1)))
        return jnp.where(step < warmup_steps, warm, cosine)

    return schedule


def _names(path) -> list[str]:
    names = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                names.append(str(getattr(key, attr)))
                break
    return names


def decays(path_names: list[str]) -> bool:
    """ml-4m's rule: no decay for norm parameters (any module named *norm*) and biases."""
    if path_names and path_names[-1] == "bias":
        return False
    return not any("norm" in name for name in path_names[:-1])


def weight_decay_mask(params: Any) -> Any:
    """A pytree of bools (True = decayed) with the structure of `params`."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(_names(path)), params)


def make_optimizer(config: ml_collections.ConfigDict | Mapping[str, Any],
                   global_batch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its learning-rate schedule from `config.optimizer`-style fields.

    Fields: base_lr, min_base_lr, warmup_steps, total_steps, weight_decay, b1, b2, eps,
    clip_grad (0 = off), skip_nonfinite.
    """
    c = dict(config)
    peak = scaled_lr(c["base_lr"], global_batch)
    schedule = warmup_cosine_schedule(peak, c["total_steps"], c["warmup_steps"],
                                      scaled_lr(c.get("min_base_lr", 0.0), global_batch))
    adamw = optax.adamw(schedule, b1=c.get("b1", 0.9), b2=c.get("b2", 0.95), eps=c.get("eps", 1e-8),
                        weight_decay=c.get("weight_decay", 0.05), mask=weight_decay_mask)
    chain = [optax.clip_by_global_norm(c["clip_grad"])] if c.get("clip_grad") else []
    tx = optax.chain(*chain, adamw)
    if c.get("skip_nonfinite", True):
        # Skips (and counts, in state.total_notfinite) every update whose gradients are not finite.
        tx = optax.apply_if_finite(tx, max_consecutive_errors=2**31 - 1)
    return tx, schedule
