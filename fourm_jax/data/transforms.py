"""Per-example preparation of image modalities for masking, as ml-4m's modality transforms do it.

One crop index per example is shared by every modality (ml-4m's PreTokenizedImageAugmenter):
pre-tokenized grids take that row, RGB pixels are cut to that crop (top, left, height, width, hflip)
and resized. (Boxes, captions and the other sequences are cropped and tokenized by
fourm_jax.text's formats.) All checks raise `DataError` naming the field; the pipeline adds the
file and record index.
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
    top, left, h, w, flip = (int(v) for v in (full_image_crop(height, width) if crop is None else crop))
    if top + h > height or left + w > width:
        raise DataError(f"crop (top {top}, left {left}, height {h}, width {w}) exceeds the "
                        f"{height}x{width} image", field=field)
    # Crop, then resize (as ml-4m): the filter sees only the crop, unlike resize(box=...).
    pixels = np.asarray(Image.fromarray(image[top:top + h, left:left + w, :3]).resize(
        (size, size), Image.Resampling.BICUBIC))
    if flip:
        pixels = pixels[:, ::-1]
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32)
    chw *= _PIXEL_SCALE  # (x / 255 - mean) / std as one multiply-add
    chw += _PIXEL_OFFSET
    return chw
