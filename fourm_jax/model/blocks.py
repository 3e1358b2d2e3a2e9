"""Encoder and decoder layers of 4M and the stack that runs them (scanned or not, rematerialised or not)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from fourm_jax.model.config import ModelConfig
from fourm_jax.model.layers import Attention, LayerNorm, Mlp
from fourm_jax.sharding import constrain

ACTIVATION_AXES = ("batch", "length", "embed")

REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _norm(config: ModelConfig, rngs: nnx.Rngs) -> LayerNorm:
    return LayerNorm(config.dim, use_bias=config.norm_bias, eps=config.norm_eps, rngs=rngs)


def _attention(config: ModelConfig, cross: bool, rngs: nnx.Rngs) -> Attention:
    return Attention(config.dim, config.num_heads, cross=cross, qkv_bias=config.qkv_bias,
                     proj_bias=config.proj_bias, qk_norm=config.qk_norm, norm_bias=config.norm_bias,
                     eps=config.norm_eps, dtype=config.dtype, rngs=rngs)


def _mlp(config: ModelConfig, rngs: nnx.Rngs) -> Mlp:
    return Mlp(config.dim, config.mlp_hidden_dim, gated=config.gated_mlp, act=config.act,
               use_bias=config.mlp_bias, dtype=config.dtype, rngs=rngs)


class DecoderCache(NamedTuple):
    """Keys and values of cached decoding for one layer, head-major: self_k, self_v (B, H, L, hd)
    for up to L decoded tokens; cross_k, cross_v (B, H, N, hd) of the context. A stack keeps one
    per layer (BlockStack.map_layers: a tuple, or stacked on a leading layers axis when scanned)."""

    self_k: jax.Array
    self_v: jax.Array
    cross_k: jax.Array
    cross_v: jax.Array


class EncoderBlock(nnx.Module):
    """Pre-norm layer: x + attn(norm1 x); x + mlp(norm2 x)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.norm1 = _norm(config, rngs)
        self.attn = _attention(config, cross=False, rngs=rngs)
        self.norm2 = _norm(config, rngs)
        self.mlp = _mlp(config, rngs)

    def __call__(self, x_BND: jax.Array, blocked_B11N: jax.Array) -> jax.Array:
        x_BND = x_BND + self.attn(self.norm1(x_BND), blocked_B11N)
        x_BND = x_BND + self.mlp(self.norm2(x_BND))
        return constrain(x_BND, ACTIVATION_AXES)


class DecoderBlock(nnx.Module):
    """Pre-norm layer: self-attention, cross-attention to the (re-normalised) context, MLP."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.norm1 = _norm(config, rngs)
        self.self_attn = _attention(config, cross=False, rngs=rngs)
        self.cross_attn = _attention(config, cross=True, rngs=rngs)
        self.query_norm = _norm(config, rngs)
        self.context_norm = _norm(config, rngs)
        self.norm2 = _norm(config, rngs)
        self.mlp = _mlp(config, rngs)

    def __call__(self, y_BMD: jax.Array, context_BND: jax.Array, self_blocked_B1MM: jax.Array | None,
                 cross_blocked_B11N: jax.Array, context_live_B: jax.Array | None = None) -> jax.Array:
        y_BMD = y_BMD + self.self_attn(self.norm1(y_BMD), self_blocked_B1MM)
        y_BMD = y_BMD + self.cross_attn(self.query_norm(y_BMD), cross_blocked_B11N,
                                        context=self.context_norm(context_BND), live_B=context_live_B)
        y_BMD = y_BMD + self.mlp(self.norm2(y_BMD))
        return constrain(y_BMD, ACTIVATION_AXES)

    def context_kv(self, context_BND: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cross-attention keys and values of the context, head-major (B, H, N, hd)."""
        k, v = self.cross_attn.project_kv(self.context_norm(context_BND))
        return jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)

    def step(self, y_BQD: jax.Array, cache: DecoderCache, index: jax.Array, cross_blocked_B11N: jax.Array,
             context_live_B: jax.Array | None):
        """This layer on Q new tokens at positions index.. of a causal sequence whose earlier keys
        and values are in this layer's cache; writes the new ones into it."""
        q, k, v = self.self_attn.project_qkv(self.norm1(y_BQD))
        at = (0, 0, index, 0)
        dtype = cache.self_k.dtype
        self_k = jax.lax.dynamic_update_slice(cache.self_k, jnp.swapaxes(k, 1, 2).astype(dtype), at)
        self_v = jax.lax.dynamic_update_slice(cache.self_v, jnp.swapaxes(v, 1, 2).astype(dtype), at)
        query_pos = index + jnp.arange(y_BQD.shape[1])
        causal = jnp.arange(self_k.shape[2])[None, :] > query_pos[:, None]  # (Q, L), True = blocked
        y_BQD = y_BQD + self.self_attn.output_cached(q, self_k, self_v, causal[None, None])
        q = self.cross_attn.project_q(self.query_norm(y_BQD))
        y_BQD = y_BQD + self.cross_attn.output_cached(q, cache.cross_k, cache.cross_v, cross_blocked_B11N,
                                                      context_live_B)
        y_BQD = y_BQD + self.mlp(self.norm2(y_BQD))
        return constrain(y_BQD, ACTIVATION_AXES), cache._replace(self_k=self_k, self_v=self_v)


