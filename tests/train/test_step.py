import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fourm_jax import sharding
from fourm_jax.data import pipeline
from fourm_jax.train import checkpoint, optimizer
from fourm_jax.train import step as step_lib
from fourm_jax.train.config import RunConfig
from tests.train.conftest import random_model, tiny_config

MESH = ("mesh.data=4", "mesh.fsdp=2")  # parameters sharded over fsdp, the batch over all 8


def build(repo_dir, tiny_data, *overrides):
    run = RunConfig.from_config(tiny_config(repo_dir, tiny_data, "data.global_batch_size=32", *MESH,
                                            *overrides))
    return step_lib.build_program(run, sharding.make_mesh(run.mesh))


@pytest.fixture(scope="module")
def programs(repo_dir, tiny_data):
    return {accum: build(repo_dir, tiny_data, f"train.accum_steps={accum}") for accum in (1, 4)}


@pytest.fixture(scope="module")
def batch(programs):
    program = programs[1]
    iterator = iter(pipeline.build_dataset(program.run.data, program.batch_sharding))
    try:
        return next(iterator)
    finally:
        iterator.close()


@pytest.fixture(scope="module")
def params_and_buffers(programs):
    """Parameters (numpy draws, no init to compile) and buffers, placed with the program's shardings."""
    program = programs[1]
    model = random_model(program.run.model)
    _, params, buffers = nnx.split(model, nnx.Param, ...)
    params = jax.tree.map(lambda x: 0.02 * x, checkpoint.params_tree(params))
    return (jax.device_put(params, program.state_sharding.params),
            jax.device_put(checkpoint.params_tree(buffers), program.buffers_sharding))


@pytest.mark.slow  # ~20 s: compiles the sharded init
def test_parameters_and_optimizer_state_are_created_sharded(programs):
    program = programs[1]
    state = program.init(jax.random.key(0))
    kernel = state.params["decoder_embeddings"]["tok_depth@224"]["to_logits"]["kernel"]  # (embed, vocab)
    assert kernel.sharding.spec[0] == "fsdp"
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0] // 2, kernel.shape[1])
    for moment in ("mu", "nu"):
        tree = optax.tree_utils.tree_get(state.opt_state, moment)
        assert tree["decoder_embeddings"]["tok_depth@224"]["to_logits"]["kernel"].sharding == kernel.sharding
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    jax.tree.map(assert_same_sharding, state, program.abstract_state)


def assert_same_sharding(leaf, abstract):
    assert leaf.shape == abstract.shape and leaf.dtype == abstract.dtype
    assert leaf.sharding.is_equivalent_to(abstract.sharding, leaf.ndim)


def test_the_abstract_batch_describes_the_pipeline_batches(programs, batch):
    jax.tree.map(assert_same_sharding, batch, programs[1].abstract_batch)
    assert jax.tree.structure(batch) == jax.tree.structure(programs[1].abstract_batch)


@pytest.mark.slow  # ~30 s: compiles two gradient programs
def test_gradient_accumulation_equals_one_big_batch(programs, batch, params_and_buffers):
    """4 micro-batches of 8 give the loss, per-modality losses and gradients of one batch of 32."""
    params, buffers = params_and_buffers
    loss, mod_losses, grads = programs[1].gradients(params, buffers, batch)
    loss_4, mod_losses_4, grads_4 = programs[4].gradients(params, buffers, batch)
    np.testing.assert_allclose(loss_4, loss, rtol=1e-5)
    assert sorted(mod_losses_4) == sorted(mod_losses)
    for name in mod_losses:
        np.testing.assert_allclose(mod_losses_4[name], mod_losses[name], rtol=1e-5, err_msg=name)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale), grads_4, grads)


def test_bfloat16_compute_keeps_float32_master_weights(repo_dir, tiny_data):
    program = build(repo_dir, tiny_data, "model.dtype=bfloat16")
    abstract = program.abstract_state
    leaves = jax.tree.leaves(abstract.params) + jax.tree.leaves(abstract.opt_state)
    assert {leaf.dtype for leaf in leaves if leaf.ndim} == {jnp.dtype(jnp.float32)}
    hlo = program.train_step.lower(program.abstract_state, program.abstract_buffers,
                                   program.abstract_batch).as_text()
    assert "bf16" in hlo and "dot_general" in hlo


@pytest.mark.parametrize("loss_type", ["mod", "token"])
def test_micro_batch_weights_sum_to_the_global_batch_loss(loss_type):
    """sum_k sum_m w_mk * mean_mk == the loss of the whole batch, from per-micro-batch means."""
    rng = np.random.default_rng(0)
    sums = rng.random((4, 3)) * 10  # [micro-batch, modality] summed cross-entropies
    counts = rng.integers(0, 5, (4, 3)).astype(np.float32)
    counts[:, 2] = 0  # a modality without targets anywhere
    counts[1, 0] = 0  # ... and one without targets in one micro-batch
    sums[counts == 0] = 0
    means = np.where(counts > 0, sums / np.maximum(counts, 1), 0)
    totals, vocab = counts.sum(0), np.array([4096.0, 30000.0, 512.0])
    global_means = np.where(totals > 0, sums.sum(0) / np.maximum(totals, 1), 0)
    if loss_type == "mod":
        expected = global_means.mean()
    else:
        expected = (global_means * totals * vocab).sum() / (totals * vocab).sum()
    weights = np.stack([step_lib.loss_weights(jnp.asarray(c), jnp.asarray(totals), jnp.asarray(vocab),
                                              loss_type) for c in counts])
    assert float((weights * means).sum()) == pytest.approx(expected, rel=1e-6)


def test_micro_batches_do_not_split_over_the_mesh(repo_dir, tiny_data):
    with pytest.raises(ValueError, match="does not split over the 8 batch shards"):
        build(repo_dir, tiny_data, "train.accum_steps=16")


def test_learning_rate_is_the_schedule_at_the_global_step(programs):
    schedule = programs[1].schedule
    assert float(schedule(0)) == pytest.approx(optimizer.scaled_lr(0.05, 32))
