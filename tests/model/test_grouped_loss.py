import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fourm_jax.model.grouped_loss import grouped_cross_entropy

VOCABS = (37, 11, 64)


def _dense_reference(y, kernels, group, targets):
    """Every head on every token, masked: the simple (and expensive) way."""
    sums = []
    for g, kernel in enumerate(kernels):
        logits = jnp.einsum("bmd,dv->bmv", y, kernel)
        safe_targets = jnp.clip(targets, 0, kernel.shape[1] - 1)[..., None]
        ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, safe_targets, -1)[..., 0]
        sums.append(jnp.sum(jnp.where(group == g, ce, 0.0)))
    return jnp.stack(sums)


def _inputs(seed, empty_group=False):
    rng = np.random.default_rng(seed)
    b, m, d = 3, 10, 8
    group = rng.integers(0, len(VOCABS) + 1, (b, m))  # len(VOCABS) = no target
    if empty_group:
        group[group == 1] = len(VOCABS)
    targets = np.where(group < len(VOCABS), rng.integers(0, 1000, (b, m)) % np.array(VOCABS + (1,))[group], 0)
    y = jnp.asarray(rng.standard_normal((b, m, d)), jnp.float32)
    kernels = tuple(jnp.asarray(rng.standard_normal((d, v)) * 0.3, jnp.float32) for v in VOCABS)
    return y, kernels, jnp.asarray(group), jnp.asarray(targets)


@pytest.mark.parametrize("chunk, empty_group", [(1, False), (4, True), (64, False)])
def test_matches_dense_heads_values_and_gradients(chunk, empty_group):
    y, kernels, group, targets = _inputs(0, empty_group)
    weights = jnp.asarray([0.5, -2.0, 1.5])  # any linear use of the per-group sums

    def grouped(y, kernels):
        sums = grouped_cross_entropy(y, kernels, group, targets, chunk)
        return jnp.sum(weights * sums), sums

    def dense(y, kernels):
        return jnp.sum(weights * _dense_reference(y, kernels, group, targets))

    (value, sums), grads = jax.jit(jax.value_and_grad(grouped, argnums=(0, 1), has_aux=True))(y, kernels)
    ref_value, ref_grads = jax.jit(jax.value_and_grad(dense, argnums=(0, 1)))(y, kernels)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)
    if empty_group:
        assert sums[1] == 0.0


def test_bfloat16_inputs_give_float32_sums_close_to_float32():
    y, kernels, group, targets = _inputs(1)
    run = jax.jit(lambda y, kernels: grouped_cross_entropy(y, kernels, group, targets, 4))
    f32 = run(y, kernels)
    bf16 = run(y.astype(jnp.bfloat16), tuple(k.astype(jnp.bfloat16) for k in kernels))
    assert bf16.dtype == jnp.float32
    np.testing.assert_allclose(bf16, f32, rtol=2e-2)
    grad = jax.jit(jax.grad(lambda y: jnp.sum(run(y, kernels))))(y.astype(jnp.bfloat16))
    assert grad.dtype == jnp.bfloat16


def test_bfloat16_kernel_gradients_on_a_batch_sharded_mesh():
    """Replicated bf16 heads, batch split over 8 devices: the kernels' gradient is summed over the
    shards in float32 (XLA:CPU used to abort compiling it in bf16) and matches one device."""
    from fourm_jax import sharding

    rng = np.random.default_rng(2)
    b, m, d = 8, 6, 8
    group = jnp.asarray(rng.integers(0, len(VOCABS) + 1, (b, m)))
    targets = jnp.asarray(np.where(np.asarray(group) < len(VOCABS),
                                   rng.integers(0, 11, (b, m)), 0))
    y = jnp.asarray(rng.standard_normal((b, m, d)), jnp.bfloat16)
    kernels = tuple(jnp.asarray(rng.standard_normal((d, v)) * 0.3, jnp.bfloat16) for v in VOCABS)

    def loss(kernels):
        return jnp.sum(grouped_cross_entropy(y, kernels, group, targets, 4))

    single = jax.jit(jax.grad(loss))(kernels)
    mesh = sharding.make_mesh(dict(data=8))
    with jax.set_mesh(mesh), sharding.axis_rules(sharding.DEFAULT_RULES):
        sharded = jax.jit(jax.grad(loss))(kernels)
    for got, want in zip(sharded, single, strict=True):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                                   rtol=2e-2, atol=2e-2)


def test_fsdp_kernel_gradients_are_reduce_scattered_not_all_reduced():
    """Heads split over fsdp along D (as the rules store them), batch over data x fsdp: the kernels'
    gradients match one device, and each is reduce-scattered over fsdp and then summed over data
    as a shard; none is all-reduced whole (twice the traffic, and the whole gradient on every chip)."""
    from fourm_jax import sharding

    rng = np.random.default_rng(3)
    b, m, d = 8, 6, 8
    group = jnp.asarray(rng.integers(0, len(VOCABS) + 1, (b, m)))
    targets = jnp.asarray(np.where(np.asarray(group) < len(VOCABS), rng.integers(0, 11, (b, m)), 0))
    y = jnp.asarray(rng.standard_normal((b, m, d)), jnp.float32)
    kernels = tuple(jnp.asarray(rng.standard_normal((d, v)) * 0.3, jnp.float32) for v in VOCABS)

    def loss(kernels):
        return jnp.sum(grouped_cross_entropy(y, kernels, group, targets, 4))

    single = jax.jit(jax.grad(loss))(kernels)
    with jax.set_mesh(sharding.make_mesh(dict(data=2, fsdp=4))), sharding.axis_rules(sharding.DEFAULT_RULES):
        grad = jax.jit(jax.grad(loss))
        sharded = grad(kernels)
        text = grad.lower(kernels).as_text()
    for got, want in zip(sharded, single, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    all_reduced = re.findall(r'"stablehlo\.all_reduce".*?\}\) : \(([^)]*)\)', text, re.S)
    assert all_reduced and not {f"tensor<{d}x{v}xf32>" for v in VOCABS} & set(all_reduced)
    assert {f"tensor<{d // 4}x{v}xf32>" for v in VOCABS} <= set(all_reduced)
    assert text.count('"stablehlo.reduce_scatter"') == len(VOCABS)
