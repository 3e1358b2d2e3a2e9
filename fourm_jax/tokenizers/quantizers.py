"""ml-4m's quantizers as pure functions: the lucid VQ codebook and Memcodes.

Lucid VQ (`VectorQuantizerLucid`): nearest code by cosine similarity (`norm_codes=True`, every
released tokenizer) or squared L2; the quantized vector is the RAW codebook row, not its unit-norm
version. The codebook is not trained by gradients but by EMA of the assigned (l2-normalised) latents,
and codes whose EMA count falls below a threshold are restarted from random latents of the batch.

Memcodes (NWT): per head, attention logits between the scaled latent and `codes @ W_k`; the output
is the chosen row of `codes @ W_v`. Trained by gradients through a straight-through hard
Gumbel-softmax; argmax at inference.

Latents arrive as `[..., dim]` (any leading axes); tokens come back with the same leading axes,
plus a heads axis in front of the spatial ones when there are several heads (see `encode`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """torch.nn.functional.normalize: x / max(||x||, eps)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


# ----------------------------------------------------------------------------- lucid VQ

def codebook_scores(embed_KD: jax.Array, z_MD: jax.Array, cosine: bool) -> jax.Array:
    """Similarity of every latent to every code `[M, K]`; the token is its argmax.

    Computed at HIGHEST precision so token ids do not depend on the accelerator's matmul default.
    """
    if cosine:
        return jnp.einsum("md,kd->mk", l2_normalize(z_MD), l2_normalize(embed_KD), precision=HIGHEST)
    dots = jnp.einsum("md,kd->mk", z_MD, embed_KD, precision=HIGHEST)
    return -(jnp.square(z_MD).sum(-1, keepdims=True) - 2 * dots + jnp.square(embed_KD).sum(-1))


def vq_lookup(embed_KD: jax.Array, z: jax.Array, cosine: bool) -> tuple[jax.Array, jax.Array]:
    """Nearest codes of latents `[..., D]`: (raw code vectors `[..., D]`, ids `[...]` int32)."""
    flat = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
    ids = jnp.argmax(codebook_scores(embed_KD, flat, cosine), -1).astype(jnp.int32)
    return embed_KD[ids].reshape(z.shape), ids.reshape(z.shape[:-1])


def ema_codebook_update(embed_KD: jax.Array, cluster_size_K: jax.Array, z_MD: jax.Array, ids_M: jax.Array,
                        decay: float) -> tuple[jax.Array, jax.Array]:
    """One EMA step of ml-4m's CosineSimCodebook (training only).

    cluster_size <- d * cluster_size + (1 - d) * counts; each used code moves towards the
    l2-normalised mean of its l2-normalised latents, each unused code towards its own unit-norm
    version: embed <- d * embed + (1 - d) * target (no renormalisation afterwards). Over a sharded
    batch the sums are global, which is ml-4m's `sync_codebook` (DDP all-reduce).
    """
    num_codes = embed_KD.shape[0]
    onehot_MK = jax.nn.one_hot(ids_M, num_codes, dtype=jnp.float32)
    counts_K = onehot_MK.sum(0)
    cluster_size_K = decay * cluster_size_K + (1 - decay) * counts_K
    sums_KD = jnp.einsum("mk,md->kd", onehot_MK, l2_normalize(z_MD.astype(jnp.float32)), precision=HIGHEST)
    means_KD = l2_normalize(sums_KD / jnp.maximum(counts_K, 1.0)[:, None])
    target_KD = jnp.where((counts_K == 0)[:, None], l2_normalize(embed_KD), means_KD)
    return decay * embed_KD + (1 - decay) * target_KD, cluster_size_K


def restart_dead_codes(rng: jax.Array, embed_KD: jax.Array, cluster_size_K: jax.Array, z_MD: jax.Array,
                       threshold: float, policy: str = "batch_random") -> jax.Array:
    """Replaces codes with EMA count < threshold (ml-4m's `expire_codes_`; counts are not reset).

    batch_random: each dead code gets a distinct random l2-normalised latent of the batch (cycling
    through a permutation when there are more dead codes than latents).
    linde_buzo_gray: the i-th dead code gets the i-th most used code plus 1e-10 noise, normalised.
    """
    if threshold <= 0:
        return embed_KD
    dead_K = cluster_size_K < threshold
    rank_K = jnp.cumsum(dead_K) - 1  # index of each dead code among the dead ones
    if policy == "batch_random":
        samples_MD = l2_normalize(z_MD.astype(jnp.float32))
        order = jax.random.permutation(rng, samples_MD.shape[0])
        replacement_KD = samples_MD[order[rank_K % samples_MD.shape[0]]]
    elif policy == "linde_buzo_gray":
        most_used = jnp.argsort(-cluster_size_K)
        parents_KD = embed_KD[most_used[rank_K]]
        replacement_KD = l2_normalize(parents_KD + 1e-10 * jax.random.normal(rng, parents_KD.shape))
    else:
        raise ValueError(f"code_replacement_policy {policy!r}: expected 'batch_random' or 'linde_buzo_gray'")
    return jnp.where(dead_K[:, None], replacement_KD, embed_KD)


# ----------------------------------------------------------------------------- Memcodes

def memcodes_keys_values(params: dict) -> tuple[jax.Array, jax.Array]:
    """Per-head keys and values of the codes: `codes[h] @ W_k[h]`, `codes[h] @ W_v[h]` `[h, K, d]`."""
    keys = jnp.einsum("hkd,hdc->hkc", params["codes"], params["to_k"], precision=HIGHEST)
    values = jnp.einsum("hkd,hdc->hkc", params["codes"], params["to_v"], precision=HIGHEST)
    return keys, values


def memcodes_logits(params: dict, z: jax.Array) -> jax.Array:
    """Logits `[..., h, K]` of latents `[..., h*d]` against every head's code keys."""
    heads, _, head_dim = params["codes"].shape
    keys, _ = memcodes_keys_values(params)
    q = z.reshape(*z.shape[:-1], heads, head_dim).astype(jnp.float32) * head_dim ** -0.5
    return jnp.einsum("...hd,hkd->...hk", q, keys, precision=HIGHEST)


def memcodes_lookup(params: dict, ids: jax.Array) -> jax.Array:
    """Values of ids `[..., h]` concatenated over heads: `[..., h*d]`."""
    _, values = memcodes_keys_values(params)
    heads = values.shape[0]
    picked = values[jnp.arange(heads), ids]  # [..., h, d]
    return picked.reshape(*ids.shape[:-1], -1)


def memcodes_quantize(params: dict, z: jax.Array, rng: jax.Array | None = None,
                      temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """(quantized `[..., h*d]`, ids `[..., h]`); with `rng`, straight-through hard Gumbel-softmax."""
    logits = memcodes_logits(params, z)
    _, values = memcodes_keys_values(params)
    if rng is None:
        ids = jnp.argmax(logits, -1).astype(jnp.int32)
        return memcodes_lookup(params, ids), ids
    gumbel = -jnp.log(-jnp.log(jax.random.uniform(rng, logits.shape, minval=1e-20, maxval=1.0)))
    soft = jax.nn.softmax((logits + gumbel) / temperature, -1)
    ids = jnp.argmax(soft, -1).astype(jnp.int32)
    hard = jax.nn.one_hot(ids, logits.shape[-1], dtype=soft.dtype)
    attn = hard + soft - jax.lax.stop_gradient(soft)
    out = jnp.einsum("...hk,hkd->...hd", attn, values)
    return out.reshape(*z.shape[:-1], -1), ids
