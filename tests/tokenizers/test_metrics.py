"""Reconstruction metrics on cases with known answers."""

import numpy as np
import pytest

from fourm_jax.tokenizers import inputs, metrics

NO_TOKENS = np.zeros((1,), np.int32)


def summarize(modality, output, target, tokens=NO_TOKENS, codebook_size=4, **kwargs):
    stats = metrics.reconstruction_stats(modality, output, target, tokens, codebook_size, **kwargs)
    return metrics.summarize(stats)


def test_psnr_from_pooled_mse():
    target = np.zeros((2, 4, 4, 3), np.float32)
    output = target + 0.2  # 0.1 on [0, 1] images: MSE 0.01 -> 20 dB
    out = summarize("rgb", output, target)
    assert out["psnr"] == pytest.approx(20.0, abs=1e-4) and out["mse"] == pytest.approx(0.01, rel=1e-5)
    # Pooled over batches: two batches with MSE 0.01 and 0.04 give MSE 0.025, not the mean of PSNRs.
    stats = metrics.add_stats(metrics.reconstruction_stats("rgb", output, target, NO_TOKENS, 4),
                              metrics.reconstruction_stats("rgb", target + 0.4, target, NO_TOKENS, 4))
    assert metrics.summarize(stats)["psnr"] == pytest.approx(10 * np.log10(1 / 0.025), abs=1e-4)


def test_depth_absolute_relative_error():
    raw = np.random.default_rng(0).uniform(1.0, 5.0, (2, 8, 8)).astype(np.float32)
    standardized = np.asarray(inputs.standardize_depth(raw))[..., None]
    exact = summarize("depth", standardized, standardized, raw_target=raw)
    assert exact["abs_rel"] == pytest.approx(0, abs=1e-5)
    # A prediction that is 10% too deep everywhere: standardised with the target's statistics.
    mean, scale = (np.asarray(a) for a in inputs.depth_statistics(raw))
    too_deep = ((raw * 1.1 - mean) / scale)[..., None]
    off = summarize("depth", too_deep, standardized, raw_target=raw)
    assert off["abs_rel"] == pytest.approx(0.1, rel=1e-3)


def test_mean_angular_error():
    up = np.zeros((1, 2, 2, 3), np.float32)
    up[..., 2] = 1
    side = np.zeros_like(up)
    side[..., 0] = 0.5
    tilted = up.copy()
    tilted[0, 0, 0] = [np.sin(np.radians(10)), 0, np.cos(np.radians(10))]
    assert summarize("normal", side, up)["mean_angular_error"] == pytest.approx(90, abs=1e-3)
    out = summarize("normal", tilted, up)
    assert out["mean_angular_error"] == pytest.approx(2.5, abs=1e-2) and out["within_11_25"] == 1.0


def test_pixel_accuracy_and_miou():
    truth = np.array([[[0, 1, 1, 2, 2, 2]]])
    predicted = np.array([[[2, 1, 2, 2, 2, 1]]])
    logits = np.eye(3, dtype=np.float32)[predicted]
    out = summarize("semseg", logits, truth, num_labels=3)
    # Ignoring class 0: 5 pixels, 3 right. IoU(1) = 1/3 (tp 1, union 3), IoU(2) = 2/4.
    assert out["pixel_accuracy"] == pytest.approx(3 / 5)
    assert out["miou"] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_codebook_usage_and_perplexity():
    out = summarize("rgb", np.zeros((1, 1, 1, 3)), np.zeros((1, 1, 1, 3)), tokens=np.array([[0, 1], [2, 3]]),
                    codebook_size=8)
    assert out["codebook_usage"] == 0.5 and out["perplexity"] == pytest.approx(4.0)
