"""What a generated mod_dict looks like: images through the tokenizers' decoders, text, boxes, grids.

    tokenizers = {"tok_depth@224": ml4m.load("tokenizers/depth")}      # (VQVAE, variables)
    decoded = decode_outputs(mod_dict, ["tok_depth@224", "caption"], tokenizers, text_tokenizer)
    decoded["tok_depth@224"]  # list of uint8 [H, W, 3] images, one per row (depth: turbo colours)
    decoded["caption"]        # list of strings

As ml-4m's decode_dict: RGB and normals map [-1, 1] to [0, 255]; depth takes channel 0, min-max
per image, turbo colours; semantic segmentation takes the argmax class, drawn with a fixed palette;
feature maps show their first three principal components; sequences decode to text (det to boxes,
drawn on an image by `draw_boxes`).
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np

from fourm_jax import modalities
from fourm_jax.files import write_atomic
from fourm_jax.modalities import Kind
from fourm_jax.text import formats, layout
from fourm_jax.tokenizers import inputs
from fourm_jax.tokenizers.vqvae import IMAGENET_MEAN, IMAGENET_STD  # 4M's pixel inputs use them too


def _to_uint8(x01: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x01, 0.0, 1.0) * 255.0).astype(np.uint8)


def depth_image(depth_HW: np.ndarray) -> np.ndarray:
    """Depth (any scale) -> turbo-coloured uint8 [H, W, 3], min-max normalised per image."""
    from matplotlib import colormaps

    low, high = float(depth_HW.min()), float(depth_HW.max())
    scaled = (depth_HW - low) / (high - low) if high > low else np.zeros_like(depth_HW)
    return _to_uint8(colormaps["turbo"](scaled)[..., :3])


def class_image(classes_HW: np.ndarray) -> np.ndarray:
    """Class ids -> uint8 [H, W, 3] with a fixed palette (class 0, "no class", is black)."""
    palette = np.random.default_rng(0).integers(40, 256, (256, 3)).astype(np.uint8)
    palette[0] = 0
    return palette[classes_HW % 256]


def pca_image(features_HWC: np.ndarray) -> np.ndarray:
    """First three principal components of a feature map, min-max scaled per component."""
    h, w, c = features_HWC.shape
    flat = features_HWC.reshape(-1, c) - features_HWC.reshape(-1, c).mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    components = flat @ vt[:3].T
    if components.shape[1] < 3:
        components = np.pad(components, ((0, 0), (0, 3 - components.shape[1])))
    low, high = components.min(0), components.max(0)
    return _to_uint8(((components - low) / np.where(high > low, high - low, 1.0)).reshape(h, w, 3))


def decoded_image(tokenizer_modality: str, decoded_HWC: np.ndarray) -> np.ndarray:
    """One decoder output as a displayable uint8 [H, W, 3] image."""
    if tokenizer_modality in ("rgb", "normal", "image"):
        return _to_uint8(np.asarray(inputs.denormalize_image(decoded_HWC)))
    if tokenizer_modality == "depth":
        return depth_image(decoded_HWC[..., 0])
    if tokenizer_modality == "semseg":
        return class_image(decoded_HWC.argmax(-1))
    if tokenizer_modality == "feature_map":
        return pca_image(decoded_HWC)
    raise ValueError(f"tokenizer modality {tokenizer_modality!r} has no image form")


def sequence_ids(d: Mapping[str, np.ndarray]) -> list[list[int]]:
    """Per row, the visible ids of a sequence modality, up to its first [EOS] (excluded)."""
    rows = []
    for tensor, input_mask in zip(d["tensor"], d["input_mask"], strict=True):
        ids = [int(t) for t in tensor[~input_mask]]
        rows.append(ids[:ids.index(layout.EOS_ID)] if layout.EOS_ID in ids else ids)
    return rows


def decode_outputs(mod_dict, domains: Sequence[str], tokenizers: Mapping[str, tuple], text_tokenizer=None,
                   *, batch_size: int = 8) -> dict[str, list]:
    """{domain: one entry per row}: uint8 images for image tokens (needs tokenizers[domain] =
    (tokenizer, variables)), strings for captions and other sequences, lists of Box for det."""
    out = {}
    for domain in domains:
        modality, d = modalities.get(domain), mod_dict[domain]
        if modality.kind is Kind.IMAGE_TOKENS:
            if domain not in tokenizers:
                raise ValueError(f"{domain}: no tokenizer to decode it; pass one (--tokenizer {domain}=DIR)")
            tokenizer, variables = tokenizers[domain]
            tokens = np.asarray(d["tensor"]).reshape(-1, modality.grid_size, modality.grid_size)
            images = []
            for start in range(0, len(tokens), batch_size):
                decoded = np.asarray(tokenizer.decode(variables, tokens[start:start + batch_size]))
                images.extend(decoded_image(tokenizer.config.modality, x) for x in decoded)
            out[domain] = images
        elif modality.kind is Kind.SEQUENCE:
            if text_tokenizer is None:
                raise ValueError(f"{domain}: decoding text needs the text tokenizer (--text_tokenizer)")
            rows = sequence_ids(d)
            if domain == "det":
                detection = formats.Detection(text_tokenizer, on_error="warn")
                out[domain] = [detection.decode(ids).value for ids in rows]
            else:
                out[domain] = [text_tokenizer.decode(ids) for ids in rows]
        elif modality.kind is Kind.IMAGE_PIXELS:
            mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
            pixels = np.transpose(np.asarray(d["tensor"]), (0, 2, 3, 1)) * std + mean
            out[domain] = [_to_uint8(x) for x in pixels]
        else:
            raise ValueError(f"{domain} ({modality.kind.value}) has no displayable form")
    return out


def pixel_input(image_HW3: np.ndarray, domain: str, name: str) -> np.ndarray:
    """A uint8 RGB image -> 4M's pixel input [3, S, S] for `domain` (rgb@224: 224x224, ImageNet
    mean/std). The size must match: 4M's patch grid is fixed."""
    size = modalities.get(domain).input_size
    if image_HW3.ndim != 3 or image_HW3.shape != (size, size, 3):
        raise ValueError(f"{name}: {domain} takes {size}x{size} RGB images, got shape {image_HW3.shape}")
    x = image_HW3.astype(np.float32) / 255.0
    x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return np.transpose(x, (2, 0, 1))


