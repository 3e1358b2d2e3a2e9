"""Reconstruction losses of ml-4m's VQ-VAE training (`run_training_vqvae.compute_reconst_loss`).

The total loss is `reconstruction + codebook_weight * commitment` (the commitment term comes from
`VQVAE.quantize_for_training`, already weighted by the config's commitment_weight). ml-4m's optional
perceptual loss (a frozen CLIP/LPIPS network) is not implemented.

Layouts are ours (channels-last): outputs `[B, H, W, C]`, vectors `[B, C]`; `cross_entropy` takes
logits `[B, H, W, K]` and class ids `[B, H, W]`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSS_FNS = ("mse", "l1", "smooth_l1", "cross_entropy", "cosine", "cosine_1d", "binary_cross_entropy")
COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity


def _cosine(a: jax.Array, b: jax.Array, axis: int) -> jax.Array:
    norm_a = jnp.maximum(jnp.linalg.norm(a, axis=axis), COSINE_EPS)
    norm_b = jnp.maximum(jnp.linalg.norm(b, axis=axis), COSINE_EPS)
    return (a * b).sum(axis) / (norm_a * norm_b)


def reconstruction_loss(loss_fn: str, output: jax.Array, target: jax.Array) -> jax.Array:
    """Mean reconstruction loss of a batch, as ml-4m computes each kind."""
    output = output.astype(jnp.float32)
    if loss_fn == "cross_entropy":  # every class, 0 ("no class") included, as ml-4m trains semseg
        log_probs = jax.nn.log_softmax(output, -1)
        return -jnp.take_along_axis(log_probs, target[..., None].astype(jnp.int32), -1).mean()
    target = target.astype(jnp.float32)
    diff = output - target
    if loss_fn == "mse":
        return jnp.square(diff).mean()
    if loss_fn == "l1":
        return jnp.abs(diff).mean()
    if loss_fn == "smooth_l1":  # beta = 1
        return jnp.where(jnp.abs(diff) < 1.0, 0.5 * jnp.square(diff), jnp.abs(diff) - 0.5).mean()
    if loss_fn == "cosine":  # per channel, over space
        flat = lambda x: x.reshape(x.shape[0], -1, x.shape[-1])
        return 1.0 - _cosine(flat(output), flat(target), axis=1).mean()
    if loss_fn == "cosine_1d":  # over channels, per position (global feature vectors)
        return 1.0 - _cosine(output, target, axis=-1).mean()
    if loss_fn == "binary_cross_entropy":
        # ml-4m's formulation: the sigmoid probabilities [p, 1-p] are fed to a softmax cross entropy
        # as if they were logits, with soft targets [t, 1-t].
        p = jax.nn.sigmoid(output)
        log_probs = jax.nn.log_softmax(jnp.stack([p, 1 - p], -1), -1)
        return -(jnp.stack([target, 1 - target], -1) * log_probs).sum(-1).mean()
    raise ValueError(f"loss_fn {loss_fn!r}: expected one of {LOSS_FNS}")
