"""Transformer building blocks of 4M: dense layers, LayerNorm, attention, MLPs.

Parameters are float32 and carry logical axis names (`out_sharding` metadata) that
fourm_jax/sharding.py maps to mesh axes. Matmuls run in the compute dtype; LayerNorm and
softmax run in float32 and the residual stream stays float32, as ml-4m under bf16 autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Axes = tuple[str | None, ...]
Initializer = Callable[[jax.Array, tuple[int, ...], jnp.dtype], jax.Array]


class Buffer(nnx.Variable):
    """A non-trainable tensor that checkpoints carry (ml-4m's registered buffers, e.g. sin-cos tables)."""


def param(rngs: nnx.Rngs, init: Initializer, shape: Sequence[int], axes: Axes,
          dtype=jnp.float32) -> nnx.Param:
    """An nnx.Param with logical axis names; sharding is applied by the caller's jit, not eagerly."""
    shape = tuple(shape)
    if len(axes) != len(shape):
        raise ValueError(f"parameter of shape {shape} needs {len(shape)} axis names, got {axes}")
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=tuple(axes), eager_sharding=False)


def xavier_uniform(fan_in: int, fan_out: int) -> Initializer:
    """U(-a, a) with a = sqrt(6 / (fan_in + fan_out)); fans given explicitly, as ml-4m computes them
    per Q/K/V sub-matrix for fused projections."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -limit, limit)


def normal(std: float) -> Initializer:
    return lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype)


def constant(value: float) -> Initializer:
    return lambda key, shape, dtype: jnp.full(shape, value, dtype)


class Dense(nnx.Module):
    """y = x · W (+ b), contracting the trailing `in_shape` axes of x with the leading axes of W.

    The kernel has shape in_shape + out_shape, so fused or per-head projections keep their
    structure (qkv: (D, 3, H, hd)) and can be sharded by head.
    """

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], *, axes: Axes,
                 use_bias: bool, dtype, rngs: nnx.Rngs, init: Initializer | None = None):
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        fan_in, fan_out = math.prod(self.in_shape), math.prod(self.out_shape)
        init = init or xavier_uniform(fan_in, fan_out)
        self.kernel = param(rngs, init, self.in_shape + self.out_shape, axes)
        self.bias = (param(rngs, constant(0.0), self.out_shape, axes[len(self.in_shape):])
                     if use_bias else None)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # One 2-D matmul: XLA:CPU runs (tokens, fan_in) x (fan_in, fan_out) at full speed, and
        # several times slower when the contraction spans multiple or non-minor axes.
        lead = x.shape[:x.ndim - len(self.in_shape)]
        fan_in, fan_out = math.prod(self.in_shape), math.prod(self.out_shape)
        y = jnp.dot(x.reshape(-1, fan_in).astype(self.dtype),
                    self.kernel[...].reshape(fan_in, fan_out).astype(self.dtype))
        y = y.reshape(lead + self.out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis in float32 with torch's two-pass (biased) variance."""

    def __init__(self, dim: int, *, use_bias: bool, eps: float, rngs: nnx.Rngs, axis_name: str = "norm"):
        self.scale = param(rngs, constant(1.0), (dim,), (axis_name,))
        self.bias = param(rngs, constant(0.0), (dim,), (axis_name,)) if use_bias else None
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        centered = x - mean
        var = jnp.mean(jnp.square(centered), axis=-1, keepdims=True)
        y = centered * jax.lax.rsqrt(var + self.eps) * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def attend(q_BQHK: jax.Array, k_BKHK: jax.Array, v_BKHK: jax.Array, blocked: jax.Array | None) -> jax.Array:
    """Softmax attention; `blocked` (broadcastable to (B, H, Q, K), True = not allowed).

    Blocked logits are replaced by the most negative finite float32 (ml-4m's masked_fill), so a
    query with every key blocked attends uniformly instead of producing NaN. The matmuls run
    head-major ((B, H, tokens, head_dim)), which XLA:CPU executes faster than token-major.
    """
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (q_BQHK, k_BKHK, v_BKHK))
    return jnp.swapaxes(attend_heads(q, k, v, blocked), 1, 2)


def attend_heads(q_BHQK: jax.Array, k_BHKK: jax.Array, v_BHKK: jax.Array,
                 blocked: jax.Array | None) -> jax.Array:
    """`attend` on head-major arrays (B, H, tokens, head_dim), the layout a decoder cache keeps."""
    scale = q_BHQK.shape[-1] ** -0.5
    logits = jnp.einsum("bhqd,bhkd->bhqk", q_BHQK, k_BHKK, preferred_element_type=jnp.float32) * scale
    if blocked is not None:
        logits = jnp.where(blocked, jnp.finfo(jnp.float32).min, logits)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(v_BHKK.dtype), v_BHKK)


