import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fourm_jax.generate import sampling
from fourm_jax.generate.sampling import filter_logits, inverse_cdf, top_k_count

sample_tokens = jax.jit(sampling.sample_tokens, static_argnums=(3, 4, 5))


def _reference_filter(logits: np.ndarray, top_k, top_p: float) -> np.ndarray:
    """ml-4m's top_k_top_p_filtering, row by row in plain numpy."""
    out = logits.astype(np.float64).copy()
    for row in out:
        if top_k:
            k = top_k if isinstance(top_k, int) else int(top_k * row.size)
            row[row < np.sort(row)[::-1][min(k, row.size) - 1]] = -np.inf
        if top_p:
            order = np.argsort(-row, kind="stable")
            probs = np.exp(row[order] - row[order].max())
            cumulative = np.cumsum(probs / probs.sum())
            remove = np.concatenate([[False], cumulative[:-1] > top_p])
            row[order[remove]] = -np.inf
    return out


@pytest.mark.parametrize("top_k, top_p", [(5, 0.0), (0.1, 0.0), (0, 0.6), (7, 0.5), (1, 0.9)])
def test_filtering_matches_ml4m(top_k, top_p):
    logits = np.random.default_rng(0).standard_normal((6, 50)).astype(np.float32) * 3
    ours = np.asarray(filter_logits(jnp.asarray(logits), top_k, top_p))
    np.testing.assert_array_equal(np.isinf(ours), np.isinf(_reference_filter(logits, top_k, top_p)))
    kept = ~np.isinf(ours)
    np.testing.assert_array_equal(ours[kept], logits[kept])


def test_top_k_int_counts_tokens_float_is_a_vocabulary_fraction():
    assert top_k_count(10, 1000) == 10
    assert top_k_count(10.0, 1000) == 1000  # ml-4m: a float 10 keeps 10 x V tokens, i.e. all
    assert top_k_count(0.25, 1000) == 250
    assert top_k_count(0, 1000) == 0
    with pytest.raises(ValueError, match="top_k"):
        top_k_count(-1, 1000)


def test_greedy_temperatures_give_argmax_with_confidence_one():
    logits = jax.random.normal(jax.random.key(0), (4, 9, 100))
    best = np.argmax(logits, -1)
    for temperature, top_k, mode in ((0.0, 0, "either"), (1e-9, 1, "either"), (1.0, 1, "draw")):
        samples, confidence = sample_tokens(jax.random.key(1), logits, jnp.float32(temperature), top_k, 0.0,
                                            mode)
        np.testing.assert_array_equal(samples, best)
        np.testing.assert_array_equal(confidence, np.ones_like(confidence))


def test_draws_follow_the_distribution():
    probs = np.array([0.0, 0.1, 0.0, 0.25, 0.05, 0.0, 0.6] + [0.0] * 293, np.float32)  # V = 300: 3 blocks
    logits = jnp.log(jnp.asarray(np.broadcast_to(probs, (20000, probs.size))))
    samples, confidence = sample_tokens(jax.random.key(3), logits, jnp.float32(1.0), 0, 0.0, "either")
    counts = np.bincount(np.asarray(samples), minlength=probs.size) / samples.shape[0]
    assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(probs))
    np.testing.assert_allclose(counts, probs, atol=0.015)
    np.testing.assert_allclose(confidence, probs[np.asarray(samples)], rtol=1e-5)


def test_inverse_cdf_edges():
    probs = jnp.asarray([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.25, 0.0, 0.0, 0.75]])
    np.testing.assert_array_equal(inverse_cdf(probs, jnp.zeros(3), block=2), [0, 3, 0])
    # u just below 1 (and rounding past the total) never lands on a zero-probability token.
    np.testing.assert_array_equal(inverse_cdf(probs, jnp.full(3, 0.9999999), block=2), [1, 3, 3])
    np.testing.assert_array_equal(inverse_cdf(probs, jnp.full(3, 0.6), block=3), [1, 3, 3])
