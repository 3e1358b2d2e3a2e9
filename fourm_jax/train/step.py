"""The train and eval steps: pure functions over (state, batch), jitted with explicit shardings.

`build_program(run, mesh)` makes everything a training loop or an ahead-of-time compiler needs,
without touching data or devices' memory: the model's graphdef (split once), the optimizer, the
shardings of the state and the batch, the abstract state and batch (ShapeDtypeStructs carrying
their shardings), and the jitted functions

    init(key) -> TrainState                           parameters + optimizer state, created sharded
    init_buffers() -> buffers                         the sin-cos tables (constants of the config)
    train_step(state, buffers, batch) -> (state, metrics)     state donated
    eval_step(params, buffers, batch) -> metrics

AOT: `program.train_step.lower(program.abstract_state, program.abstract_buffers,
program.abstract_batch).compile()` (works for a mesh of abstract/topology devices too).

Loss. Per modality, the mean cross-entropy over its target tokens of the whole global batch; then
ml-4m's `mod` mean over the decoder modalities (or `token` weighting). ml-4m computes this per
GPU and averages the gradients over GPUs; a global-batch mean does not depend on the device count
or mesh (README, "Training"). Gradient accumulation splits the batch into micro-batches
(strided, so each stays spread over all devices) and weights each micro-batch's per-modality
means by its share of the global per-modality token counts, so the accumulated gradient is the
gradient of the same global-batch loss.

Precision: parameters and optimizer state in param_dtype (float32), compute in model.dtype
(bfloat16 on accelerators); LayerNorm, softmax and the loss run in float32 (the model does that).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fourm_jax import masking, modalities, sharding
from fourm_jax.data import pipeline
from fourm_jax.model.fourm import FourM, abstract_fourm
from fourm_jax.train import optimizer as optimizer_lib
from fourm_jax.train.checkpoint import params_tree, state_from_tree
from fourm_jax.train.config import RunConfig

Batch = Mapping[str, Mapping[str, jax.Array]]


@flax.struct.dataclass
class TrainState:
    """step: int32 scalar (updates applied so far); params: the model's nnx.Param values as a nested
    dict (checkpoint.params_tree layout); opt_state: the optax state over params."""

    step: jax.Array
    params: dict
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """The compiled-to-be pieces of a run on one mesh (see the module docstring)."""

    run: RunConfig
    mesh: Mesh
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_sharding: TrainState
    buffers_sharding: dict
    batch_sharding: NamedSharding
    abstract_state: TrainState
    abstract_buffers: dict
    abstract_batch: dict
    init: Callable
    init_buffers: Callable
    train_step: Callable
    eval_step: Callable
    gradients: Callable


def merge_model(graphdef: nnx.GraphDef, abstract_params: nnx.State, abstract_buffers: nnx.State,
                params: dict, buffers: dict) -> FourM:
    """The FourM of nested-dict params and buffers (inside a traced function)."""
    return nnx.merge(graphdef, state_from_tree(params, abstract_params),
                     state_from_tree(buffers, abstract_buffers))


def decoder_token_counts(model: FourM, batch: Batch, num_decoder_tokens: int) -> jax.Array:
    """(B, M) int32: decoder tokens each example gives each decoder modality (sorted names)."""
    mod_mask = model.select_decoder_tokens(batch, num_decoder_tokens).mod_mask
    ids = jnp.asarray([modalities.get(m).id for m in model.decoder_modalities(batch)], jnp.int32)
    return jnp.sum(mod_mask[:, :, None] == ids[None, None, :], axis=1).astype(jnp.int32)


def loss_weights(counts_M: jax.Array, totals_M: jax.Array, vocab_M: jax.Array,
                 loss_type: str) -> jax.Array:
    """Weights of a micro-batch's per-modality mean losses such that, summed over micro-batches,
    they give the global-batch loss (mod: mean over modalities of global per-modality means;
    token: weighted by tokens x vocabulary)."""
    counts, totals = counts_M.astype(jnp.float32), totals_M.astype(jnp.float32)
    if loss_type == "mod":
        return counts / (jnp.maximum(totals, 1.0) * counts.shape[0])
    weights = totals * vocab_M
    return counts * vocab_M / jnp.maximum(jnp.sum(weights), 1.0)


def _micro_batches(tree, accum_steps: int):
    """[B, ...] -> [A, B/A, ...], micro-batch k = rows k, k + A, ... (each spread over all devices)."""
    def split(x):
        micro = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
        return sharding.constrain(micro, (None, "batch") + (None,) * (x.ndim - 1))
    return jax.tree.map(split, tree)


def make_gradients(run: RunConfig, graphdef, abstract_params, abstract_buffers) -> Callable:
    """(params, buffers, batch) -> (loss, {modality: loss}, gradients) of the global-batch loss,
    over train.accum_steps micro-batches."""
    num_enc, num_dec = run.train.num_input_tokens, run.train.num_target_tokens
    accum, loss_type = run.train.accum_steps, run.model.loss_type

    def model_of(params, buffers):
        return merge_model(graphdef, abstract_params, abstract_buffers, params, buffers)

    def loss_fn(params, buffers, batch):
        loss, mod_losses = model_of(params, buffers)(batch, num_enc, num_dec)
        return loss, mod_losses

    def gradients(params, buffers, batch):
        if accum == 1:
            (loss, mod_losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, buffers, batch)
            return loss, mod_losses, grads
        model = model_of(params, buffers)
        names = model.decoder_modalities(batch)
        counts_BM = decoder_token_counts(model, batch, num_dec)
        totals_M = jnp.sum(counts_BM, axis=0)
        vocab_M = jnp.asarray([modalities.get(m).vocab_size for m in names], jnp.float32)

        def micro_step(carry, xs):
            grad_sum, loss_sum, weighted_sum = carry
            micro_batch, counts = xs
            counts_M = jnp.sum(counts, axis=0)
            weights_M = loss_weights(counts_M, totals_M, vocab_M, loss_type)

            def weighted_loss(p):
                _, mod_losses = loss_fn(p, buffers, micro_batch)
                means_M = jnp.stack([mod_losses[m] for m in names])
                return jnp.sum(weights_M * means_M), means_M

            (loss, means_M), grads = jax.value_and_grad(weighted_loss, has_aux=True)(params)
            grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
            return (grad_sum, loss_sum + loss, weighted_sum + counts_M * means_M), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((len(names),), jnp.float32))
        xs = (_micro_batches(batch, accum), _micro_batches(counts_BM, accum))
        (grads, loss, weighted_M), _ = jax.lax.scan(micro_step, init, xs)
        means_M = weighted_M / jnp.maximum(totals_M.astype(jnp.float32), 1.0)
        return loss, dict(zip(names, means_M, strict=True)), grads

    def with_rules(params, buffers, batch):
        with sharding.axis_rules(run.sharding_rules):
            return gradients(params, buffers, batch)

    return with_rules


def make_train_step(run: RunConfig, graphdef, abstract_params, abstract_buffers, tx,
                    schedule) -> Callable:
    """The pure train step (state, buffers, batch) -> (state, metrics)."""
    gradients = make_gradients(run, graphdef, abstract_params, abstract_buffers)

    def train_step(state: TrainState, buffers: dict, batch: Batch):
        loss, mod_losses, grads = gradients(state.params, buffers, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
                   "skipped_steps": optimizer_lib.skipped_steps(opt_state)}
        metrics.update({f"loss/{name}": value for name, value in mod_losses.items()})
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(run: RunConfig, graphdef, abstract_params, abstract_buffers) -> Callable:
    """The pure eval step (params, buffers, batch) -> metrics, at the eval token budgets."""
    num_enc, num_dec = run.eval.num_input_tokens, run.eval.num_target_tokens

    def eval_step(params: dict, buffers: dict, batch: Batch):
        with sharding.axis_rules(run.sharding_rules):
            model = merge_model(graphdef, abstract_params, abstract_buffers, params, buffers)
            loss, mod_losses = model(batch, num_enc, num_dec)
        return {"loss": loss, **{f"loss/{name}": value for name, value in mod_losses.items()}}

    return eval_step


def batch_spec(data: pipeline.PipelineConfig) -> dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]:
    """(shape, dtype) of every array of one example of the pipeline's batches."""
    outputs = pipeline.output_modalities(data)
    spec = {}
    for dataset in data.datasets:
        masker = dataset.masking if hasattr(dataset.masking, "output_spec") else masking.Masker.from_config(
            dataset.masking, output_modalities=outputs, check_ids=False)
        spec.update(masker.output_spec())
    return {name: spec[name] for name in outputs}


