"""Per-example preparation of image modalities for masking, as ml-4m's modality transforms do it.

One crop index per example is shared by every modality (ml-4m's PreTokenizedImageAugmenter):
pre-tokenized grids take that row, RGB pixels are cut to that crop (top, left, height, width, hflip)
and resized. (Boxes, captions and the other sequences are cropped and tokenized by
fourm_jax.text's formats.) Crop settings are drawn here too (`sample_crop_settings`, as ml-4m's
save_vq_tokens.py), and `crop_image` cuts any raw image-like modality to one, for pretokenization
and tokenizer training. All checks raise `DataError` naming the field; the pipeline adds the file
and record index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from fourm_jax.data.errors import DataError
from fourm_jax.data.records import CROP_SETTINGS_FIELD, IMAGE_SIZE_FIELD

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_PIXEL_SCALE = (1 / (255 * IMAGENET_STD)).astype(np.float32)[:, None, None]
_PIXEL_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)[:, None, None]


def crop_settings(record: Mapping[str, Any], token_fields: list[str]) -> np.ndarray | None:
    """The record's int [n_crops, 5] crop settings, checked against its token grids' crop count."""
    settings = record.get(CROP_SETTINGS_FIELD)
    if settings is not None:
        settings = np.asarray(settings)
        if settings.ndim != 2 or settings.shape[1] != 5 or settings.dtype.kind not in "iu" \
                or len(settings) == 0:
            raise DataError(f"expected integer crop settings of shape [n_crops >= 1, 5], got shape "
                            f"{settings.shape} dtype {settings.dtype}", field=CROP_SETTINGS_FIELD)
        if settings[:, :4].min() < 0 or settings[:, 2:4].min() == 0:
            raise DataError(f"crop settings need top, left >= 0 and height, width > 0, got "
                            f"{settings.tolist()}", field=CROP_SETTINGS_FIELD)
    counts = [len(record[field]) for field in token_fields
              if isinstance(record.get(field), np.ndarray) and record[field].ndim == 2]
    if settings is not None:
        counts.append(len(settings))
    if counts and min(counts) != max(counts):
        named = {field: len(record[field]) for field in token_fields if field in record}
        if settings is not None:
            named[CROP_SETTINGS_FIELD] = len(settings)
        raise DataError(f"modalities disagree on the number of crops: {named}",
                        field=next(iter(named)))
    return settings


def crop_count(record: Mapping[str, Any], settings: np.ndarray | None,
               token_fields: list[str]) -> int:
    if settings is not None:
        return len(settings)
    for field in token_fields:
        value = record.get(field)
        if isinstance(value, np.ndarray) and value.ndim == 2:
            return len(value)
    return 1


_UNSIGNED = {np.dtype(np.int16): np.uint16, np.dtype(np.int32): np.uint32,
             np.dtype(np.int64): np.uint64}


def check_vocabulary(ids: np.ndarray, vocab_size: int, field: str) -> None:
    """Raises naming the first id outside [0, vocab_size)."""
    if not ids.size:
        return
    unsigned = _UNSIGNED.get(ids.dtype)  # negative ids wrap to huge unsigned ones: one reduction
    if unsigned is not None:
        bad = ids.view(unsigned).max() >= vocab_size
    else:
        bad = ids.min() < 0 or ids.max() >= vocab_size
    if bad:
        position = int(np.flatnonzero((ids < 0) | (ids >= vocab_size))[0])
        raise DataError(f"token id {int(ids.flat[position])} at position {position} is outside "
                        f"the vocabulary [0, {vocab_size})", field=field)


def token_row(value: Any, crop: int, num_tokens: int, vocab_size: int, field: str) -> np.ndarray:
    """Row `crop` of a pre-tokenized grid int [n_crops, num_tokens] (or a single row [N]), checked
    against the vocabulary."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iu":
        raise DataError(f"expected an integer token array, got {type(value).__name__} "
                        f"{getattr(value, 'dtype', '')}".rstrip(), field=field)
    if value.ndim == 1:
        value = value[None]
    if value.ndim != 2 or value.shape[1] != num_tokens:
        raise DataError(f"expected token ids of shape [n_crops, {num_tokens}], got {value.shape}",
                        field=field)
    row = value[crop]
    check_vocabulary(row, vocab_size, field)
    return row


def original_size(record: Mapping[str, Any], image_field: str | None) -> tuple[int, int] | None:
    """(height, width) of the original image that crop settings refer to, if the record knows it."""
    size = record.get(IMAGE_SIZE_FIELD)
    if size is not None:
        size = np.asarray(size)
        if size.shape != (2,) or (size <= 0).any():
            raise DataError(f"expected (height, width) > 0, got {size.tolist()}",
                            field=IMAGE_SIZE_FIELD)
        return int(size[0]), int(size[1])
    image = record.get(image_field) if image_field else None
    if isinstance(image, np.ndarray) and image.ndim >= 2:
        return image.shape[0], image.shape[1]
    return None


