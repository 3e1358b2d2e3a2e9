"""ml-4m's ViT tokenizer encoder and decoder (`fourm/vq/models/vit_models.py`), channels-last.

Encoder: patch projection (a dense layer over `(ph, pw, c)` patches, or 1x1 over a feature map),
+ the stored sin-cos table resized to the token grid with PyTorch's bicubic kernel, pre-norm blocks,
optional tanh post-MLP, and no final LayerNorm. Decoder: the same in reverse, ending in a dense
projection to `P*P*C` values per token, unpatchified, optionally followed by two ConvNeXt blocks.

The position tables are fixed (ml-4m keeps them as parameters with requires_grad=False), so they
live in `buffers`, stored `[h0, w0, D]` at the grid of the size the tokenizer was built for.
"""

from __future__ import annotations

import jax

from fourm_jax.tokenizers import layers


def _blocks(params: dict, x_BND: jax.Array, num_heads: int) -> jax.Array:
    return layers.scan_layers(lambda p, x: layers.vit_block(p, x, num_heads), params, x_BND)


def encoder_spec(*, in_channels: int, patch_size: int, grid: int, dim: int, depth: int, mlp_ratio: float,
                 patch_proj: bool, post_mlp: bool) -> tuple[dict, dict]:
    """(params, buffers) spec of a ViT encoder whose stored position grid is `grid x grid`."""
    patch = patch_size if patch_proj else 1
    params = {"patch_embed": layers.dense_spec(patch * patch * in_channels, dim),
              "blocks": layers.stacked(layers.vit_block_spec(dim, mlp_ratio), depth)}
    if post_mlp:
        params["post_mlp"] = layers.post_mlp_spec(dim, mlp_ratio)
    return params, {"pos_emb": layers.sincos_2d(grid, grid, dim)}


def patchify(x_BHWC: jax.Array, patch: int) -> jax.Array:
    """`[B, H, W, C] -> [B, H/P, W/P, P*P*C]`, patch values in (ph, pw, c) order."""
    batch, height, width, channels = x_BHWC.shape
    x = x_BHWC.reshape(batch, height // patch, patch, width // patch, patch, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, height // patch, width // patch, -1)


def unpatchify(x_BhwF: jax.Array, patch: int) -> jax.Array:
    """Inverse of `patchify`: `[B, h, w, P*P*C] -> [B, h*P, w*P, C]`."""
    batch, grid_h, grid_w, features = x_BhwF.shape
    x = x_BhwF.reshape(batch, grid_h, grid_w, patch, patch, features // (patch * patch))
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, grid_h * patch, grid_w * patch, -1)


def encoder(params: dict, buffers: dict, x_BHWC: jax.Array, *, patch_size: int, num_heads: int,
            patch_proj: bool) -> jax.Array:
    """`[B, H, W, C]` image (or `[B, h, w, C]` feature map without patch_proj) -> `[B, h, w, D]`."""
    if patch_proj:
        x_BHWC = patchify(x_BHWC, patch_size)
    x = layers.dense(params["patch_embed"], x_BHWC)
    batch, grid_h, grid_w, dim = x.shape
    x = x + layers.resize_pos_emb(buffers["pos_emb"], grid_h, grid_w)
    x = _blocks(params["blocks"], x.reshape(batch, grid_h * grid_w, dim), num_heads)
    if "post_mlp" in params:
        x = layers.post_mlp(params["post_mlp"], x)
    return x.reshape(batch, grid_h, grid_w, dim)


def decoder_spec(*, out_channels: int, patch_size: int, grid: int, dim: int, depth: int, mlp_ratio: float,
                 patch_proj: bool, post_mlp: bool, out_conv: bool) -> tuple[dict, dict]:
    patch = patch_size if patch_proj else 1
    params = {"blocks": layers.stacked(layers.vit_block_spec(dim, mlp_ratio), depth),
              "out_proj": layers.dense_spec(dim, patch * patch * out_channels)}
    if post_mlp:
        params["post_mlp"] = layers.post_mlp_spec(dim, mlp_ratio)
    if out_conv:
        params["out_conv"] = layers.stacked(layers.convnext_block_spec(out_channels), 2)
    return params, {"pos_emb": layers.sincos_2d(grid, grid, dim)}


def decoder(params: dict, buffers: dict, x_BhwD: jax.Array, *, patch_size: int, num_heads: int,
            patch_proj: bool) -> jax.Array:
    """`[B, h, w, D]` -> `[B, h*P, w*P, C]` (`[B, h, w, C]` without patch_proj)."""
    batch, grid_h, grid_w, dim = x_BhwD.shape
    x = x_BhwD + layers.resize_pos_emb(buffers["pos_emb"], grid_h, grid_w)
    x = _blocks(params["blocks"], x.reshape(batch, grid_h * grid_w, dim), num_heads)
    if "post_mlp" in params:
        x = layers.post_mlp(params["post_mlp"], x)
    x = layers.dense(params["out_proj"], x).reshape(batch, grid_h, grid_w, -1)
    x = unpatchify(x, patch_size if patch_proj else 1)
    if "out_conv" in params:
        x = layers.scan_layers(layers.convnext_block, params["out_conv"], x)
    return x
