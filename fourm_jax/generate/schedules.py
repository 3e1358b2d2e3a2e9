"""Generation schedules in ml-4m's form: one dict per sampler step.

`build_chained_generation_schedules` takes ml-4m's arguments (lists per target domain) and returns
a flat list of steps `{target_domain, scheme, num_tokens, temperature, cfg_scale,
cfg_cond_domains}`, the same list ml-4m builds, so schedules and recipes carry over. The token,
temperature and guidance schedules below reproduce ml-4m's numbers exactly (including Python's
banker's rounding in the cosine schedule and numpy's integer truncation in the linear one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fourm_jax import modalities

SCHEMES = ("maskgit", "roar", "autoregressive")
TOKEN_SCHEDULES = ("cosine", "linear")


def cosine_schedule(num_steps: int, total_tokens: int) -> np.ndarray:
    """Tokens decoded per step, following the cosine mask ratio 0.5 (1 + cos(pi i / S)): few at
    both ends, many in the middle; the last step takes the remainder."""
    ratio = [0.5 * (1 + math.cos(math.pi * i / num_steps)) for i in range(num_steps)]
    tokens = [round(total_tokens * (a - b)) for a, b in zip(ratio[:-1], ratio[1:], strict=True)]
    tokens.append(total_tokens - sum(tokens))
    return np.array(tokens)


def linear_schedule(num_steps: int, total_tokens: int) -> np.ndarray:
    """Tokens per step from an integer linspace, largest first; steps with no token are dropped."""
    tokens = np.diff(np.linspace(0, total_tokens, num_steps + 1, dtype=int))
    return np.trim_zeros(np.sort(tokens)[::-1], "b")


def continue_schedule(schedule: np.ndarray, num_current_tokens: int) -> np.ndarray:
    """The rest of a token schedule once num_current_tokens are decoded (first step shortened)."""
    cumulative = np.cumsum(schedule)
    keep = cumulative > num_current_tokens
    rest = np.array(schedule)[keep]
    rest[0] = cumulative[keep][0] - num_current_tokens
    return rest


def linear_temp_schedule(temp: float, token_schedule: np.ndarray) -> np.ndarray:
    """temp times the share of tokens still undecoded before each step (at least 1e-9)."""
    total = token_schedule.sum()
    decayed = temp * (total - token_schedule.cumsum()) / total
    return np.concatenate([[temp * 1.0], decayed[:-1]]).clip(min=1e-9)


def onex_temp_schedule(max_t: float, min_t: float, token_schedule: np.ndarray, power: float = 0.5,
                       min_linspace: float = 1, max_linspace: float = 100) -> np.ndarray:
    """ml-4m's one-over-x temperatures: y = x^-power on a linspace as long as the total number of
    tokens, rescaled to [0, 1], times the undecoded share after each step; step k takes y[k]."""
    x = np.linspace(min_linspace, max_linspace, num=int(np.sum(token_schedule)))
    y = 1 / (x**power)
    y = (y - y.min()) / (y - y.min()).max()
    done = np.cumsum(token_schedule) / np.sum(token_schedule)
    unscaled = [(1 - d) * u for u, d in zip(y, done, strict=False)]  # one per step
    return np.array([min_t + (max_t - min_t) * u for u in unscaled]).clip(min=1e-9)


def check_registered(where: str, domain: str) -> None:
    """Raises ValueError (prefixed with `where`) unless domain is a registered modality."""
    if not modalities.is_registered(domain):
        raise ValueError(f"{where}: unknown modality; registered: {', '.join(modalities.names())}")


def check_target(where: str, target: str, scheme: str) -> None:
    """Raises ValueError (prefixed with `where`) unless target is a registered modality and scheme
    fits it: sequences are autoregressive, image tokens maskgit or roar."""
    check_registered(where, target)
    if scheme not in SCHEMES:
        raise ValueError(f"{where}: unknown scheme {scheme!r}; one of {SCHEMES}")
    kind = modalities.get(target).kind
    if (kind is modalities.Kind.SEQUENCE) != (scheme == "autoregressive"):
        raise ValueError(f"{where}: scheme {scheme!r} does not fit a {kind.value} modality (sequences are "
                         "autoregressive, image tokens maskgit or roar)")


def _per_target(name: str, value, count: int) -> list:
    """A per-target list; a single value (or a one-element list) is repeated for every target."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values *= count
    if len(values) != count:
        raise ValueError(f"{name}: got {len(values)} values for {count} target domains")
    return values


def _temperatures(name: str, temp: float, token_schedule: np.ndarray, where: str) -> np.ndarray:
    steps = len(token_schedule)
    if name == "linear":
        return linear_temp_schedule(temp, token_schedule)
    if name == "constant":
        return temp * np.ones(steps)
    if name.startswith("onex"):
        parts = name.split(":")
        try:
            min_t, power = (float(p) for p in parts[1:])
        except ValueError:
            raise ValueError(f"{where}: onex temperature schedule must be 'onex:<min_t>:<power>', "
                             f"got {name!r}") from None
        return onex_temp_schedule(max_t=temp, min_t=min_t, token_schedule=token_schedule, power=power)
    raise ValueError(f"{where}: unknown temperature schedule {name!r} "
                     "(linear, constant, onex:<min_t>:<power>)")