def full_image_crop(height: int, width: int) -> np.ndarray:
    """ml-4m's centre crop: the largest centred square (integer offsets), no flip."""
    side = min(height, width)
    return np.array([(height - side) // 2, (width - side) // 2, side, side, 0])


def random_resized_crop(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop.get_params draws them: area share in
    `scale`, log-uniform aspect ratio in `ratio`, ten tries, else the central crop with the
    aspect ratio clamped to `ratio`."""
    area = height * width
    log_ratio = np.log(ratio)
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(*log_ratio))
        w = int(round(np.sqrt(target_area * aspect)))
        h = int(round(np.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def sample_crop_settings(rng: np.random.Generator, height: int, width: int, n_crops: int,
                         min_scale: float = 0.8, hflip: float = 0.5) -> np.ndarray:
    """int32 [n_crops, 5] (top, left, h, w, hflip) as ml-4m's save_vq_tokens.py draws them: row 0
    the centre crop without flip, the others random resized crops (scale [min_scale, 1], aspect
    3/4..4/3) flipped with probability `hflip`."""
    settings = [full_image_crop(height, width)]
    for _ in range(1, n_crops):
        top, left, h, w = random_resized_crop(rng, height, width, (min_scale, 1.0))
        settings.append(np.array([top, left, h, w, int(rng.random() < hflip)]))
    return np.stack(settings).astype(np.int32)


# How each raw modality is resized (ml-4m: PIL's default bicubic, nearest for class ids).
_RESAMPLE = {"rgb": Image.Resampling.BICUBIC, "image": Image.Resampling.BICUBIC,
             "normal": Image.Resampling.BICUBIC, "depth": Image.Resampling.BICUBIC,
             "semseg": Image.Resampling.NEAREST}


def _check_crop(crop, height: int, width: int, field: str) -> tuple[int, int, int, int, int]:
    top, left, h, w, flip = (int(v) for v in crop)
    if top < 0 or left < 0 or h <= 0 or w <= 0 or top + h > height or left + w > width:
        raise DataError(f"crop (top {top}, left {left}, height {h}, width {w}) exceeds the "
                        f"{height}x{width} image", field=field)
    return top, left, h, w, flip


def crop_image(modality: str, image: np.ndarray, crop: np.ndarray, size: int, field: str) -> np.ndarray:
    """One raw image-like modality cut to a crop (top, left, h, w, hflip), resized to size x size
    (crop first, then resize, as ml-4m) and flipped; the dtype and layout stay raw:

        rgb, image, normal   uint8 [H, W, C]   bicubic; a flip also negates normals' x (R <- 255 - R)
        depth                [H, W] float or uint16 (resized in float32, cast back)   bicubic
        semseg               uint8 [H, W] (or [H, W, 1]) class ids   nearest
    """
    if modality not in _RESAMPLE:
        raise ValueError(f"{field}: modality {modality!r} has no crop rule; known: {sorted(_RESAMPLE)}")
    image = np.asarray(image)
    if modality == "semseg" and image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    expected_rank = 3 if modality in ("rgb", "image", "normal") else 2
    if image.ndim != expected_rank:
        raise DataError(f"expected a {modality} image of rank {expected_rank}, got shape {image.shape}",
                        field=field)
    height, width = image.shape[:2]
    top, left, h, w, flip = _check_crop(crop, height, width, field)
    patch = image[top:top + h, left:left + w]
    if (h, w) != (size, size):
        if modality == "depth":
            resized = Image.fromarray(patch.astype(np.float32)).resize((size, size), _RESAMPLE[modality])
            patch = np.asarray(resized).astype(image.dtype)
        else:
            patch = np.asarray(Image.fromarray(patch).resize((size, size), _RESAMPLE[modality]))
    if flip:
        patch = patch[:, ::-1]
        if modality == "normal":
            patch = patch.copy()
            patch[..., 0] = 255 - patch[..., 0]
    return np.ascontiguousarray(patch)


def rgb_pixels(image: Any, crop: np.ndarray | None, size: int, field: str) -> np.ndarray:
    """float32 [3, size, size], ImageNet-normalised, of the crop (top, left, h, w, flip) resized
    bicubically; without crop settings, the centre square."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise DataError(f"expected a uint8 image [H, W] or [H, W, C], got {type(image).__name__} "
                        f"{getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}", field=field)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    if image.shape[2] not in (3, 4):
        raise DataError(f"expected 3 or 4 channels, got {image.shape[2]}", field=field)
    height, width = image.shape[:2]
    pixels = crop_image("rgb", image[..., :3], full_image_crop(height, width) if crop is None else crop,
                        size, field)
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32)
    chw *= _PIXEL_SCALE  # (x / 255 - mean) / std as one multiply-add
    chw += _PIXEL_OFFSET
    return chw