def draw_boxes(image_HW3: np.ndarray, boxes) -> np.ndarray:
    """The image with each box (normalised xmin, ymin, xmax, ymax; class name) drawn on it."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(image_HW3)
    draw = ImageDraw.Draw(image)
    h, w = image_HW3.shape[:2]
    for box in boxes:
        xy = (box.xmin * w, box.ymin * h, box.xmax * w, box.ymax * h)
        draw.rectangle(xy, outline=(255, 40, 40), width=max(1, w // 112))
        draw.text((xy[0] + 2, xy[1] + 1), box.class_name, fill=(255, 255, 0))
    return np.asarray(image)


def text_image(text: str, size: int, width_chars: int = 28) -> np.ndarray:
    """A square tile with the text wrapped on it (for grids)."""
    import textwrap

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), (255, 255, 255))
    ImageDraw.Draw(image).multiline_text((4, 4), "\n".join(textwrap.wrap(text, width_chars)) or "(empty)",
                                         fill=(0, 0, 0))
    return np.asarray(image)


def grid(rows: Sequence[Sequence[tuple[str, np.ndarray]]], tile: int = 224) -> np.ndarray:
    """One image of titled tiles: rows of (title, uint8 image) resized to tile x tile."""
    from PIL import Image, ImageDraw

    columns = max(len(r) for r in rows)
    title = 14
    canvas = Image.new("RGB", (columns * tile, len(rows) * (tile + title)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, row in enumerate(rows):
        for j, (name, image) in enumerate(row):
            top = i * (tile + title)
            draw.text((j * tile + 2, top + 1), name, fill=(0, 0, 0))
            canvas.paste(Image.fromarray(image).resize((tile, tile), Image.NEAREST), (j * tile, top + title))
    return np.asarray(canvas)


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    """Writes a uint8 image atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    write_atomic(path, buffer.getvalue())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomic(path, text.encode())


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue())