class Attention(nnx.Module):
    """Multi-head self-attention (fused qkv) or cross-attention (q from x, fused kv from context).

    With qk_norm, q and k are layer-normalised per head (weights shared across heads) before the
    dot product, as ml-4m's NormAttention.
    """

    def __init__(self, dim: int, num_heads: int, *, cross: bool, qkv_bias: bool, proj_bias: bool,
                 qk_norm: bool, norm_bias: bool, eps: float, dtype, rngs: nnx.Rngs):
        head_dim = dim // num_heads
        heads = (num_heads, head_dim)
        # ml-4m's Xavier bound treats Q, K and V as separate (dim x dim) matrices.
        square = xavier_uniform(dim, dim)
        kw = dict(use_bias=qkv_bias, dtype=dtype, rngs=rngs, init=square)
        if cross:
            self.q = Dense((dim,), heads, axes=("embed", "heads", "kv"), **kw)
            self.kv = Dense((dim,), (2,) + heads, axes=("embed", None, "heads", "kv"), **kw)
        else:
            self.qkv = Dense((dim,), (3,) + heads, axes=("embed", None, "heads", "kv"), **kw)
        self.proj = Dense(heads, (dim,), axes=("heads", "kv", "embed"), use_bias=proj_bias, dtype=dtype,
                          rngs=rngs)
        if qk_norm:
            self.q_norm = LayerNorm(head_dim, use_bias=norm_bias, eps=eps, rngs=rngs, axis_name="kv")
            self.k_norm = LayerNorm(head_dim, use_bias=norm_bias, eps=eps, rngs=rngs, axis_name="kv")
        else:
            self.q_norm = self.k_norm = None
        self.cross = cross
        self.dtype = dtype

    def project_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Self-attention (q, k, v), each (B, N, H, hd), q and k normalised with qk_norm."""
        q, k, v = jnp.moveaxis(self.qkv(x), -3, 0)
        return self._norm_q(q), self._norm_k(k), v

    def project_q(self, x: jax.Array) -> jax.Array:
        """Cross-attention queries (B, N, H, hd)."""
        return self._norm_q(self.q(x))

    def project_kv(self, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Cross-attention (k, v), each (B, N, H, hd): what a decoder cache keeps of the context."""
        k, v = jnp.moveaxis(self.kv(context), -3, 0)
        return self._norm_k(k), v

    def output(self, q: jax.Array, k: jax.Array, v: jax.Array, blocked: jax.Array | None,
               live_B: jax.Array | None = None) -> jax.Array:
        """proj(attention of q over k, v), all (B, tokens, H, hd). Rows with live False attend to
        nothing (zero attention output, only the projection bias remains), as ml-4m over an empty
        key sequence."""
        return self._project_out(attend(q, k, v, blocked), live_B)

    def output_cached(self, q: jax.Array, k_BHKK: jax.Array, v_BHKK: jax.Array, blocked: jax.Array | None,
                      live_B: jax.Array | None = None) -> jax.Array:
        """`output` with keys and values head-major (B, H, K, hd), as a decoder cache keeps them."""
        attended = attend_heads(jnp.swapaxes(q, 1, 2), k_BHKK, v_BHKK, blocked)
        return self._project_out(jnp.swapaxes(attended, 1, 2), live_B)

    def _project_out(self, attended: jax.Array, live_B: jax.Array | None) -> jax.Array:
        if live_B is not None:
            attended = jnp.where(live_B[:, None, None, None], attended, 0.0).astype(attended.dtype)
        return self.proj(attended)

    def __call__(self, x: jax.Array, blocked: jax.Array | None, context: jax.Array | None = None,
                 live_B: jax.Array | None = None):
        if self.cross:
            q = self.project_q(x)
            k, v = self.project_kv(context)
        else:
            q, k, v = self.project_qkv(x)
        return self.output(q, k, v, blocked, live_B)

    def _norm_q(self, q):
        return q if self.q_norm is None else self.q_norm(q).astype(self.dtype)

    def _norm_k(self, k):
        return k if self.k_norm is None else self.k_norm(k).astype(self.dtype)


class Mlp(nnx.Module):
    """fc2(act(fc1 x)) with exact GELU, or SwiGLU fc2(silu(fc1 x) * fc3 x) when gated."""

    def __init__(self, dim: int, hidden: int, *, gated: bool, act: str, use_bias: bool, dtype,
                 rngs: nnx.Rngs):
        kw = dict(use_bias=use_bias, dtype=dtype, rngs=rngs)
        self.fc1 = Dense((dim,), (hidden,), axes=("embed", "mlp"), **kw)
        self.fc2 = Dense((hidden,), (dim,), axes=("mlp", "embed"), **kw)
        self.fc3 = Dense((dim,), (hidden,), axes=("embed", "mlp"), **kw) if gated else None
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.fc1(x)
        h = jax.nn.silu(h) if self.act == "silu" else jax.nn.gelu(h, approximate=False)
        if self.fc3 is not None:
            h = h * self.fc3(x)
        return self.fc2(h)
