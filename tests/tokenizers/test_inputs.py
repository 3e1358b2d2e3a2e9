"""Per-modality input handling and input validation."""

import numpy as np
import pytest
from PIL import Image

from fourm_jax.tokenizers import NetConfig, TokenizerConfig, inputs

VIT = NetConfig("vit", 32, 1, 2)


def config(modality="rgb", **kwargs):
    defaults = dict(modality=modality, image_size=32, patch_size=8, encoder=VIT, decoder=VIT,
                    codebook_size=16, latent_dim=8)
    return TokenizerConfig(**(defaults | kwargs))


def test_image_normalisation():
    pixels = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(inputs.normalize("rgb", pixels), [-1.0, -0.6, 1.0], atol=1e-6)
    np.testing.assert_allclose(inputs.denormalize_image(np.array([-1.5, 0.0, 1.0])), [0.0, 0.5, 1.0])


def test_depth_standardisation_by_the_formula():
    rng = np.random.default_rng(0)
    raw = rng.integers(1000, 60000, (2, 10, 10)).astype(np.uint16)
    got = np.asarray(inputs.normalize("depth", raw))
    assert got.shape == (2, 10, 10, 1)
    for image, out in zip(raw, got, strict=True):
        depth = image.astype(np.float64) / 65535
        kept = np.sort(depth.ravel())[10:90]  # [int(0.1 n), int(0.9 n)) of n = 100
        expected = (depth - kept.mean()) / np.sqrt(kept.var(ddof=1) + 1e-6)
        np.testing.assert_allclose(out[..., 0], expected, rtol=1e-4, atol=1e-4)


def test_semseg_shift_wraps_ignore_to_zero():
    ids = np.array([0, 5, 254, 255], np.uint8)
    np.testing.assert_array_equal(inputs.normalize("semseg", ids), [1, 6, 255, 0])


def test_hflip_negates_the_x_component_of_normals():
    normals = np.zeros((1, 2, 3, 3), np.float32)
    normals[0, 0, 0] = [0.5, 0.2, -0.1]
    flipped = np.asarray(inputs.hflip("normal", normals))
    np.testing.assert_allclose(flipped[0, 0, 2], [-0.5, 0.2, -0.1])
    np.testing.assert_array_equal(np.asarray(inputs.hflip("rgb", normals))[0, 0, 2], normals[0, 0, 0])
    np.testing.assert_array_equal(inputs.hflip("semseg", np.array([[[1, 2, 3]]])), [[[3, 2, 1]]])


def test_check_input_accepts_a_good_batch():
    inputs.check_input(config(), np.zeros((2, 32, 32, 3), np.float32), "batch", size=(32, 32))
    inputs.check_input(config("semseg", n_labels=5, n_channels=4), np.zeros((2, 16, 16), np.int32), "batch")


@pytest.mark.parametrize("x, size, message", [
    (np.zeros((2, 32, 32, 1), np.float32), None, r"0001.png: expected rgb input of shape \[B, H, W, 3\]"),
    (np.zeros((2, 16, 16, 3), np.float32), (32, 32), "0001.png: expected size 32x32, got 16x16"),
    (np.zeros((2, 20, 20, 3), np.float32), None, "0001.png: size 20x20 is not divisible by the patch size 8"),
    (np.full((1, 8, 8, 3), np.nan, np.float32), None, "0001.png: contains 192 NaN"),
])
def test_check_input_names_the_file(x, size, message):
    with pytest.raises(ValueError, match=message):
        inputs.check_input(config(), x, "images/0001.png", size=size)


def test_check_input_semseg_ids():
    semseg = config("semseg", n_labels=5, n_channels=4)
    with pytest.raises(ValueError, match=r"batch\['semseg'\]: class ids must lie in \[0, 5\), got \[0, 7\]"):
        inputs.check_input(semseg, np.pad(np.array([[[0, 7]]]), ((0, 0), (0, 7), (0, 6))), "batch['semseg']")
    with pytest.raises(ValueError, match="integer class ids"):
        inputs.check_input(semseg, np.zeros((1, 8, 8), np.float32), "batch['semseg']")


def test_read_files(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(inputs.read_file(tmp_path / "rgb.png", "rgb"), rgb)
    depth = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(depth).save(tmp_path / "depth.png")
    got = inputs.read_file(tmp_path / "depth.png", "depth")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, depth)
    np.save(tmp_path / "feat.npy", np.ones((2, 2, 4), np.float32))
    assert inputs.read_file(tmp_path / "feat.npy", "feature_map").shape == (2, 2, 4)


def test_unreadable_or_wrong_files_are_named(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png: cannot read the image"):
        inputs.read_file(tmp_path / "broken.png", "rgb")
    with pytest.raises(ValueError, match="missing.png: cannot read the image"):
        inputs.read_file(tmp_path / "missing.png", "rgb")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "colour_depth.png")
    with pytest.raises(ValueError, match="colour_depth.png: expected a single-channel depth image"):
        inputs.read_file(tmp_path / "colour_depth.png", "depth")
