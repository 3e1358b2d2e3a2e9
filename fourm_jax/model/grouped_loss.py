"""Cross-entropy through per-modality output heads, each head run only on its own tokens.

4M's decoder tokens belong to different modalities whose heads have different vocabularies
(4k-30k). Running every head on every token costs (number of heads)x the head FLOPs; ml-4m
avoids it with boolean indexing (dynamic shapes). Here, with static shapes:

1. the tokens are stably sorted by modality, so each modality's tokens are contiguous;
2. for each modality (a static Python loop), a `fori_loop` with a data-dependent trip count runs
   its head over chunks of `chunk` consecutive sorted tokens (the last chunk is masked), so the
   work is sum_m ceil(n_m / chunk) chunk matmuls instead of (number of heads) x all tokens;
3. a custom VJP computes the gradients in the same pass as the loss (softmax - one-hot is known
   there), because a while loop cannot be reverse-differentiated and recomputing the logits would
   cost a fourth head matmul. The output is one loss sum per modality, so the backward pass only
   scales the stored gradients by each modality's cotangent.

Under a mesh whose batch axes have more than one device, the sort stays local: the op runs per
batch shard in a shard_map and the per-modality sums are psum-ed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from fourm_jax import sharding


def _varying_like(x, reference):
    """x marked as varying over the same shard_map axes as `reference` (loop carries must match)."""
    axes = tuple(sorted(jax.typeof(reference).manual_axis_type.varying))
    return jax.lax.pcast(x, axes, to="varying") if axes else x


def _sorted_layout(group_T, targets_T, y_TD, num_groups: int, chunk: int):
    order = jnp.argsort(group_T, stable=True)
    counts = jnp.bincount(group_T, length=num_groups + 1)[:num_groups]
    starts = jnp.cumsum(counts) - counts
    pad = lambda a: jnp.concatenate([a[order], jnp.zeros((chunk,) + a.shape[1:], a.dtype)])
    return order, counts, starts, pad(y_TD), pad(targets_T)


def _run(y_TD, kernels, group_T, targets_T, chunk: int, with_grads: bool):
    """Per-group CE sums and, with_grads, the gradients of those sums (unscaled)."""
    num_groups = len(kernels)
    order, counts, starts, y_sorted, t_sorted = _sorted_layout(group_T, targets_T, y_TD, num_groups, chunk)
    zeros = lambda shape: _varying_like(jnp.zeros(shape, jnp.float32), y_sorted)
    dy_sorted = zeros(y_sorted.shape)
    sums, dkernels = [], []
    for g, kernel in enumerate(kernels):
        def body(k, carry, g=g, kernel=kernel):
            total, dy_sorted, dkernel = carry
            offset = starts[g] + k * chunk
            y_c = jax.lax.dynamic_slice_in_dim(y_sorted, offset, chunk)
            t_c = jax.lax.dynamic_slice_in_dim(t_sorted, offset, chunk)
            valid = k * chunk + jnp.arange(chunk) < counts[g]
            logits = jnp.dot(y_c, kernel, preferred_element_type=jnp.float32)
            lse = jax.nn.logsumexp(logits, axis=-1, keepdims=True)
            onehot = jax.nn.one_hot(t_c, kernel.shape[1], dtype=jnp.float32)
            loss = lse[:, 0] - jnp.sum(logits * onehot, axis=-1)
            total = total + jnp.sum(jnp.where(valid, loss, 0.0))
            if with_grads:
                dlogits = ((jnp.exp(logits - lse) - onehot) * valid[:, None]).astype(kernel.dtype)
                dkernel = dkernel + jnp.dot(y_c.T, dlogits, preferred_element_type=jnp.float32)
                dy_c = jnp.dot(dlogits, kernel.T, preferred_element_type=jnp.float32)
                old = jax.lax.dynamic_slice_in_dim(dy_sorted, offset, chunk)
                dy_sorted = jax.lax.dynamic_update_slice_in_dim(dy_sorted, old + dy_c, offset, 0)
            return total, dy_sorted, dkernel

        num_chunks = (counts[g] + chunk - 1) // chunk
        dkernel = zeros(kernel.shape if with_grads else ())
        total, dy_sorted, dkernel = jax.lax.fori_loop(0, num_chunks, body, (zeros(()), dy_sorted, dkernel))
        sums.append(total)
        dkernels.append(dkernel)
    group_sorted = jnp.concatenate([group_T[order], jnp.full((chunk,), num_groups, group_T.dtype)])
    return jnp.stack(sums), (order, group_sorted, dy_sorted[:-chunk], tuple(dkernels))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _grouped_ce(y_TD, kernels, group_T, targets_T, chunk):
    return _run(y_TD, kernels, group_T, targets_T, chunk, with_grads=False)[0]


def _grouped_ce_fwd(y_TD, kernels, group_T, targets_T, chunk):
    sums, (order, group_sorted, dy_sorted, dkernels) = _run(y_TD, kernels, group_T, targets_T, chunk,
                                                            with_grads=True)
    # Zero-size arrays remember the input dtypes for the cotangents.
    dtypes = (jnp.zeros((0,), y_TD.dtype), tuple(jnp.zeros((0,), k.dtype) for k in kernels))
    return sums, (order, group_sorted[:-chunk], dy_sorted, dkernels, dtypes)


def _grouped_ce_bwd(chunk, residuals, g_G):
    order, group_sorted, dy_sorted, dkernels, (y_dtype, kernel_dtypes) = residuals
    scale_T = jnp.concatenate([g_G, jnp.zeros((1,), g_G.dtype)])[group_sorted]
    dy_TD = jnp.zeros_like(dy_sorted).at[order].set(dy_sorted * scale_T[:, None]).astype(y_dtype.dtype)
    dkernels = tuple((dk * g).astype(dt.dtype)
                     for dk, g, dt in zip(dkernels, g_G, kernel_dtypes, strict=True))
    no_grad = jnp.zeros(order.shape, jax.dtypes.float0)
    return dy_TD, dkernels, no_grad, no_grad


_grouped_ce.defvjp(_grouped_ce_fwd, _grouped_ce_bwd)


def grouped_cross_entropy(y_BMD: jax.Array, kernels: tuple[jax.Array, ...], group_BM: jax.Array,
                          targets_BM: jax.Array, chunk: int) -> jax.Array:
    """Sum over tokens of group g of CE(y @ kernels[g], target), for every g: shape (G,) float32.

    group_BM holds each token's head index in [0, G), or G for tokens without a target.
    y and kernels should already be in the compute dtype; logits and CE are float32.
    Differentiable in y and kernels (reverse mode).
    """
    batch_axes = sharding.batch_mesh_axes()

    def local(y, kernels, group, targets):
        y_TD = y.reshape(-1, y.shape[-1])
        return _grouped_ce(y_TD, kernels, group.reshape(-1).astype(jnp.int32),
                           targets.reshape(-1).astype(jnp.int32), chunk)

    if not batch_axes:
        return local(y_BMD, kernels, group_BM, targets_BM)

    mesh_shape = dict(jax.sharding.get_abstract_mesh().shape)
    gather_axes = [_embed_batch_axes(k, batch_axes, mesh_shape) for k in kernels]

    def per_shard(y, kernels, group, targets):
        kernels = tuple(_whole_kernel(k, axes, batch_axes)
                        for k, axes in zip(kernels, gather_axes, strict=True))
        return jax.lax.psum(local(y, kernels, group, targets), batch_axes)

    spec = PartitionSpec(batch_axes)
    kernel_specs = tuple(PartitionSpec(axes or None, None) for axes in gather_axes)
    return jax.shard_map(per_shard, in_specs=(spec, kernel_specs, spec, spec),
                         out_specs=PartitionSpec(), axis_names=set(batch_axes))(
        y_BMD, tuple(kernels), group_BM, targets_BM)


def _embed_batch_axes(kernel_DV: jax.Array, batch_axes: tuple[str, ...], mesh_shape) -> tuple[str, ...]:
    """The batch mesh axes that split a (D, V) head kernel's D, as the rules place it ('embed': FSDP)."""
    spec = sharding.logical_to_spec(("embed", "vocab"), sharding.current_rules(), kernel_DV.shape, mesh_shape)
    return tuple(a for a in sharding.dim_axes(spec, 0) if a in batch_axes)


def _whole_kernel(kernel_DV: jax.Array, gather_axes: tuple[str, ...],
                  batch_axes: tuple[str, ...]) -> jax.Array:
    """The whole kernel in one batch shard, from its FSDP shard (D split over gather_axes): gathered
    in float32, so that its gradient, which every batch shard holds in part, is summed in float32
    (as ml-4m all-reduces gradients; XLA:CPU also fails to compile that sum in bf16) and comes back
    reduce-scattered over gather_axes, where marking a replicated kernel varying would all-reduce it
    whole."""
    kernel = kernel_DV.astype(jnp.float32)
    others = tuple(a for a in batch_axes if a not in gather_axes)
    if others:
        kernel = jax.lax.pcast(kernel, others, to="varying")
    if gather_axes:
        kernel = jax.lax.all_gather(kernel, gather_axes, axis=0, tiled=True)
    return kernel.astype(kernel_DV.dtype)
