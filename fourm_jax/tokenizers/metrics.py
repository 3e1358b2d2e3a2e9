"""Reconstruction quality of a tokenizer, accumulated over an evaluation set.

`reconstruction_stats` turns one batch into additive statistics (sums, counts, a confusion matrix,
a token histogram) that jit well and add across batches and hosts (`add_stats`); `summarize` turns
the totals into the reported numbers:

    rgb, image,  PSNR (dB, data range 1 on [0, 1] images, from the pooled MSE as torchmetrics
    normal       computes it), MSE, MAE
    depth        absolute relative error |d - d*| / d* on valid pixels (d* > 0) after mapping the
                 standardised prediction back with the target's own robust mean and scale
    normal       also the mean angular error (degrees) and the share of pixels within 11.25 degrees
    semseg       pixel accuracy and mIoU (classes with a non-empty union), `ignore_index` excluded
    every kind   codebook usage (share of codes used at least once) and perplexity exp(H(tokens))

(ml-4m reports codebook usage as the mean share of distinct codes per window of 256 images;
ours is over the whole evaluated set, which is at least as large.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fourm_jax.tokenizers import inputs

SEMSEG_IGNORE_INDEX = 0  # after ml-4m's shift, 0 is "no class" (ignore label 255)


def token_histogram(tokens: jax.Array, codebook_size: int) -> jax.Array:
    """Counts of each code id `[K]` over all tokens (all heads together)."""
    return jnp.zeros((codebook_size,), jnp.float32).at[tokens.reshape(-1)].add(1.0)


def codebook_usage(histogram: jax.Array) -> jax.Array:
    return (histogram > 0).mean()


def perplexity(histogram: jax.Array) -> jax.Array:
    p = histogram / jnp.maximum(histogram.sum(), 1.0)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


def reconstruction_stats(modality: str, output: jax.Array, target: jax.Array, tokens: jax.Array,
                         codebook_size: int, *, raw_target: jax.Array | None = None,
                         num_labels: int | None = None, ignore_index: int = SEMSEG_IGNORE_INDEX) -> dict:
    """Additive statistics of one batch. `output` is the decoder output, `target` the model input
    it reconstructs; depth also needs `raw_target`, the unstandardised depth `[B, H, W]`."""
    stats = {"token_histogram": token_histogram(tokens, codebook_size)}
    if modality in ("rgb", "image", "normal"):
        error = (output - target) / 2.0  # on [0, 1] images; ml-4m does not clip the prediction
        stats |= {"sum_squared_error": jnp.square(error).sum(), "sum_abs_error": jnp.abs(error).sum(),
                  "num_values": jnp.asarray(error.size, jnp.float32)}
    elif modality == "depth":
        if raw_target is None:
            raise ValueError("depth metrics need raw_target, the unstandardised depth")
        raw = jnp.asarray(raw_target, jnp.float32)
        mean, scale = inputs.depth_statistics(raw)
        predicted = output[..., 0] * scale + mean
        valid = raw > 0
        rel = jnp.where(valid, jnp.abs(predicted - raw) / jnp.where(valid, raw, 1.0), 0.0)
        stats |= {"sum_abs_rel": rel.sum(), "num_valid": valid.sum().astype(jnp.float32)}
    if modality == "normal":
        a = output / jnp.maximum(jnp.linalg.norm(output, axis=-1, keepdims=True), 1e-6)
        b = target / jnp.maximum(jnp.linalg.norm(target, axis=-1, keepdims=True), 1e-6)
        angle = jnp.degrees(jnp.arccos(jnp.clip((a * b).sum(-1), -1.0, 1.0)))
        valid = jnp.linalg.norm(target, axis=-1) > 1e-3
        stats |= {"sum_angle": jnp.where(valid, angle, 0.0).sum(),
                  "num_within_11_25": (valid & (angle < 11.25)).sum().astype(jnp.float32),
                  "num_valid": valid.sum().astype(jnp.float32)}
    elif modality == "semseg":
        if num_labels is None:
            raise ValueError("semseg metrics need num_labels")
        predicted = output.argmax(-1).reshape(-1)
        truth = target.reshape(-1).astype(jnp.int32)
        weight = (truth != ignore_index).astype(jnp.float32)
        stats["confusion"] = jnp.zeros((num_labels, num_labels), jnp.float32).at[truth, predicted].add(weight)
    return stats


def add_stats(a: dict, b: dict) -> dict:
    return jax.tree.map(jnp.add, a, b)


def summarize(stats: dict, ignore_index: int = SEMSEG_IGNORE_INDEX) -> dict[str, float]:
    """The reported numbers of accumulated statistics."""
    stats = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), stats)
    out = {"codebook_usage": codebook_usage(stats["token_histogram"]),
           "perplexity": perplexity(stats["token_histogram"])}
    if "sum_squared_error" in stats:
        mse = stats["sum_squared_error"] / stats["num_values"]
        out |= {"psnr": 10.0 * jnp.log10(1.0 / mse), "mse": mse,
                "mae": stats["sum_abs_error"] / stats["num_values"]}
    if "sum_abs_rel" in stats:
        out["abs_rel"] = stats["sum_abs_rel"] / stats["num_valid"]
    if "sum_angle" in stats:
        out |= {"mean_angular_error": stats["sum_angle"] / stats["num_valid"],
                "within_11_25": stats["num_within_11_25"] / stats["num_valid"]}
    if "confusion" in stats:
        confusion = stats["confusion"]
        true_positive = jnp.diag(confusion)
        union = confusion.sum(0) + confusion.sum(1) - true_positive
        classes = (union > 0) & (jnp.arange(confusion.shape[0]) != ignore_index)
        iou = jnp.where(classes, true_positive / jnp.where(union > 0, union, 1.0), 0.0)
        out |= {"pixel_accuracy": true_positive.sum() / confusion.sum(),
                "miou": iou.sum() / jnp.maximum(classes.sum(), 1)}
    return {k: float(v) for k, v in out.items()}
