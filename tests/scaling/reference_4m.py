"""A small pure-JAX 4M training loss, written from ../shared/reference/ml4m-model.md sections 2-6.

It exists to check the FLOP counting rules of fourm_jax.scaling.flops against XLA's cost analysis
while the real model is being built: pre-norm encoder blocks, decoder blocks with self-attention,
cross-attention over the projected encoder output and an MLP (GELU or SwiGLU), optional qk-norm,
pixel patch projection and token lookups as inputs, mask tokens as image-target decoder inputs,
and one output head per target modality applied to that modality's decoder tokens only. Layers
are a Python loop (XLA's cost analysis counts a scanned body once).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fourm_jax import modalities
from fourm_jax.model.config import ModelConfig


def _dense(key, fan_in, fan_out, bias):
    params = {"w": jax.random.normal(key, (fan_in, fan_out)) * fan_in**-0.5}
    if bias:
        params["b"] = jnp.zeros((fan_out,))
    return params


def _norm(width, bias):
    return {"scale": jnp.ones((width,))} | ({"bias": jnp.zeros((width,))} if bias else {})


def _apply_dense(params, x):
    y = x @ params["w"]
    return y + params["b"] if "b" in params else y


def _apply_norm(params, x, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + eps) * params["scale"]
    return y + params["bias"] if "bias" in params else y


def _attention_params(key, cfg: ModelConfig, cross: bool):
    k1, k2, k3 = jax.random.split(key, 3)
    dim = cfg.dim
    params = {"proj": _dense(k3, dim, dim, cfg.proj_bias)}
    if cross:
        params |= {"q": _dense(k1, dim, dim, cfg.qkv_bias), "kv": _dense(k2, dim, 2 * dim, cfg.qkv_bias)}
    else:
        params |= {"qkv": _dense(k1, dim, 3 * dim, cfg.qkv_bias)}
    if cfg.qk_norm:
        params |= {"q_norm": _norm(cfg.head_dim, cfg.norm_bias), "k_norm": _norm(cfg.head_dim, cfg.norm_bias)}
    return params


def _mlp_params(key, cfg: ModelConfig):
    k1, k2, k3 = jax.random.split(key, 3)
    hidden = cfg.mlp_hidden_dim
    params = {"fc1": _dense(k1, cfg.dim, hidden, cfg.mlp_bias),
              "fc2": _dense(k2, hidden, cfg.dim, cfg.mlp_bias)}
    if cfg.gated_mlp:
        params["fc3"] = _dense(k3, cfg.dim, hidden, cfg.mlp_bias)
    return params


def init_params(key, cfg: ModelConfig, inputs: dict[str, int], targets: dict[str, int]):
    keys = iter(jax.random.split(key, 64))
    dim, nb = cfg.dim, cfg.norm_bias
    params = {"encoder": [], "decoder": [], "inputs": {}, "heads": {}, "mask_token": jnp.zeros((dim,))}
    for _ in range(cfg.encoder_depth):
        params["encoder"].append({"norm1": _norm(dim, nb), "attn": _attention_params(next(keys), cfg, False),
                                  "norm2": _norm(dim, nb), "mlp": _mlp_params(next(keys), cfg)})
    for _ in range(cfg.decoder_depth):
        params["decoder"].append({
            "norm1": _norm(dim, nb), "self_attn": _attention_params(next(keys), cfg, False),
            "query_norm": _norm(dim, nb), "context_norm": _norm(dim, nb),
            "cross_attn": _attention_params(next(keys), cfg, True),
            "norm2": _norm(dim, nb), "mlp": _mlp_params(next(keys), cfg)})
    params["encoder_norm"] = _norm(dim, nb)
    params["decoder_norm"] = _norm(dim, nb)
    params["context_proj"] = _dense(next(keys), dim, dim, True)
    for name in inputs:
        m = modalities.get(name)
        if m.kind is modalities.Kind.IMAGE_PIXELS:
            params["inputs"][name] = _dense(next(keys), m.num_channels * m.patch_size**2, dim, False)
        else:
            params["inputs"][name] = {"table": jax.random.normal(next(keys), (m.vocab_size, dim))}
    for name in targets:
        m = modalities.get(name)
        params["heads"][name] = {"table": jax.random.normal(next(keys), (m.vocab_size, dim)),
                                 "to_logits": _dense(next(keys), dim, m.vocab_size, False)}
    return params


def _heads(x_BTD, cfg):
    return x_BTD.reshape(*x_BTD.shape[:2], cfg.num_heads, cfg.head_dim)


def _attend(params, q_BQHd, k_BKHd, v_BKHd, mask_BQK, cfg):
    if cfg.qk_norm:
        q_BQHd, k_BKHd = _apply_norm(params["q_norm"], q_BQHd), _apply_norm(params["k_norm"], k_BKHd)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q_BQHd, k_BKHd) * cfg.head_dim**-0.5
    logits = jnp.where(mask_BQK[:, None], -jnp.finfo(logits.dtype).max, logits)
    out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v_BKHd)
    return _apply_dense(params["proj"], out.reshape(*out.shape[:2], cfg.dim))


def _self_attention(params, x, mask, cfg):
    q, k, v = jnp.split(_apply_dense(params["qkv"], x), 3, axis=-1)
    return _attend(params, _heads(q, cfg), _heads(k, cfg), _heads(v, cfg), mask, cfg)


def _cross_attention(params, x, context, mask, cfg):
    k, v = jnp.split(_apply_dense(params["kv"], context), 2, axis=-1)
    q = _apply_dense(params["q"], x)
    return _attend(params, _heads(q, cfg), _heads(k, cfg), _heads(v, cfg), mask, cfg)


def _mlp(params, x, cfg):
    if cfg.gated_mlp:
        return _apply_dense(params["fc2"], jax.nn.silu(_apply_dense(params["fc1"], x))
                            * _apply_dense(params["fc3"], x))
    return _apply_dense(params["fc2"], jax.nn.gelu(_apply_dense(params["fc1"], x), approximate=False))


def _encoder_block(params, x, mask, cfg):
    x = x + _self_attention(params["attn"], _apply_norm(params["norm1"], x), mask, cfg)
    return x + _mlp(params["mlp"], _apply_norm(params["norm2"], x), cfg)


def _decoder_block(params, y, context, self_mask, cross_mask, cfg):
    y = y + _self_attention(params["self_attn"], _apply_norm(params["norm1"], y), self_mask, cfg)
    y = y + _cross_attention(params["cross_attn"], _apply_norm(params["query_norm"], y),
                             _apply_norm(params["context_norm"], context), cross_mask, cfg)
    return y + _mlp(params["mlp"], _apply_norm(params["norm2"], y), cfg)


def loss_fn(params, batch, cfg: ModelConfig, remat: bool = False):
    """Mean over target modalities of the cross-entropy. batch: {'inputs': {name: pixel patches
    (B, n, C·P²) or ids (B, n)}, 'targets': {name: ids (B, n)}, 'enc_emb' (B, T, D), 'dec_emb'
    (B, M, D), 'enc_mask' (B, T), 'dec_mask' (B, M, M)} with True = masked."""
    encoder_block, decoder_block = _encoder_block, _decoder_block
    if remat:
        encoder_block = jax.checkpoint(_encoder_block, static_argnums=(3,))
        decoder_block = jax.checkpoint(_decoder_block, static_argnums=(5,))
    tokens = []
    for name, value in batch["inputs"].items():
        p = params["inputs"][name]
        tokens.append(_apply_dense(p, value) if "w" in p else p["table"][value])
    x = jnp.concatenate(tokens, axis=1) + batch["enc_emb"]
    enc_mask = jnp.broadcast_to(batch["enc_mask"][:, None, :], (x.shape[0], 1, x.shape[1]))
    for block in params["encoder"]:
        x = encoder_block(block, x, enc_mask, cfg)
    x = _apply_norm(params["encoder_norm"], x)
    context = _apply_dense(params["context_proj"], x) + batch["enc_emb"]

    dec_tokens = []
    for name, ids in batch["targets"].items():
        if modalities.get(name).is_image:  # image targets enter the decoder as the mask token
            dec_tokens.append(jnp.broadcast_to(params["mask_token"], (*ids.shape, cfg.dim)))
        else:  # sequences: teacher forcing with the token embedding
            dec_tokens.append(params["heads"][name]["table"][ids])
    y = jnp.concatenate(dec_tokens, axis=1) + batch["dec_emb"]
    for block in params["decoder"]:
        y = decoder_block(block, y, context, batch["dec_mask"], enc_mask, cfg)
    y = _apply_norm(params["decoder_norm"], y)

    losses, start = [], 0
    for name, ids in batch["targets"].items():  # each head only on its modality's tokens
        logits = _apply_dense(params["heads"][name]["to_logits"], y[:, start:start + ids.shape[1]])
        start += ids.shape[1]
        log_probs = jax.nn.log_softmax(logits, axis=-1)
        losses.append(-jnp.take_along_axis(log_probs, ids[..., None], axis=-1).mean())
    return sum(losses) / len(losses)


def example_batch(key, cfg: ModelConfig, batch_size: int, inputs: dict[str, int], targets: dict[str, int]):
    keys = iter(jax.random.split(key, 16))
    batch = {"inputs": {}, "targets": {}}
    for name, n in inputs.items():
        m = modalities.get(name)
        if m.kind is modalities.Kind.IMAGE_PIXELS:
            patch_features = m.num_channels * m.patch_size**2
            batch["inputs"][name] = jax.random.normal(next(keys), (batch_size, n, patch_features))
        else:
            batch["inputs"][name] = jax.random.randint(next(keys), (batch_size, n), 0, m.vocab_size)
    for name, n in targets.items():
        vocab_size = modalities.get(name).vocab_size
        batch["targets"][name] = jax.random.randint(next(keys), (batch_size, n), 0, vocab_size)
    enc_len, dec_len = sum(inputs.values()), sum(targets.values())
    batch["enc_emb"] = jax.random.normal(next(keys), (batch_size, enc_len, cfg.dim))
    batch["dec_emb"] = jax.random.normal(next(keys), (batch_size, dec_len, cfg.dim))
    batch["enc_mask"] = jnp.zeros((batch_size, enc_len), bool)
    batch["dec_mask"] = jnp.triu(jnp.ones((batch_size, dec_len, dec_len), bool), k=1)
    return batch
