"""Sampling tokens from logits, as ml-4m's GenerationSampler does.

- top-k / top-p filtering act on the (guided) logits before the temperature: top_k given as an int
  keeps k tokens, as a float a fraction of the vocabulary (int(top_k * V)); top_p keeps the
  smallest set whose probability exceeds top_p (the token crossing it included, the best always).
- temperature ~0 (|t| <= 1e-10) is argmax with confidence 1; otherwise one draw from
  softmax(filtered / t), confidence = the drawn token's probability. ml-4m's schedules clip
  temperatures at 1e-9, which is not ~0: such steps draw from an (almost) one-hot distribution.

The draw inverts the cumulative distribution with one uniform number per row (the same law as
torch.multinomial, with V times fewer random numbers than Gumbel-max), in two levels (blocks of
the vocabulary, then tokens within the chosen block) so no cumulative sum runs over all of V.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GREEDY_TEMPERATURE = 1e-10  # numpy.isclose(t, 0, atol=1e-10), ml-4m's test for argmax decoding


def top_k_count(top_k: int | float, vocab_size: int) -> int:
    """Tokens kept by top-k filtering (0 = no filtering): ints count tokens, floats a fraction of V."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or top_k < 0:
        raise ValueError("top_k must be a non-negative int (tokens) or float (vocabulary fraction), "
                         f"got {top_k!r}")
    if top_k == 0:
        return 0
    k = top_k if isinstance(top_k, int) else int(top_k * vocab_size)
    return min(k, vocab_size)


def filter_logits(logits: jax.Array, top_k: int | float = 0, top_p: float = 0.0) -> jax.Array:
    """logits (..., V) with the tokens that top-k / top-p remove set to -inf (static top_k, top_p)."""
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p!r}")
    k = top_k_count(top_k, logits.shape[-1])
    if k:
        kth = jax.lax.top_k(logits, k)[0][..., -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if top_p > 0.0:
        order = jnp.argsort(-logits, axis=-1, stable=True)
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
        # Remove tokens after the one that crosses top_p; the first token always stays.
        remove_sorted = jnp.concatenate([jnp.zeros_like(cumulative[..., :1], bool),
                                         cumulative[..., :-1] > top_p], axis=-1)
        remove = jnp.put_along_axis(jnp.zeros_like(remove_sorted), order, remove_sorted, axis=-1,
                                    inplace=False)
        logits = jnp.where(remove, -jnp.inf, logits)
    return logits


def sample_tokens(key: jax.Array, logits: jax.Array, temperature: jax.Array, top_k: int | float = 0,
                  top_p: float = 0.0, mode: str = "either") -> tuple[jax.Array, jax.Array]:
    """(samples (...), confidences (...)) from logits (..., V); temperature is a traced scalar.
    mode 'greedy' / 'draw' compiles one branch when the caller knows which the temperature picks;
    'either' decides at run time."""
    logits = logits.astype(jnp.float32)

    def greedy(_):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32), jnp.ones(logits.shape[:-1], jnp.float32)

    def draw(_):
        filtered = filter_logits(logits, top_k, top_p)
        # softmax(filtered / t), with the maximum subtracted before dividing: tiny temperatures
        # (schedules clip at 1e-9) would otherwise scale logits to ~1e9 and XLA:CPU's fused softmax
        # can turn the -inf of filtered tokens into NaN.
        filtered = filtered - jnp.max(filtered, axis=-1, keepdims=True)
        probs = jax.nn.softmax(filtered / temperature, axis=-1)
        samples = inverse_cdf(probs, jax.random.uniform(key, logits.shape[:-1]))
        return samples, jnp.take_along_axis(probs, samples[..., None], axis=-1)[..., 0]

    if mode == "greedy":
        return greedy(None)
    if mode == "draw":
        return draw(None)
    return jax.lax.cond(jnp.abs(temperature) <= GREEDY_TEMPERATURE, greedy, draw, None)


def inverse_cdf(probs: jax.Array, u: jax.Array, block: int = 128) -> jax.Array:
    """Index i with cdf[i-1] <= u * total < cdf[i] for probs (..., V) and uniforms u (...) in [0, 1):
    a draw from probs. Never returns a zero-probability index."""
    v = probs.shape[-1]
    groups = -(-v // block)
    padded = jnp.pad(probs, [(0, 0)] * (probs.ndim - 1) + [(0, groups * block - v)])
    blocks = padded.reshape(probs.shape[:-1] + (groups, block))
    mass = blocks.sum(-1)
    cumulative = jnp.cumsum(mass, axis=-1)
    r = u * cumulative[..., -1]
    g = _last_positive(mass, jnp.sum(cumulative <= r[..., None], axis=-1))
    within = jnp.take_along_axis(blocks, g[..., None, None], axis=-2)[..., 0, :]
    rest = r - (jnp.take_along_axis(cumulative, g[..., None], axis=-1)[..., 0]
                - jnp.take_along_axis(mass, g[..., None], axis=-1)[..., 0])
    c = _last_positive(within, jnp.sum(jnp.cumsum(within, axis=-1) <= rest[..., None], axis=-1))
    return (g * block + c).astype(jnp.int32)


def _last_positive(weights: jax.Array, index: jax.Array) -> jax.Array:
    """index, moved down to the last entry with positive weight at or before it (rounding can push
    an inverse-CDF index past the end of the mass)."""
    positions = jnp.arange(weights.shape[-1])
    at_or_before = positions <= jnp.minimum(index, weights.shape[-1] - 1)[..., None]
    candidates = jnp.where((weights > 0) & at_or_before, positions, -1)
    return jnp.maximum(candidates.max(-1), 0)
