"""Reconstruction losses against their formulas (ml-4m's compute_reconst_loss)."""

import numpy as np
import pytest

from fourm_jax.tokenizers import losses

RNG = np.random.default_rng(0)
OUT = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32) * 2
TARGET = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
DIFF = OUT - TARGET


def cosine(a, b, axis):
    return (a * b).sum(axis) / (np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis))


@pytest.mark.parametrize("name, expected", [
    ("mse", np.mean((OUT - TARGET) ** 2)),
    ("l1", np.mean(np.abs(OUT - TARGET))),
    ("smooth_l1", np.mean(np.where(np.abs(DIFF) < 1, 0.5 * DIFF**2, np.abs(DIFF) - 0.5))),
    ("cosine", 1 - cosine(OUT.reshape(2, 12, 5), TARGET.reshape(2, 12, 5), 1).mean()),
    ("cosine_1d", 1 - cosine(OUT, TARGET, -1).mean()),
])
def test_regression_losses(name, expected):
    np.testing.assert_allclose(losses.reconstruction_loss(name, OUT, TARGET), expected, rtol=1e-5)


def test_cross_entropy_over_every_class():
    ids = RNG.integers(0, 5, (2, 3, 4))
    log_probs = OUT - np.log(np.exp(OUT).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, ids[..., None], -1).mean()
    np.testing.assert_allclose(losses.reconstruction_loss("cross_entropy", OUT, ids), expected, rtol=1e-5)


def test_binary_cross_entropy_as_ml4m_writes_it():
    mask = (RNG.random((2, 3, 4, 1)) > 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-OUT[..., :1]))
    logits = np.stack([p, 1 - p], -1)
    log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(np.stack([mask, 1 - mask], -1) * log_softmax).sum(-1).mean()
    got = losses.reconstruction_loss("binary_cross_entropy", OUT[..., :1], mask)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_unknown_loss():
    with pytest.raises(ValueError, match="loss_fn 'huber'"):
        losses.reconstruction_loss("huber", OUT, TARGET)
