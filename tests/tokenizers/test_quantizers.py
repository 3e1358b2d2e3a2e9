"""Quantizers: lookup rules, EMA codebook update, dead-code restart, Memcodes."""

import jax
import jax.numpy as jnp
import numpy as np

from fourm_jax.tokenizers import quantizers


def test_cosine_lookup_returns_raw_codes():
    embed = jnp.array([[10.0, 0.0], [0.0, 0.5], [-3.0, -3.0]])
    z = jnp.array([[[0.1, 0.0], [0.0, 7.0]], [[-1.0, -0.9], [0.2, 0.1]]])
    quant, ids = quantizers.vq_lookup(embed, z, cosine=True)
    np.testing.assert_array_equal(ids, [[0, 1], [2, 0]])
    np.testing.assert_array_equal(quant, embed[np.array([[0, 1], [2, 0]])])  # not unit-norm rows


def test_euclidean_lookup():
    embed = jnp.array([[10.0, 0.0], [0.0, 0.5]])
    _, ids = quantizers.vq_lookup(embed, jnp.array([[1.0, 0.0], [9.0, 1.0]]), cosine=False)
    np.testing.assert_array_equal(ids, [1, 0])  # cosine would pick code 0 for the first


def test_ema_update_by_hand():
    decay = 0.9
    embed = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    cluster = jnp.array([1.0, 2.0, 3.0])
    z = jnp.array([[0.0, 3.0], [4.0, 3.0], [1.0, 0.0]])
    ids = jnp.array([0, 0, 2])
    new_embed, new_cluster = quantizers.ema_codebook_update(embed, cluster, z, ids, decay)
    np.testing.assert_allclose(new_cluster, [0.9 + 0.2, 1.8, 2.7 + 0.1], rtol=1e-6)
    mean0 = np.array([0.0, 1.0]) + np.array([0.8, 0.6])
    mean0 /= np.linalg.norm(mean0)
    expected = np.array([0.9 * np.array([1.0, 0.0]) + 0.1 * mean0,
                         0.9 * np.array([0.0, 2.0]) + 0.1 * np.array([0.0, 1.0]),  # unused: towards unit norm
                         0.9 * np.array([3.0, 4.0]) + 0.1 * np.array([1.0, 0.0])])
    np.testing.assert_allclose(new_embed, expected, rtol=1e-6)


def test_dead_codes_restart_from_distinct_batch_latents():
    embed = jnp.eye(4, 3)
    cluster = jnp.array([5.0, 0.0, 5.0, 0.01])
    z = jnp.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, -1.0, 0.0]])
    new = np.asarray(quantizers.restart_dead_codes(jax.random.key(0), embed, cluster, z, threshold=0.5))
    np.testing.assert_array_equal(new[[0, 2]], np.asarray(embed)[[0, 2]])
    normed = np.asarray(z) / np.linalg.norm(z, axis=1, keepdims=True)
    matches = [np.flatnonzero(np.all(np.isclose(normed, new[k]), axis=1)) for k in (1, 3)]
    assert [len(m) for m in matches] == [1, 1] and matches[0][0] != matches[1][0]
    unchanged = quantizers.restart_dead_codes(jax.random.key(0), embed, cluster, z, threshold=0.0)
    np.testing.assert_array_equal(unchanged, embed)


def test_linde_buzo_gray_copies_the_most_used_codes():
    embed = jnp.array([[3.0, 4.0], [1.0, 0.0], [0.0, 1.0]])
    cluster = jnp.array([10.0, 0.0, 4.0])
    new = quantizers.restart_dead_codes(jax.random.key(0), embed, cluster, embed, 1.0, "linde_buzo_gray")
    np.testing.assert_allclose(new[1], [0.6, 0.8], atol=1e-6)


def test_memcodes_lookup_and_straight_through():
    rng = np.random.default_rng(0)
    heads, codes, dim = 2, 5, 3
    params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in
              {"codes": (heads, codes, dim), "to_k": (heads, dim, dim), "to_v": (heads, dim, dim)}.items()}
    z = jnp.asarray(rng.standard_normal((4, heads * dim)), jnp.float32)
    quant, ids = quantizers.memcodes_quantize(params, z)
    keys = np.einsum("hkd,hdc->hkc", params["codes"], params["to_k"])
    values = np.einsum("hkd,hdc->hkc", params["codes"], params["to_v"])
    q = np.asarray(z).reshape(4, heads, dim) / np.sqrt(dim)
    expected_ids = np.einsum("bhd,hkd->bhk", q, keys).argmax(-1)
    np.testing.assert_array_equal(ids, expected_ids)
    expected = np.concatenate([values[h, expected_ids[:, h]] for h in range(heads)], 1)
    np.testing.assert_allclose(quant, expected, rtol=1e-5)
    np.testing.assert_allclose(quantizers.memcodes_lookup(params, ids), quant, rtol=1e-6)
    # Training: forward value is a code row, gradients reach the latents through the soft weights.
    train_quant, train_ids = quantizers.memcodes_quantize(params, z, jax.random.key(1))
    expected = quantizers.memcodes_lookup(params, train_ids)
    np.testing.assert_allclose(train_quant, expected, rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda zz: quantizers.memcodes_quantize(params, zz, jax.random.key(1))[0].sum())(z)
    assert np.abs(grad).sum() > 0
