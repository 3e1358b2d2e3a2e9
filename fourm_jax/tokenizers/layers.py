"""Functional building blocks of the tokenizers over plain dict pytrees.

Each layer has a spec function `x_spec(...) -> tree of Param` that describes its parameters and an
apply function `x(params, inputs) -> outputs`. `materialise(spec, rng)` draws every random
parameter of a whole model from one uniform and one normal draw: a jitted init then compiles in
about a second instead of one threefry kernel per tensor. Layouts are channels-last: a dense kernel
is `[in, out]`, images are `[B, H, W, C]`. Numerics follow ml-4m's `fourm/vq/models` (LayerNorm
with biased variance, exact-erf GELU, no attention dropout).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Param:
    """A parameter to create: `init` is zeros, ones, constant (= scale), uniform in [-scale, scale]
    or normal with std `scale`."""

    shape: tuple[int, ...]
    init: str = "zeros"
    scale: float = 1.0


def _is_param(x) -> bool:
    return isinstance(x, Param)


def stacked(spec, depth: int):
    """The spec of `depth` identical layers stacked on a leading axis (run with `scan_layers`)."""
    return jax.tree.map(lambda p: dataclasses.replace(p, shape=(depth, *p.shape)), spec, is_leaf=_is_param)


def materialise(spec, rng: jax.Array):
    """Arrays for a spec tree (numpy leaves are fixed tables and pass through), float32."""
    leaves, treedef = jax.tree.flatten(spec, is_leaf=_is_param)
    sizes = {kind: sum(math.prod(p.shape) for p in leaves if _is_param(p) and p.init == kind)
             for kind in ("uniform", "normal")}
    rng_uniform, rng_normal = jax.random.split(rng)
    pools = {"uniform": jax.random.uniform(rng_uniform, (sizes["uniform"],), jnp.float32, -1.0, 1.0),
             "normal": jax.random.normal(rng_normal, (sizes["normal"],), jnp.float32)}
    offsets = {"uniform": 0, "normal": 0}
    arrays = []
    for leaf in leaves:
        if not _is_param(leaf):
            arrays.append(jnp.asarray(leaf, jnp.float32))
        elif leaf.init in pools:
            size = math.prod(leaf.shape)
            start = offsets[leaf.init]
            offsets[leaf.init] += size
            arrays.append(pools[leaf.init][start:start + size].reshape(leaf.shape) * leaf.scale)
        elif leaf.init in ("zeros", "ones", "constant"):
            value = {"zeros": 0.0, "ones": 1.0, "constant": leaf.scale}[leaf.init]
            arrays.append(jnp.full(leaf.shape, value, jnp.float32))
        else:
            raise ValueError(f"unknown init {leaf.init!r}")
    return jax.tree.unflatten(treedef, arrays)


def dense_spec(d_in: int, d_out: int, *, bound: float | None = None) -> dict:
    """Xavier-uniform kernel (ml-4m's init for its ViT linears), zero bias; `bound` overrides it."""
    if bound is None:
        bound = math.sqrt(6.0 / (d_in + d_out))
    return {"kernel": Param((d_in, d_out), "uniform", bound), "bias": Param((d_out,))}


def dense(params: dict, x: jax.Array) -> jax.Array:
    return jnp.einsum("...i,io->...o", x, params["kernel"]) + params["bias"]


def layer_norm_spec(dim: int) -> dict:
    return {"scale": Param((dim,), "ones"), "bias": Param((dim,))}


def layer_norm(params: dict, x: jax.Array, eps: float) -> jax.Array:
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * params["scale"] + params["bias"]


def gelu(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


# ----------------------------------------------------------------------------- ViT blocks

VIT_NORM_EPS = 1e-6


def vit_block_spec(dim: int, mlp_ratio: float) -> dict:
    hidden = int(dim * mlp_ratio)
    # ml-4m initialises q, k and v as three separate [dim, dim] xavier matrices.
    return {
        "norm1": layer_norm_spec(dim),
        "attn": {"qkv": dense_spec(dim, 3 * dim, bound=math.sqrt(6.0 / (2 * dim))),
                 "proj": dense_spec(dim, dim)},
        "norm2": layer_norm_spec(dim),
        "mlp": {"fc1": dense_spec(dim, hidden), "fc2": dense_spec(hidden, dim)},
    }


def attention(params: dict, x_BND: jax.Array, num_heads: int) -> jax.Array:
    batch, length, dim = x_BND.shape
    qkv = dense(params["qkv"], x_BND).reshape(batch, length, 3, num_heads, dim // num_heads)
    out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
    return dense(params["proj"], out.reshape(batch, length, dim))


def vit_block(params: dict, x_BND: jax.Array, num_heads: int) -> jax.Array:
    x_BND = x_BND + attention(params["attn"], layer_norm(params["norm1"], x_BND, VIT_NORM_EPS), num_heads)
    hidden = gelu(dense(params["mlp"]["fc1"], layer_norm(params["norm2"], x_BND, VIT_NORM_EPS)))
    return x_BND + dense(params["mlp"]["fc2"], hidden)


def scan_layers(layer_fn, stacked_params, x):
    """Applies stacked layers in order with one traced body (short compiles for deep stacks)."""
    def body(carry, layer_params):
        return layer_fn(layer_params, carry), None
    return jax.lax.scan(body, x, stacked_params)[0]


def post_mlp_spec(dim: int, mlp_ratio: float) -> dict:
    hidden = int(dim * mlp_ratio)
    return {"norm_mlp": layer_norm_spec(dim), "fc1": dense_spec(dim, hidden), "fc2": dense_spec(hidden, dim)}


def post_mlp(params: dict, x: jax.Array) -> jax.Array:
    """ViT-VQGAN's residual tanh MLP before the quantizer / after the decoder blocks (float32)."""
    x = x.astype(jnp.float32)
    hidden = jnp.tanh(dense(params["fc1"], layer_norm(params["norm_mlp"], x, VIT_NORM_EPS)))
    return x + dense(params["fc2"], hidden)


# ----------------------------------------------------------------------------- BottleneckMLP

MLP_NORM_EPS = 1e-5  # torch.nn.LayerNorm default, as ml-4m's BottleneckMLP uses it


def _torch_linear_spec(d_in: int, d_out: int) -> dict:
    """torch.nn.Linear's default init: U(-1/sqrt(d_in), 1/sqrt(d_in)) for kernel and bias."""
    bound = 1.0 / math.sqrt(d_in)
    return {"kernel": Param((d_in, d_out), "uniform", bound), "bias": Param((d_out,), "uniform", bound)}


def bottleneck_mlp_spec(dim_in: int, dim_out: int, width: int, depth: int, expansion: int) -> dict:
    block = {"norm": layer_norm_spec(width), "fc1": _torch_linear_spec(width, expansion * width),
             "fc2": _torch_linear_spec(expansion * width, width)}
    return {"linear_in": _torch_linear_spec(dim_in, width), "blocks": stacked(block, depth),
            "linear_out": _torch_linear_spec(width, dim_out)}


def bottleneck_mlp(params: dict, x: jax.Array) -> jax.Array:
    """Pointwise over the last axis: linear_in, pre-norm residual GELU blocks, linear_out."""
    def block(p, h):
        return h + dense(p["fc2"], gelu(dense(p["fc1"], layer_norm(p["norm"], h, MLP_NORM_EPS))))

    h = dense(params["linear_in"], x)
    h = scan_layers(block, params["blocks"], h)
    return dense(params["linear_out"], h)


# ----------------------------------------------------------------------------- ConvNeXt (out_conv)

def convnext_block_spec(dim: int) -> dict:
    return {"dwconv": {"kernel": Param((7, 7, 1, dim), "normal", 0.02), "bias": Param((dim,))},
            "norm": layer_norm_spec(dim), "pwconv1": dense_spec(dim, 4 * dim),
            "pwconv2": dense_spec(4 * dim, dim), "gamma": Param((dim,), "constant", 1e-6)}


def convnext_block(params: dict, x_BHWC: jax.Array) -> jax.Array:
    """Depthwise 7x7 conv, LayerNorm, 4x MLP, layer scale, residual (ml-4m's out_conv blocks)."""
    dim = x_BHWC.shape[-1]
    h = jax.lax.conv_general_dilated(
        x_BHWC, params["dwconv"]["kernel"], window_strides=(1, 1), padding=((3, 3), (3, 3)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=dim) + params["dwconv"]["bias"]
    h = layer_norm(params["norm"], h, VIT_NORM_EPS)
    h = dense(params["pwconv2"], gelu(dense(params["pwconv1"], h)))
    return x_BHWC + params["gamma"] * h


# ----------------------------------------------------------------------------- position embeddings

def sincos_2d(grid_h: int, grid_w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """ml-4m's fixed 2-D table `[h, w, dim]`: cell (r, c) = [sin(r w), cos(r w), sin(c w), cos(c w)].

    (ml-4m builds it with a transposed meshgrid; for the square grids it is used with, this is the
    result. Released checkpoints carry the table, so an import never relies on this function.)
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float32) / quarter)
    rows = np.arange(grid_h, dtype=np.float32)[:, None] * omega  # [h, q]
    cols = np.arange(grid_w, dtype=np.float32)[:, None] * omega  # [w, q]
    rows = np.broadcast_to(rows[:, None], (grid_h, grid_w, quarter))
    cols = np.broadcast_to(cols[None, :], (grid_h, grid_w, quarter))
    return np.concatenate([np.sin(rows), np.cos(rows), np.sin(cols), np.cos(cols)], -1).astype(np.float32)


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
    """PyTorch's cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fraction t."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


@functools.lru_cache(maxsize=64)
def torch_bicubic_matrix(in_size: int, out_size: int, a: float = -0.75) -> np.ndarray:
    """`[out, in]` matrix of PyTorch's 1-D bicubic resampling (align_corners=False, no antialias).

    Source coordinate (o + 0.5) * in/out - 0.5 (not clamped), taps floor(src) - 1 .. + 2 clamped to
    the border, cubic-convolution kernel with A = -0.75. jax.image.resize('bicubic') uses A = -0.5
    and antialiases when downsampling, so it does not reproduce ml-4m's position tables.
    """
    scale = in_size / out_size
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
    base = np.floor(src)
    weights = _cubic_weights(src - base, a)
    matrix = np.zeros((out_size, in_size), np.float64)
    for tap in range(4):
        index = np.clip(base.astype(np.int64) - 1 + tap, 0, in_size - 1)
        np.add.at(matrix, (np.arange(out_size), index), weights[:, tap])
    return matrix


def resize_pos_emb(table_hwD: jax.Array, grid_h: int, grid_w: int) -> jax.Array:
    """ml-4m's `F.interpolate(pos_emb, (grid_h, grid_w), mode='bicubic', align_corners=False)`."""
    in_h, in_w = table_hwD.shape[:2]
    if (in_h, in_w) == (grid_h, grid_w):
        return table_hwD
    rows = jnp.asarray(torch_bicubic_matrix(in_h, grid_h), jnp.float32)
    cols = jnp.asarray(torch_bicubic_matrix(in_w, grid_w), jnp.float32)
    return jnp.einsum("oh,hwd,pw->opd", rows, table_hwD, cols, precision=jax.lax.Precision.HIGHEST)