def _guidance(name: str, scale, steps: int, where: str) -> list:
    if name == "cosine":
        raise ValueError(f"{where}: the cosine guidance schedule is not implemented (nor in ml-4m)")
    if name != "constant":
        raise ValueError(f"{where}: unknown guidance schedule {name!r} (constant)")
    if isinstance(scale, (list, tuple)):
        return [[float(w) for w in scale] for _ in range(steps)]
    return [float(scale)] * steps


def build_chained_generation_schedules(
        cond_domains: Sequence[str],
        target_domains: Sequence[str],
        tokens_per_target: Sequence[int] | int,
        autoregression_schemes: Sequence[str] | str,
        decoding_steps: Sequence[int] | int,
        token_decoding_schedules: Sequence[str] | str,
        temps: Sequence[float] | float,
        temp_schedules: Sequence[str] | str,
        cfg_scales: Sequence[float | Sequence[float]] | float,
        cfg_schedules: Sequence[str] | str,
        cfg_grow_conditioning: bool = False,
        modality_info: Any = None,
) -> list[dict]:
    """The step list of a chained generation (ml-4m's function, same arguments and result).

    Targets are generated in order; each step dict holds the target, its scheme, the tokens to
    decode (None for autoregressive targets), temperature, guidance scale (a float, or a list of
    weights for multi-condition guidance) and the conditions guidance acts on. With
    cfg_grow_conditioning every finished maskgit/roar target joins the guided conditions of later
    targets (autoregressive ones never do, as in ml-4m). Every per-target argument may be given
    once for all targets (a multi-condition weight list for one target is [[w1, w2, ...]]).
    `modality_info` is accepted for ml-4m compatibility; the registry in
    fourm_jax.modalities is always consulted (a sequence target must be autoregressive, an image
    target maskgit or roar).
    """
    del modality_info
    count = len(target_domains)
    if not count:
        raise ValueError("target_domains is empty")
    args = dict(tokens_per_target=tokens_per_target, autoregression_schemes=autoregression_schemes,
                decoding_steps=decoding_steps, token_decoding_schedules=token_decoding_schedules,
                temps=temps, temp_schedules=temp_schedules, cfg_scales=cfg_scales,
                cfg_schedules=cfg_schedules)
    per = {name: _per_target(name, value, count) for name, value in args.items()}
    running = list(cond_domains)
    schedule = []
    for i, target in enumerate(target_domains):
        where = f"target_domains[{i}] ({target!r})"
        scheme = per["autoregression_schemes"][i]
        check_target(where, target, scheme)
        temp, cfg = float(per["temps"][i]), per["cfg_scales"][i]
        if scheme == "autoregressive":
            schedule.append(dict(target_domain=target, scheme=scheme, num_tokens=None, temperature=temp,
                                 cfg_scale=cfg if isinstance(cfg, (list, tuple)) else float(cfg),
                                 cfg_cond_domains=list(running)))
            continue
        steps, tokens = int(per["decoding_steps"][i]), int(per["tokens_per_target"][i])
        if tokens < 1 or steps < 1:
            raise ValueError(f"{where}: decoding_steps ({steps}) and tokens_per_target ({tokens}) "
                             "must be positive")
        if steps > tokens:
            raise ValueError(f"{where}: {steps} decoding steps for {tokens} tokens; "
                             "at most one step per token")
        token_name = per["token_decoding_schedules"][i]
        if scheme == "roar":  # ml-4m decodes ROAR with the linear schedule whatever the name
            token_schedule = linear_schedule(steps, tokens)
        elif token_name == "cosine":
            token_schedule = cosine_schedule(steps, tokens)
        elif token_name == "linear":
            token_schedule = linear_schedule(steps, tokens)
        else:
            raise ValueError(f"{where}: unknown token schedule {token_name!r}; one of {TOKEN_SCHEDULES}")
        if token_schedule.min() < 0:
            raise ValueError(f"{where}: the {token_name} schedule of {steps} steps over {tokens} tokens "
                             f"has a negative step ({token_schedule.tolist()}, ml-4m's rounding); use fewer "
                             "steps or the linear schedule")
        temperatures = _temperatures(per["temp_schedules"][i], temp, token_schedule, where)
        guidance = _guidance(per["cfg_schedules"][i], cfg, steps, where)
        for tok, t, g in zip(token_schedule, temperatures, guidance, strict=False):  # ml-4m's zip
            schedule.append(dict(target_domain=target, scheme=scheme, num_tokens=int(tok),
                                 temperature=float(t), cfg_scale=g, cfg_cond_domains=list(running)))
        if cfg_grow_conditioning:
            running.append(target)
    return schedule
