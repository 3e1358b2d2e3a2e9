import numpy as np
import pytest
from PIL import Image

from fourm_jax.data import transforms
from fourm_jax.data.errors import DataError


def test_crop_settings_are_checked_against_the_token_grids():
    record = {"crop_settings": np.zeros((3, 5), np.int32) + [0, 0, 4, 4, 0],
              "tok_a": np.zeros((3, 196), np.int16), "tok_b": np.zeros((3, 196), np.int16)}
    assert transforms.crop_settings(record, ["tok_a", "tok_b"]).shape == (3, 5)
    assert transforms.crop_count(record, record["crop_settings"], ["tok_a"]) == 3
    record["tok_b"] = np.zeros((2, 196), np.int16)
    with pytest.raises(DataError, match="disagree on the number of crops"):
        transforms.crop_settings(record, ["tok_a", "tok_b"])
    with pytest.raises(DataError, match=r"shape \[n_crops >= 1, 5\]") as info:
        transforms.crop_settings({"crop_settings": np.zeros((3, 4), np.int32)}, [])
    assert info.value.field == "crop_settings"
    with pytest.raises(DataError, match="height, width > 0"):
        transforms.crop_settings({"crop_settings": np.array([[0, 0, 0, 4, 0]])}, [])
    assert transforms.crop_count({"tok_a": np.zeros((5, 3), np.int16)}, None, ["tok_a"]) == 5
    assert transforms.crop_count({}, None, []) == 1


def test_token_row_checks_dtype_shape_and_vocabulary():
    grid = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.testing.assert_array_equal(transforms.token_row(grid, 2, 4, 12, "tok"), [8, 9, 10, 11])
    np.testing.assert_array_equal(transforms.token_row(grid[0], 0, 4, 12, "tok"), [0, 1, 2, 3])
    with pytest.raises(DataError, match=r"shape \[n_crops, 5\], got \(3, 4\)") as info:
        transforms.token_row(grid, 0, 5, 12, "tok_x")
    assert info.value.field == "tok_x"
    with pytest.raises(DataError, match="expected an integer token array, got ndarray float32"):
        transforms.token_row(grid.astype(np.float32), 0, 4, 12, "tok")
    with pytest.raises(DataError, match=r"token id 10 at position 2 is outside the vocabulary "
                                        r"\[0, 10\)"):
        transforms.token_row(grid, 2, 4, 10, "tok")
    with pytest.raises(DataError, match=r"token id -1 at position 0"):
        transforms.token_row(-grid - 1, 0, 4, 10, "tok")


