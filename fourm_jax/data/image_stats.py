"""Image statistics in the raw forms ml-4m's metadata and colour-palette modalities read.

`image_metadata` returns a dict keyed by ml-4m's metadata names (MetadataTransform's table) with
raw, unbinned values; `color_palette` returns ml-4m's palette json: `[{"1": [[r,g,b]], ...,
"7": [[r,g,b] x 7]}]`, one k-means palette per size k.
"""

from __future__ import annotations

import re

import numpy as np

PALETTE_SIZES = tuple(range(1, 8))


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003): std + 0.3 * mean of the opponent channels rg and yb."""
    r, g, b = (rgb[..., c].astype(np.float32) for c in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def saturation(rgb: np.ndarray) -> float:
    """Mean HSV saturation, scaled to 0..255."""
    rgb = rgb[..., :3].astype(np.float32)
    high, low = rgb.max(-1), rgb.min(-1)
    return float(np.mean(np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)) * 255)


def entropy(rgb: np.ndarray) -> float:
    """Shannon entropy (bits) of the 256-bin grey-level histogram."""
    histogram = np.bincount(np.clip(_gray(rgb), 0, 255).astype(np.uint8).ravel(), minlength=256)
    p = histogram[histogram > 0] / histogram.sum()
    return float(-(p * np.log2(p)).sum())


def caption_counts(caption: str) -> dict[str, int]:
    sentences = [s for s in re.split(r"[.!?]+", caption) if s.strip()]
    return dict(caption_n_chars=len(caption), caption_n_words=len(caption.split()),
                caption_n_sentences=len(sentences))


def image_metadata(rgb: np.ndarray, caption: str | None = None) -> dict[str, float | int]:
    """Metadata of a uint8 [H, W, 3] image (and its caption) under ml-4m's key names."""
    gray = _gray(rgb)
    metadata = dict(original_width=int(rgb.shape[1]), original_height=int(rgb.shape[0]),
                    brightness=float(gray.mean()), contrast=float(gray.std()),
                    saturation=saturation(rgb), colorfulness=colorfulness(rgb),
                    entropy=entropy(rgb))
    if caption is not None:
        metadata.update(caption_counts(caption))
    return metadata


def kmeans_colors(pixels: np.ndarray, k: int, rng: np.random.Generator,
                  iterations: int = 6) -> np.ndarray:
    """k colours (uint8 [k, 3], most frequent first) from float [P, 3] pixels by Lloyd's k-means."""
    centers = pixels[rng.choice(len(pixels), size=k, replace=len(pixels) < k)]
    squared_norms = (pixels * pixels).sum(1)
    for _ in range(iterations):
        distances = squared_norms[:, None] - 2 * pixels @ centers.T + (centers * centers).sum(1)
        assignment = distances.argmin(1)
        counts = np.bincount(assignment, minlength=k)
        sums = np.stack([np.bincount(assignment, pixels[:, c], minlength=k) for c in range(3)], 1)
        centers = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
    order = np.argsort(-counts, kind="stable")
    return np.clip(np.rint(centers[order]), 0, 255).astype(np.uint8)


def color_palette(rgb: np.ndarray, rng: np.random.Generator,
                  max_pixels: int = 256) -> list[dict[str, list[list[int]]]]:
    """ml-4m's palette json for a uint8 [H, W, 3] image: palettes of 1..7 colours."""
    pixels = rgb[..., :3].reshape(-1, 3).astype(np.float32)
    if len(pixels) > max_pixels:
        pixels = pixels[rng.choice(len(pixels), size=max_pixels, replace=False)]
    return [{str(k): kmeans_colors(pixels, k, rng).tolist() for k in PALETTE_SIZES}]