def abstract_batch(data: pipeline.PipelineConfig, batch_sharding: NamedSharding) -> dict:
    """ShapeDtypeStructs (with the batch sharding) of one global batch of `data`."""
    return {name: {key: jax.ShapeDtypeStruct((data.global_batch_size, *shape), dtype,
                                             sharding=batch_sharding)
                   for key, (shape, dtype) in arrays.items()}
            for name, arrays in batch_spec(data).items()}


def _with_abstract_mesh(fn, mesh: Mesh):
    """fn traced with the mesh visible to sharding.constrain (jit does not set it by itself)."""
    def wrapped(*args):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return fn(*args)
    return wrapped


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def check_batch_splits(global_batch: int, accum_steps: int, mesh: Mesh, rules, name: str) -> None:
    """Each (micro-)batch must split evenly over the mesh axes the batch is sharded on."""
    shards = int(np.prod([mesh.shape[a] for a in dict(sharding.validate_rules(rules)).get("batch", ())]))
    if (global_batch // accum_steps) % shards:
        raise ValueError(f"{name}: a batch of {global_batch} examples in {accum_steps} micro-batch(es) "
                         f"does not split over the {shards} batch shards of mesh {dict(mesh.shape)}")


def build_program(run: RunConfig, mesh: Mesh) -> TrainProgram:
    """The run's step functions, shardings and abstract values on `mesh` (nothing is allocated)."""
    check_batch_splits(run.global_batch, run.train.accum_steps, mesh, run.sharding_rules, "data")
    graphdef, abstract_params, abstract_buffers = nnx.split(abstract_fourm(run.model), nnx.Param, ...)
    tx, schedule = optimizer_lib.make_optimizer(run.optimizer, global_batch=run.global_batch,
                                                total_steps=run.total_steps,
                                                warmup_steps=run.warmup_steps)
    replicated = NamedSharding(mesh, PartitionSpec())
    params_sharding = params_tree(sharding.state_shardings(abstract_params, mesh, run.sharding_rules))
    buffers_sharding = params_tree(sharding.state_shardings(abstract_buffers, mesh, run.sharding_rules))
    opt_shapes = jax.eval_shape(tx.init, params_tree(abstract_params))
    opt_sharding = optax.tree_map_params(tx, lambda _, s: s, opt_shapes, params_sharding,
                                         transform_non_params=lambda _: replicated)
    state_sharding = TrainState(step=replicated, params=params_sharding, opt_state=opt_sharding)
    batch_sharding = sharding.batch_sharding(mesh, run.sharding_rules)

    def init(key):
        model = FourM(run.model, rngs=nnx.Rngs(key))
        params = params_tree(nnx.state(model, nnx.Param))
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    def init_buffers():
        # Only the buffers are returned: XLA drops the random parameter init as dead code.
        model = FourM(run.model, rngs=nnx.Rngs(0))
        return params_tree(nnx.split(model, nnx.Param, ...)[2])

    abstract_state = _abstract(jax.eval_shape(init, jax.random.key(0)), state_sharding)
    gradients = make_gradients(run, graphdef, abstract_params, abstract_buffers)
    train_step = make_train_step(run, graphdef, abstract_params, abstract_buffers, tx, schedule)
    eval_step = make_eval_step(run, graphdef, abstract_params, abstract_buffers)
    return TrainProgram(
        run=run, mesh=mesh, graphdef=graphdef, tx=tx, schedule=schedule,
        state_sharding=state_sharding, buffers_sharding=buffers_sharding,
        batch_sharding=batch_sharding, abstract_state=abstract_state,
        abstract_buffers=_abstract(params_tree(abstract_buffers), buffers_sharding),
        abstract_batch=abstract_batch(run.data, batch_sharding),
        init=jax.jit(_with_abstract_mesh(init, mesh), out_shardings=state_sharding),
        init_buffers=jax.jit(_with_abstract_mesh(init_buffers, mesh), out_shardings=buffers_sharding),
        train_step=jax.jit(_with_abstract_mesh(train_step, mesh),
                           in_shardings=(state_sharding, buffers_sharding, batch_sharding),
                           out_shardings=(state_sharding, replicated), donate_argnums=(0,)),
        eval_step=jax.jit(_with_abstract_mesh(eval_step, mesh),
                          in_shardings=(params_sharding, buffers_sharding, batch_sharding),
                          out_shardings=replicated),
        gradients=jax.jit(_with_abstract_mesh(gradients, mesh),
                          in_shardings=(params_sharding, buffers_sharding, batch_sharding),
                          out_shardings=(replicated, replicated, params_sharding)))
