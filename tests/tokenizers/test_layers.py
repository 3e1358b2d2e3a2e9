"""Layers: PyTorch's bicubic resampling, the sin-cos table, patch packing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fourm_jax.tokenizers import layers, vit

FIXTURES = __import__("pathlib").Path(__file__).parents[1] / "fixtures" / "tokenizers"


def test_bicubic_upsampling_matches_pytorch_by_hand():
    # F.interpolate([0, 1], size=4, mode='bicubic', align_corners=False) by hand, A = -0.75: the
    # kernel weights at distances 0.25, 0.75, 1.25, 1.75 are 0.87890625, 0.26171875, -0.10546875,
    # -0.03515625. Output 1 sits at source 0.25: taps -1, 0 (-> 0) and 1, 2 (-> 1, clamped), so it is
    # 0.26171875 - 0.03515625; output 0 at -0.25 only sees input 1 through the tap at distance 1.25.
    matrix = layers.torch_bicubic_matrix(2, 4)
    np.testing.assert_allclose(matrix @ np.array([0.0, 1.0]), [-0.10546875, 0.2265625, 0.7734375, 1.10546875],
                               atol=1e-12)


def test_bicubic_rows_sum_to_one_and_identity_at_same_size():
    for n_in, n_out in [(28, 14), (4, 6), (4, 3), (7, 7)]:
        np.testing.assert_allclose(layers.torch_bicubic_matrix(n_in, n_out).sum(1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(layers.torch_bicubic_matrix(5, 5), np.eye(5))


def test_jax_image_resize_is_not_pytorch_bicubic():
    """The reason resize_pos_emb exists: jax.image.resize uses another kernel (and antialiases)."""
    table = jnp.asarray(layers.sincos_2d(8, 8, 16))
    ours = layers.resize_pos_emb(table, 4, 4)
    theirs = jax.image.resize(table, (4, 4, 16), "bicubic")
    assert not np.allclose(ours, theirs, atol=1e-3)


def test_sincos_table_matches_ml4m():
    """ml-4m's own 4x4, 64-d table, stored in a tokenizer fixture."""
    stored = np.load(FIXTURES / "vqvae_vit_depth_like" / "buffers.npz")["encoder.pos_emb"][0]  # [D, h, w]
    np.testing.assert_allclose(layers.sincos_2d(4, 4, 64), stored.transpose(1, 2, 0), atol=1e-6)


def test_patchify_round_trip_and_order():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    patches = vit.patchify(x, 2)
    assert patches.shape == (2, 2, 3, 12)
    np.testing.assert_array_equal(patches[0, 0, 1], x[0, 0:2, 2:4].reshape(-1))  # (ph, pw, c) order
    np.testing.assert_array_equal(vit.unpatchify(patches, 2), x)


def test_layer_norm_uses_biased_variance():
    x = jnp.array([[1.0, 2.0, 3.0, 6.0]])
    got = layers.layer_norm({"scale": jnp.ones(4), "bias": jnp.zeros(4)}, x, eps=0.0)
    np.testing.assert_allclose(got, (x - 3.0) / np.sqrt(3.5), rtol=1e-6)


def test_sincos_needs_width_divisible_by_four():
    with pytest.raises(ValueError, match="divisible by 4"):
        layers.sincos_2d(2, 2, 6)