def test_rgb_pixels_crop_resize_flip_and_normalise():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), np.uint8)
    crop = np.array([3, 5, 20, 24, 1])
    pixels = transforms.rgb_pixels(image, crop, 16, "rgb")
    expected = np.asarray(Image.fromarray(image[3:23, 5:29]).resize((16, 16), Image.Resampling.BICUBIC))
    expected = (expected[:, ::-1] / 255.0 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD
    assert pixels.shape == (3, 16, 16) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, expected.transpose(2, 0, 1), atol=1e-5)
    centre = transforms.rgb_pixels(image, None, 30, "rgb")  # no crop settings: centre square
    expected = (image[:, 5:35] / 255.0 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD
    np.testing.assert_allclose(centre, expected.transpose(2, 0, 1), atol=1e-5)
    gray = transforms.rgb_pixels(np.full((8, 8), 255, np.uint8), None, 8, "rgb")
    np.testing.assert_allclose(gray[:, 0, 0], (1 - transforms.IMAGENET_MEAN) / transforms.IMAGENET_STD,
                               rtol=1e-6)
    with pytest.raises(DataError, match="exceeds the 30x40 image"):
        transforms.rgb_pixels(image, np.array([20, 0, 20, 20, 0]), 16, "rgb")
    with pytest.raises(DataError, match="expected a uint8 image") as info:
        transforms.rgb_pixels(image.astype(np.float32), None, 16, "rgb")
    assert info.value.field == "rgb"


def test_original_size():
    assert transforms.original_size({"image_size": np.array([7, 9])}, None) == (7, 9)
    assert transforms.original_size({"rgb": np.zeros((5, 6, 3), np.uint8)}, "rgb") == (5, 6)
    assert transforms.original_size({}, "rgb") is None
    with pytest.raises(DataError, match="height, width"):
        transforms.original_size({"image_size": np.array([0, 9])}, None)


def test_crop_settings_follow_save_vq_tokens():
    """Row 0 the centre square without flip; the others random resized crops inside the image with
    ml-4m's scale and aspect bounds, flipped about half of the time; a pure function of the rng."""
    settings = transforms.sample_crop_settings(np.random.default_rng(0), 60, 80, 400, min_scale=0.8)
    assert settings.dtype == np.int32 and settings.shape == (400, 5)
    np.testing.assert_array_equal(settings[0], [0, 10, 60, 60, 0])
    top, left, h, w, flip = settings[1:].T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 60).all() and (left + w <= 80).all()
    share = h * w / (60 * 80)
    assert share.min() > 0.8 - 0.03 and share.max() <= 1.0 + 0.03  # rounding of h and w
    assert (w / h).min() > 3 / 4 - 0.05 and (w / h).max() < 4 / 3 + 0.05
    assert set(flip) == {0, 1} and 0.4 < flip.mean() < 0.6
    again = transforms.sample_crop_settings(np.random.default_rng(0), 60, 80, 400, min_scale=0.8)
    np.testing.assert_array_equal(settings, again)


def test_random_resized_crop_falls_back_to_a_clamped_centre_crop():
    # A 10x200 strip admits no crop with aspect <= 4/3 and area >= half: torchvision's fallback.
    assert transforms.random_resized_crop(np.random.default_rng(0), 10, 200, (0.5, 1.0)) == (0, 93, 10, 13)


def test_crop_image_per_modality():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    full = np.array([0, 0, 8, 8, 0])
    np.testing.assert_array_equal(transforms.crop_image("rgb", rgb, full, 8, "rgb"), rgb)
    flipped = transforms.crop_image("rgb", rgb, full + [0, 0, 0, 0, 1], 8, "rgb")
    np.testing.assert_array_equal(flipped, rgb[:, ::-1])
    normal = transforms.crop_image("normal", rgb, full + [0, 0, 0, 0, 1], 8, "normal")
    np.testing.assert_array_equal(normal[..., 0], 255 - rgb[:, ::-1, 0])  # x negated
    np.testing.assert_array_equal(normal[..., 1:], rgb[:, ::-1, 1:])
    expected = np.asarray(Image.fromarray(rgb[2:6, 1:7]).resize((8, 8), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(transforms.crop_image("rgb", rgb, np.array([2, 1, 4, 6, 0]), 8, "rgb"),
                                  expected)
    labels = rng.integers(0, 5, (8, 8, 1), dtype=np.uint8)
    up = transforms.crop_image("semseg", labels, np.array([0, 0, 4, 4, 0]), 8, "semseg")
    np.testing.assert_array_equal(up, np.repeat(np.repeat(labels[:4, :4, 0], 2, 0), 2, 1))  # nearest
    depth = np.full((8, 8), 2.5, np.float32)
    resized = transforms.crop_image("depth", depth, np.array([1, 1, 5, 5, 1]), 16, "depth")
    assert resized.dtype == np.float32 and resized.shape == (16, 16)
    np.testing.assert_allclose(resized, 2.5, rtol=1e-6)
    with pytest.raises(DataError, match="exceeds the 8x8 image") as info:
        transforms.crop_image("depth", depth, np.array([4, 0, 5, 5, 0]), 8, "depth")
    assert info.value.field == "depth"
    with pytest.raises(DataError, match="rank 3"):
        transforms.crop_image("rgb", depth, full, 8, "rgb")