class BlockStack(nnx.Module):
    """`depth` layers applied in order.

    scan=True stores one block whose parameters have a leading `layers` axis and runs it with
    jax.lax.scan (one compiled layer, fast compiles); scan=False keeps a list of blocks
    (`blocks/0`, `blocks/1`, ...). `remat_policy` rematerialises each layer in the backward pass.
    Both choices leave the numbers unchanged.
    """

    def __init__(self, make_block: Callable[[nnx.Rngs], nnx.Module], depth: int, *, scan: bool,
                 remat_policy: str, rngs: nnx.Rngs):
        if scan:
            @nnx.split_rngs(splits=depth)
            @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_stacked(rngs):
                return make_block(rngs)

            self.blocks = make_stacked(rngs)
        else:
            self.blocks = nnx.List([make_block(rngs) for _ in range(depth)])
        self.scan = scan
        self.remat_policy = remat_policy

    def _layer_fn(self, graphdef):
        def apply(state, x, *args):
            return nnx.merge(graphdef, state)(x, *args)

        if self.remat_policy == "none":
            return apply
        return jax.checkpoint(apply, policy=REMAT_POLICIES[self.remat_policy])

    def __call__(self, x: jax.Array, *args) -> jax.Array:
        if self.scan:
            graphdef, state = nnx.split(self.blocks)
            layer = self._layer_fn(graphdef)
            x, _ = jax.lax.scan(lambda carry, layer_state: (layer(layer_state, carry, *args), None),
                                x, state)
            return x
        for block in self.blocks:
            graphdef, state = nnx.split(block)
            x = self._layer_fn(graphdef)(state, x, *args)
        return x

    def map_layers(self, fn: Callable, x: jax.Array, per_layer=None):
        """Runs fn(block, x, value) -> (x, new value) through the layers in order, where per_layer
        holds one value per layer (e.g. a decoder cache): a tuple for a list of blocks, stacked on
        a leading axis for a scanned stack (None: no values). Returns (x, the new values, in the
        same layout). Per-layer arrays of an unscanned stack are never sliced or copied."""
        if self.scan:
            graphdef, state = nnx.split(self.blocks)

            def body(x, inputs):
                layer_state, value = inputs
                return fn(nnx.merge(graphdef, layer_state), x, value)

            return jax.lax.scan(body, x, (state, per_layer))
        values = (None,) * len(self.blocks) if per_layer is None else per_layer
        outputs = []
        for block, value in zip(self.blocks, values, strict=True):
            x, value = fn(block, x, value)
            outputs.append(value)
        return x, tuple(outputs)
