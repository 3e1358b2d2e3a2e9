"""Synthetic pre-tokenized datasets in our format, shaped like ml-4m's 4M-7 / 4M-21 training data.

For benchmarks and tests where no real pre-tokenized data exists: token grids with each modality's
vocabulary size, ml-4m-style crop settings (crop 0 the centre square, the others random resized
crops with flips), the original image size, one caption per crop, detections, and optionally the
RGB image (JPEG). Values are random but a pure function of (seed, index).
"""

from __future__ import annotations

import functools
import io
import math
import os
import pathlib
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from fourm_jax import modalities as modality_registry
from fourm_jax.data import records
from fourm_jax.modalities import Kind

WORDS = ("a", "the", "dog", "cat", "person", "red", "blue", "car", "on", "in", "with", "small",
         "large", "street", "table", "sitting", "next", "to", "photo", "of", "two", "green")
CLASSES = ("person", "dog", "cat", "car", "chair", "bottle", "cup", "bicycle")


def random_crop_settings(rng: np.random.Generator, height: int, width: int,
                         n_crops: int) -> np.ndarray:
    """ml-4m's save_vq_tokens crops: row 0 the centred square, the rest RandomResizedCrop-like
    (scale 0.8..1, ratio 3/4..4/3) with a random horizontal flip."""
    side = min(height, width)
    rows = [((height - side) // 2, (width - side) // 2, side, side, 0)]
    while len(rows) < n_crops:
        area = height * width * rng.uniform(0.8, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < w <= width and 0 < h <= height:
            rows.append((int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1)), h, w,
                         int(rng.random() < 0.5)))
    return np.array(rows, np.int32)


def features(modalities: Sequence[str], with_rgb: bool, caption_ids: bool = False) -> dict:
    result = {"crop_settings": records.crop_settings_feature(),
              records.IMAGE_SIZE_FIELD: records.image_size_feature()}
    for name in modalities:
        spec = modality_registry.get(name)
        if spec.kind is Kind.IMAGE_TOKENS:
            result[spec.path] = records.token_grid_feature(spec.max_tokens)
        elif name == "caption":
            result["caption"] = (records.token_ids_feature(per_crop=True) if caption_ids
                                 else records.text_list_feature())
        elif name == "det":
            result["det"] = records.detections_feature()
        elif spec.kind is Kind.IMAGE_PIXELS:
            if with_rgb:
                result[spec.path] = records.image_feature(3)
        else:
            raise ValueError(f"synthetic data has no generator for modality {name!r}")
    return result


def example(seed: int, index: int, modalities: Sequence[str], n_crops: int, with_rgb: bool,
            image_size: tuple[int, int], caption_tokenizer=None) -> dict:
    """One record; with `caption_tokenizer` its captions are stored as token ids, one PAD-padded
    row per crop."""
    rng = np.random.default_rng([seed, index])
    height, width = image_size
    out = {"crop_settings": random_crop_settings(rng, height, width, n_crops),
           records.IMAGE_SIZE_FIELD: np.array([height, width], np.int32)}
    for name in modalities:
        spec = modality_registry.get(name)
        if spec.kind is Kind.IMAGE_TOKENS:
            out[spec.path] = rng.integers(0, spec.vocab_size, (n_crops, spec.max_tokens)).astype(np.int16)
        elif name == "caption":
            captions = [" ".join(rng.choice(WORDS, size=rng.integers(5, 20)))
                        for _ in range(n_crops)]
            if caption_tokenizer is not None:
                rows = [caption_tokenizer.encode(text) for text in captions]
                ids = np.zeros((n_crops, max(map(len, rows))), np.int32)
                for row, tokens in enumerate(rows):
                    ids[row, :len(tokens)] = tokens
                captions = ids
            out["caption"] = captions
        elif name == "det":
            n = int(rng.integers(0, 8))
            corners = np.sort(rng.random((n, 2, 2)), axis=1)  # [n, (min, max), (x, y)]
            out["det"] = {"boxes": corners.reshape(n, 4).astype(np.float32),  # xmin ymin xmax ymax
                          "class_name": [str(c) for c in rng.choice(CLASSES, size=n)],
                          "score": rng.uniform(0.3, 1.0, n).astype(np.float32)}
        elif spec.kind is Kind.IMAGE_PIXELS and with_rgb:
            pixels = rng.integers(0, 256, (height // 8, width // 8, 3), np.uint8)
            image = Image.fromarray(pixels).resize((width, height), Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            out[spec.path] = buffer.getvalue()
    return out


def _shard(seed, modalities, n_crops, with_rgb, image_size, caption_tokenizer, shard_size, total,
           shard):
    for index in range(shard * shard_size, min(total, (shard + 1) * shard_size)):
        yield example(seed, index, modalities, n_crops, with_rgb, image_size, caption_tokenizer)


def write_pretokenized(dataset_dir: str | os.PathLike, num_examples: int, *,
                       modalities: Sequence[str] = modality_registry.MODALITIES_4M7,
                       n_crops: int = 4, with_rgb: bool = False,
                       image_size: tuple[int, int] = (256, 320), seed: int = 0,
                       caption_tokenizer=None, shard_size: int = 1000, num_workers: int = 0,
                       progress: bool = False) -> pathlib.Path:
    """Writes a synthetic pre-tokenized dataset (split 'train'); returns its directory. With a
    `caption_tokenizer` (fourm_jax.text) captions are stored as token ids too."""
    modalities = tuple(modalities)
    writer = records.DatasetWriter(
        dataset_dir, "synthetic", tfds.features.FeaturesDict(
            features(modalities, with_rgb, caption_tokenizer is not None)),
        description="Synthetic pre-tokenized data (fourm_jax.data.synthetic).",
        metadata=dict(modalities=list(modalities), n_crops=n_crops, seed=seed))
    num_shards = max(1, -(-num_examples // shard_size))
    make = functools.partial(_shard, seed, modalities, n_crops, with_rgb, tuple(image_size),
                             caption_tokenizer, shard_size, num_examples)
    records.write_split(writer, "train", num_shards, make, total=num_examples,
                        num_workers=num_workers, progress=progress)
    return writer.finalize({"train": num_shards})
