"""AdamW as ml-4m trains 4M: decoupled weight decay except on norms and biases, linear warmup then
cosine decay, lr scaled by global batch / 256, optional clipping, non-finite steps skipped.

The learning rate is applied last, indexed by the number of updates (the global step, as ml-4m
indexes its schedule array), outside the skip: a skipped step keeps Adam's moments and count (as
torch.optim skips `optimizer.step()`), but the schedule still advances.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """`config.optimizer` of a run (defaults: ml-4m's). clip_grad 0 = no clipping."""

    base_lr: float = 1e-4
    min_base_lr: float = 0.0
    weight_decay: float = 0.05
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_grad: float = 0.0
    skip_nonfinite: bool = False

    def __post_init__(self):
        for field in ("base_lr", "eps"):
            if not getattr(self, field) > 0:
                raise ValueError(f"optimizer.{field} must be > 0, got {getattr(self, field)!r}")
        for field in ("min_base_lr", "weight_decay", "clip_grad"):
            if not getattr(self, field) >= 0:
                raise ValueError(f"optimizer.{field} must be >= 0, got {getattr(self, field)!r}")
        for field in ("b1", "b2"):
            if not 0 <= getattr(self, field) < 1:
                raise ValueError(f"optimizer.{field} must be in [0, 1), got {getattr(self, field)!r}")

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> OptimizerConfig:
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join('optimizer.' + k for k in unknown)}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**values)


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
    """A pytree of bools (True = decayed) with the structure of `params` (nested dicts by name)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: decays(_names(path)), params)


def make_optimizer(config: OptimizerConfig | ml_collections.ConfigDict | Mapping[str, Any], *,
                   global_batch: int, total_steps: int,
                   warmup_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its learning-rate schedule (a function of the global step)."""
    if not isinstance(config, OptimizerConfig):
        config = OptimizerConfig.from_config(config)
    peak = scaled_lr(config.base_lr, global_batch)
    schedule = warmup_cosine_schedule(peak, total_steps, warmup_steps,
                                      scaled_lr(config.min_base_lr, global_batch))
    # adamw at lr 1 yields -(adam update + wd * param); the schedule scales it afterwards.
    adamw = optax.adamw(1.0, b1=config.b1, b2=config.b2, eps=config.eps,
                        weight_decay=config.weight_decay, mask=weight_decay_mask)
    inner = optax.chain(optax.clip_by_global_norm(config.clip_grad), adamw) if config.clip_grad else adamw
    if config.skip_nonfinite:
        # Skips (and counts, in state.total_notfinite) every update whose gradients are not finite.
        inner = optax.apply_if_finite(inner, max_consecutive_errors=2**31 - 1)
    return optax.chain(inner, optax.scale_by_schedule(schedule)), schedule


def skipped_steps(opt_state) -> jax.Array:
    """Updates skipped so far for non-finite gradients (0 without skip_nonfinite)."""
    inner = opt_state[0]
    if isinstance(inner, optax.ApplyIfFiniteState):
        return inner.total_notfinite
    return jnp.zeros((), jnp.int32)
