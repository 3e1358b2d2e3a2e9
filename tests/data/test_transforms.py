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


def test_token_row_checks_dtype_and_shape():
    grid = np.arange(12, dtype=np.int16).reshape(3, 4)
    np.testing.assert_array_equal(transforms.token_row(grid, 2, 4, "tok"), [8, 9, 10, 11])
    np.testing.assert_array_equal(transforms.token_row(grid[0], 0, 4, "tok"), [0, 1, 2, 3])
    with pytest.raises(DataError, match=r"shape \[n_crops, 5\], got \(3, 4\)") as info:
        transforms.token_row(grid, 0, 5, "tok_x")
    assert info.value.field == "tok_x"
    with pytest.raises(DataError, match="expected an integer token array, got ndarray float32"):
        transforms.token_row(grid.astype(np.float32), 0, 4, "tok")


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


def test_detections_are_cropped_flipped_filtered_and_sorted():
    # Original image 100 (H) x 200 (W); crop top 10, left 50, 50 x 100 pixels.
    value = {"boxes": np.array([[0.25, 0.10, 0.50, 0.60],    # inside: -> (0, 0, 0.5, 1)
                                [0.30, 0.30, 0.40, 0.40],    # inside: -> (0.1, 0.4, 0.3, 0.6)
                                [0.00, 0.00, 0.10, 0.05],    # outside: dropped
                                [0.70, 0.50, 0.90, 0.90],    # partly: -> (0.9, 0.8, 1, 1)
                                [0.30, 0.30, 0.40, 0.40]]),  # score below 0.6: dropped
             "class_name": ["dog", "cat", "car", "person", "cup"],
             "score": np.array([0.9, 0.6, 0.99, 0.7, 0.59])}
    crop = np.array([10, 50, 50, 100, 0])
    out = transforms.detections(value, crop, (100, 200), "det")
    np.testing.assert_allclose(out["boxes"], [[0, 0, 0.5, 1], [0.1, 0.4, 0.3, 0.6], [0.9, 0.8, 1, 1]],
                               atol=1e-9)
    assert out["class_name"] == ["dog", "cat", "person"]
    flipped = transforms.detections(value, np.array([10, 50, 50, 100, 1]), (100, 200), "det")
    # flipped: (1 - xmax, ymin, 1 - xmin, ymax), then re-sorted by xmin^2 + ymin^2
    # (sort keys 0.25, 0.64, 0.65)
    np.testing.assert_allclose(flipped["boxes"], [[0.5, 0, 1, 1], [0, 0.8, 0.1, 1],
                                                  [0.7, 0.4, 0.9, 0.6]], atol=1e-9)
    assert flipped["class_name"] == ["dog", "person", "cat"]
    uncropped = transforms.detections(value, None, None, "det")
    assert uncropped["class_name"] == ["car", "dog", "cat", "person"]  # sorted, threshold applied
    with pytest.raises(DataError, match="needs the original image size") as info:
        transforms.detections(value, crop, None, "det")
    assert info.value.field == "det"
    with pytest.raises(DataError, match="2 boxes, 1 class names"):
        transforms.detections({"boxes": np.zeros((2, 4)), "class_name": ["a"],
                               "score": np.ones(2)}, None, None, "det")
    empty = transforms.detections({"boxes": np.zeros((0, 4)), "class_name": [],
                                   "score": np.zeros(0)}, crop, (100, 200), "det")
    assert empty["boxes"].shape == (0, 4) and empty["class_name"] == []


def test_caption_choice():
    rng = np.random.default_rng(0)
    captions = ["zero", "one", "two"]
    assert transforms.caption_text(captions, 2, 3, True, rng, "caption") == "two"
    picks = {transforms.caption_text(captions, 2, 4, True, rng, "caption") for _ in range(50)}
    assert picks == set(captions)  # not aligned with the 4 crops: a random caption
    assert transforms.caption_text("plain", 0, 1, True, rng, "caption") == "plain"
    with pytest.raises(DataError, match="empty caption") as info:
        transforms.caption_text("  ", 0, 1, True, rng, "caption")
    assert info.value.field == "caption"
    with pytest.raises(DataError, match="empty caption list"):
        transforms.caption_text([], 0, 1, True, rng, "caption")


def test_original_size():
    assert transforms.original_size({"image_size": np.array([7, 9])}, None) == (7, 9)
    assert transforms.original_size({"rgb": np.zeros((5, 6, 3), np.uint8)}, "rgb") == (5, 6)
    assert transforms.original_size({}, "rgb") is None
    with pytest.raises(DataError, match="height, width"):
        transforms.original_size({"image_size": np.array([0, 9])}, None)
