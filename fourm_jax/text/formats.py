"""4M's sequence formats: structured modalities <-> token ids, serialised exactly as ml-4m does.

Each format has
    to_text(data)  ml-4m's string (what its WordPiece tokenizer sees during training);
    encode(data)   token ids == tokenizer.encode(to_text(data)), built directly from 4M's fixed
                   layout (value tokens, class names, keywords), falling back to the tokenizer
                   only for words outside it, so it is fast and bit-identical to ml-4m;
    decode(ids)    structured data back from (generated) ids. It never raises: malformed output
                   yields the well-formed part plus `errors` describing what was dropped.

Formats (reference: ml-4m's fourm/data/modality_transforms.py):
    caption        text
    det            boxes in [0, 1] of the crop -> "v0=xmin v1=ymin v2=xmax v3=ymax class ..."
                   (coordinates round(c * 999)), ordered by distance of (xmin, ymin) to the origin
    metadata       {key: value} -> one chunk "v1=<key id> v0=<bin>" per key, in random order
    color_palette  k colours -> "v1=k v0=r v0=g v0=b ..."
    human_poses    people (bbox, 8 pose codes, global orientation, shape, camera) -> "human v0.. v3..
                   pose .. global .. camera .. shape .." with the four groups in random order
    sam_instance   SAM instances -> per random query point "point v0=y v1=x" and, for every
                   instance containing it, "polygon v0.. v3.." + 16 instance codes, or "none"

Bad structured input raises ValueError naming the field; with on_error="warn" the offending item
is skipped, logged and counted in `format.skipped`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np

from fourm_jax.text import layout
from fourm_jax.text.tokenizer import FORMAT_KEYWORDS, TextTokenizer

T = TypeVar("T")
_CLASS_IDS = {name: layout.CLASS_OFFSET + i for i, name in enumerate(layout.COCO_CLASSES)}
_CLASS_NAMES = {token_id: name for name, token_id in _CLASS_IDS.items()}
_VALUE_END = layout.VALUE_OFFSET + layout.NUM_VALUE_TYPES * layout.VALUE_BINS
_VALUE_TEXT = re.compile(r"v([0-3])=(-?\d+)")
_VALUES_TEXT = re.compile(r"(?:v[0-3]=-?\d+)+")


@dataclasses.dataclass
class Decoded(Generic[T]):
    """A decoded sequence: the well-formed part, and what was wrong with the rest."""

    value: T
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


# ------------------------------------------------------------------------------------------------
# Token words: the decoders' view of an id sequence


@dataclasses.dataclass(frozen=True)
class Word:
    """One unit of a decoded sequence: kind is 'value' (v<axis>=<number>), 'class' (a COCO class
    token), 'keyword' (a format keyword) or 'text' (a run of other pieces, decoded)."""

    kind: str
    text: str
    axis: int = -1
    number: int = -1


def _split_at(words: list[Word], keywords: Sequence[str]) -> tuple[list[Word], list[tuple[str, list[Word]]]]:
    """The words before the first of `keywords`, and (keyword, following words) for each one."""
    head, parts = [], []
    for word in words:
        if word.kind == "keyword" and word.text in keywords:
            parts.append((word.text, []))
        else:
            (parts[-1][1] if parts else head).append(word)
    return head, parts


def merge_spans(input_ids: Sequence[int], target_ids: Sequence[int]) -> list[int]:
    """Undoes span corruption: every sentinel in the input is replaced by the target tokens that
    follow the same sentinel (ml-4m's merge_span_masking); unmatched sentinels are dropped."""
    spans: dict[int, list[int]] = {}
    current = None
    for token in target_ids:
        token = int(token)
        if layout.is_sentinel(token):
            current = spans.setdefault(token, [])
        elif current is not None:
            current.append(token)
    merged = []
    for token in input_ids:
        token = int(token)
        merged.extend(spans.get(token, []) if layout.is_sentinel(token) else [token])
    return merged


class _Format:
    """Shared machinery: keyword ids, word <-> id mapping, bad-input policy."""

    name = ""
    out_of_range_values = False

    def __init__(self, tokenizer: TextTokenizer, on_error: str = "raise"):
        if on_error not in ("raise", "warn"):
            raise ValueError(f"{self.name}: on_error must be 'raise' or 'warn', got {on_error!r}")
        self.tokenizer = tokenizer
        self.on_error = on_error
        self.skipped: collections.Counter[str] = collections.Counter()
        self._keyword_ids = {word: tokenizer.token_to_id(word) for word in FORMAT_KEYWORDS}
        missing = [word for word, token_id in self._keyword_ids.items() if token_id is None]
        if missing:
            raise ValueError(f"{tokenizer.path}: format keywords {missing} are not tokens of this vocabulary")
        self._keywords_by_id = {token_id: word for word, token_id in self._keyword_ids.items()}

    def _bad(self, field: str, message: str) -> None:
        """Raises ValueError naming the field, or (on_error='warn') logs and counts it."""
        if self.on_error == "raise":
            raise ValueError(f"{self.name}: {field}: {message}")
        if not self.skipped[field]:
            logging.warning("%s: %s: %s (skipped; further cases are only counted)", self.name, field, message)
        self.skipped[field] += 1

    def _value_ids(self, axis: int, value) -> list[int]:
        """Ids of the word f"v{axis}={value}": the value token when value is an int in 0..999,
        otherwise whatever the tokenizer makes of that text (ml-4m's behaviour, e.g. for betas out
        of range or float metadata)."""
        if type(value) is int or (isinstance(value, np.integer) and not isinstance(value, bool)):
            if 0 <= value < layout.VALUE_BINS:
                return [layout.VALUE_OFFSET + layout.VALUE_BINS * axis + int(value)]
        return self.tokenizer.encode(f"v{axis}={value}").tolist()

    def _class_ids(self, name: str) -> list[int]:
        """A COCO class is one token (matched after lowercasing); other names are tokenized."""
        token_id = _CLASS_IDS.get(name.lower())
        return [token_id] if token_id is not None else self.tokenizer.encode(name).tolist()

    def clean(self, ids: Iterable[int]) -> tuple[list[int], list[str]]:
        """The ids of a generated sequence up to its first EOS, without PAD, sentinels, SOS and ids
        outside the vocabulary; and an error for each id removed (PAD and EOS are normal)."""
        array = np.asarray(ids)
        if array.size and array.dtype.kind not in "iu":
            return [], [f"ids must be integers, got dtype {array.dtype}"]
        kept, errors = [], []
        for position, token_id in enumerate(array.reshape(-1).tolist()):
            if token_id == layout.EOS_ID:
                break
            if token_id == layout.PAD_ID:
                continue
            if layout.is_sentinel(token_id):
                errors.append(f"position {position}: sentinel [S_{token_id - layout.SENTINEL_OFFSET}] "
                              "(merge the input and target spans before decoding); dropped")
            elif token_id == layout.SOS_ID:  # never part of a 4M sequence
                errors.append(f"position {position}: [SOS]; dropped")
            elif not 0 <= token_id < self.tokenizer.vocab_size:
                errors.append(f"position {position}: token id {token_id} is outside the vocabulary "
                              f"[0, {self.tokenizer.vocab_size}); dropped")
            else:
                kept.append(token_id)
        return kept, errors

    def _text_words(self, text: str) -> list[Word]:
        """A run of ordinary pieces: one text word, or, for formats whose values may leave 0..999
        (ml-4m writes e.g. "v0=-166", which the tokenizer splits), the values it spells."""
        compact = text.replace(" ", "")
        if self.out_of_range_values and _VALUES_TEXT.fullmatch(compact):
            return [Word("value", f"v{axis}={number}", int(axis), int(number))
                    for axis, number in _VALUE_TEXT.findall(compact)]
        return [Word("text", text)]

    def words(self, ids: Iterable[int]) -> tuple[list[Word], list[str]]:
        """The words of a generated sequence (see `clean`), and errors."""
        ids, errors = self.clean(ids)
        words, run = [], []
        for token_id in ids + [None]:
            keyword = self._keywords_by_id.get(token_id)
            is_value = token_id is not None and layout.VALUE_OFFSET <= token_id < _VALUE_END
            if token_id is not None and not (is_value or keyword or token_id in _CLASS_NAMES):
                run.append(token_id)
                continue
            if run:
                words.extend(self._text_words(self.tokenizer.decode(run)))
                run = []
            if keyword:
                words.append(Word("keyword", keyword))
            elif is_value:
                axis, number = divmod(token_id - layout.VALUE_OFFSET, layout.VALUE_BINS)
                words.append(Word("value", f"v{axis}={number}", axis, number))
            elif token_id is not None:
                words.append(Word("class", _CLASS_NAMES[token_id]))
        return words, errors


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:
        return False


# ------------------------------------------------------------------------------------------------
# Caption


class Caption(_Format):
    """Captions: raw text, tokenized (no EOS: masking appends it)."""

    name = "caption"

    @staticmethod
    def select(value, crop_index: int | None = None, rng: np.random.Generator | None = None,
               aligned: bool = True) -> str:
        """ml-4m's choice among a record's captions: a str; a list (aligned with the crops: item
        crop_index, or item 0; not aligned: a random item); dicts with key 'caption'."""
        if isinstance(value, (list, tuple)):
            if not value:
                raise ValueError("caption: the record has an empty list of captions")
            if aligned or rng is None:
                value = value[0 if crop_index is None else crop_index]
            else:
                value = value[int(rng.integers(len(value)))]
        if isinstance(value, dict):
            if "caption" not in value:
                raise ValueError(f"caption: dict without key 'caption' (keys: {sorted(value)})")
            value = value["caption"]
        if not isinstance(value, str):
            raise ValueError(f"caption: expected text, got {type(value).__name__}")
        return value

    def to_text(self, text: str) -> str:
        return text

    def encode(self, text: str) -> np.ndarray:
        if not isinstance(text, str):
            raise ValueError(f"caption: expected text, got {type(text).__name__}")
        if not text.strip():
            self._bad("text", "the caption is empty")
        return self.tokenizer.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                self._bad(f"texts[{i}]", f"expected a non-empty caption, got {text!r}")
        return self.tokenizer.encode_batch([text if isinstance(text, str) else "" for text in texts])

    def decode(self, ids: Iterable[int]) -> Decoded[str]:
        ids, errors = self.clean(ids)
        return Decoded(self.tokenizer.decode(ids), errors)


# ------------------------------------------------------------------------------------------------
# Detection boxes


@dataclasses.dataclass(frozen=True)
class Box:
    """A box in [0, 1] coordinates of the (cropped) image, with its class name."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float
    class_name: str
    score: float | None = None


BOX_ORDERS = ("dist_to_orig", "area", "score", "random")


class Detection(_Format):
    """Boxes as "v0=xmin v1=ymin v2=xmax v3=ymax <class>" per box, coordinates round(c * 999)."""

    name = "det"

    def __init__(self, tokenizer: TextTokenizer, on_error: str = "raise", score_threshold: float = 0.6,
                 order: str = "dist_to_orig", max_instances: int | None = None, bins: int = 1000):
        super().__init__(tokenizer, on_error)
        if order not in BOX_ORDERS:
            raise ValueError(f"det: order must be one of {BOX_ORDERS}, got {order!r}")
        self.score_threshold, self.order, self.max_instances, self.bins = (
            score_threshold, order, max_instances, bins)

    def prepare(self, instances, crop: Sequence[float] | None = None,
                orig_size: tuple[int, int] | None = None,
                rng: np.random.Generator | None = None) -> list[Box]:
        """ml-4m's DetectionTransform up to the string: keep scores >= threshold, crop to
        (top, left, h, w[, flip]) of an image of orig_size (H, W), drop boxes left with no area,
        flip, keep the max_instances best-scored, order.

        `instances`: ml-4m's JSON ({'instances': [{'boxes': [xmin, ymin, xmax, ymax] in [0, 1],
        'class_name', 'score'}, ...]}) or its list of instances.
        """
        if isinstance(instances, Mapping):
            if "instances" not in instances:
                raise ValueError(f"det: expected a dict with key 'instances', got keys {sorted(instances)}")
            instances = instances["instances"]
        boxes = []
        for i, instance in enumerate(instances):
            try:
                xmin, ymin, xmax, ymax = instance["boxes"]
                name, score = instance["class_name"], instance["score"]
            except (KeyError, TypeError, ValueError) as error:
                self._bad(f"instances[{i}]", f"expected {{'boxes': [4 numbers], 'class_name', 'score'}}: "
                                             f"{error!r}")
                continue
            if not all(_finite(v) for v in (xmin, ymin, xmax, ymax, score)):
                self._bad(f"instances[{i}]", f"boxes and score must be finite numbers, got {instance}")
                continue
            if score >= self.score_threshold:
                boxes.append(Box(xmin, ymin, xmax, ymax, name, score))
        if crop is not None:
            if orig_size is None:
                raise ValueError("det: cropping boxes needs orig_size (H, W) of the image")
            boxes = _crop_boxes(boxes, crop, orig_size)
            if len(crop) > 4 and crop[4]:
                boxes = [dataclasses.replace(b, xmin=1 - b.xmax, xmax=1 - b.xmin) for b in boxes]
        if self.max_instances is not None and len(boxes) > self.max_instances:
            boxes = sorted(boxes, key=lambda b: b.score, reverse=True)[:self.max_instances]
        return self._ordered(boxes, rng)

    def _ordered(self, boxes: list[Box], rng) -> list[Box]:
        if self.order == "dist_to_orig":
            return sorted(boxes, key=lambda b: b.xmin ** 2 + b.ymin ** 2)
        if self.order == "area":
            return sorted(boxes, key=lambda b: (b.xmax - b.xmin) * (b.ymax - b.ymin), reverse=True)
        if self.order == "score":
            return sorted(boxes, key=lambda b: b.score, reverse=True)
        if rng is None:
            raise ValueError("det: order='random' needs an rng")
        return [boxes[i] for i in rng.permutation(len(boxes))]

    def _quantized(self, boxes: Sequence[Box]) -> list[tuple[list[int], str]]:
        scale = self.bins - 1
        out = []
        for i, box in enumerate(boxes):
            coords = (box.xmin, box.ymin, box.xmax, box.ymax)
            if not all(_finite(c) and 0 <= c <= 1 for c in coords):
                self._bad(f"boxes[{i}]", f"coordinates must lie in [0, 1], got {coords}")
                continue
            if not isinstance(box.class_name, str) or not box.class_name.strip():
                self._bad(f"boxes[{i}].class_name", f"expected a non-empty name, got {box.class_name!r}")
                continue
            out.append(([round(c * scale) for c in coords], box.class_name))
        return out

    def to_text(self, boxes: Sequence[Box]) -> str:
        return " ".join(" ".join([*(f"v{k}={v}" for k, v in enumerate(coords)), name])
                        for coords, name in self._quantized(boxes))

    def encode(self, boxes: Sequence[Box]) -> np.ndarray:
        ids = []
        for coords, name in self._quantized(boxes):
            for axis, value in enumerate(coords):
                ids.extend(self._value_ids(axis, value))
            ids.extend(self._class_ids(name))
        return np.array(ids, np.int32)

    def decode(self, ids: Iterable[int]) -> Decoded[list[Box]]:
        words, errors = self.words(ids)
        boxes, coords, names = [], [], []

        def finish():
            if coords or names:
                if len(coords) == 4 and names:
                    boxes.append(Box(*(c / (self.bins - 1) for c in coords), " ".join(names)))
                else:
                    errors.append(f"box {len(boxes) + len(errors)}: incomplete ({len(coords)} coordinates, "
                                  f"class {' '.join(names) or 'missing'}); dropped")
            coords.clear()
            names.clear()

        for word in words:
            if word.kind == "value":
                if word.axis == 0 and (coords or names):
                    finish()
                if word.axis != len(coords) or names:
                    errors.append(f"unexpected {word.text} after {len(coords)} coordinates; dropped")
                    continue
                coords.append(word.number)
            elif word.kind in ("class", "text", "keyword") and len(coords) == 4:
                names.append(word.text)
            else:
                errors.append(f"unexpected {word.kind} {word.text!r}; dropped")
        finish()
        return Decoded(boxes, errors)


def _crop_boxes(boxes: list[Box], crop: Sequence[float], orig_size: tuple[int, int]) -> list[Box]:
    """albumentations 1.4 bbox_crop + filter_bboxes(min_visibility=0), as ml-4m uses them: boxes
    re-normalised to the crop, clipped to [0, 1], dropped when nothing of them is left."""
    top, left, h, w = crop[:4]
    rows, cols = orig_size
    out = []
    for box in boxes:
        xmin, ymin, xmax, ymax = ((box.xmin * cols - left) / w, (box.ymin * rows - top) / h,
                                  (box.xmax * cols - left) / w, (box.ymax * rows - top) / h)
        xmin, ymin, xmax, ymax = (min(max(c, 0.0), 1.0) for c in (xmin, ymin, xmax, ymax))
        if xmax - xmin > 0 and ymax - ymin > 0:  # some area left (and not inverted)
            out.append(dataclasses.replace(box, xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax))
    return out


# ------------------------------------------------------------------------------------------------
# Metadata


@dataclasses.dataclass(frozen=True)
class MetadataKey:
    """One metadata field: its type id (v1=<id>) and how its value becomes a bin (v0=<bin>)."""

    name: str
    type_id: int
    kind: str  # 'image_dim' (value // 32), 'int' (clamped), 'min_max' (floored bins), 'manual'
    vmin: float = 0
    vmax: float = 0
    bins: int = 0
    boundaries: tuple[float, ...] = ()


def _metadata_keys() -> dict[str, MetadataKey]:
    int_keys = ("caption_n_chars", "caption_n_words", "caption_n_sentences", "n_humans", "n_sam_instances",
                "n_coco_instances", "coco_instance_diversity", "semantic_diversity")
    min_max = {"colorfulness": (0, 150, 50), "brightness": (0, 255, 50), "contrast": (0, 127, 50),
               "saturation": (0, 255, 50), "entropy": (0, 10, 50), "walkability": (0, 1, 50),
               "objectness": (0, 1, 50), "geometric_complexity": (0, 0.75, 50),
               "occlusion_score": (0, 0.25, 50)}
    manual = {"watermark_score": (0.5,), "aesthetic_score": (4.5, 5.5)}
    order = ("original_width", "original_height", "caption_n_chars", "caption_n_words", "caption_n_sentences",
             "n_humans", "n_sam_instances", "n_coco_instances", "coco_instance_diversity", "colorfulness",
             "brightness", "contrast", "saturation", "entropy", "walkability", "objectness",
             "semantic_diversity", "geometric_complexity", "occlusion_score", "watermark_score",
             "aesthetic_score")
    keys = {}
    for type_id, name in enumerate(order):
        if name in min_max:
            vmin, vmax, bins = min_max[name]
            keys[name] = MetadataKey(name, type_id, "min_max", vmin, vmax, bins)
        elif name in manual:
            keys[name] = MetadataKey(name, type_id, "manual", boundaries=manual[name])
        else:
            keys[name] = MetadataKey(name, type_id, "int" if name in int_keys else "image_dim")
    return keys


METADATA_KEYS = _metadata_keys()
_METADATA_BY_TYPE = {key.type_id: key for key in METADATA_KEYS.values()}


class Metadata(_Format):
    """Image metadata as chunks "v1=<type> v0=<bin>", one per key, in random key order; masking
    spans whole chunks."""

    name = "metadata"
    special_vmin, special_vmax, image_dim_bin_size = 0, 999, 32

    def _bin(self, key: MetadataKey, value):
        """ml-4m's binning, with Python's semantics (a float input stays a float, as in ml-4m)."""
        if key.kind == "image_dim":
            return max(self.special_vmin, min(value // self.image_dim_bin_size, self.special_vmax))
        if key.kind == "int":
            return max(self.special_vmin, min(value, self.special_vmax))
        if key.kind == "manual":
            return sum(1 for boundary in key.boundaries if value >= boundary)
        clipped = max(key.vmin, min(value, key.vmax))
        return int((clipped - key.vmin) / (key.vmax - key.vmin) * (key.bins - 1))

    def _chunks(self, metadata: Mapping[str, Any], rng) -> list[tuple[int, Any]]:
        if not isinstance(metadata, Mapping):
            raise ValueError(f"metadata: expected a dict of metadata values, got {type(metadata).__name__}")
        names = list(metadata)
        if rng is not None:
            names = [names[i] for i in rng.permutation(len(names))]
        chunks = []
        for name in names:
            key, value = METADATA_KEYS.get(name), metadata[name]
            if key is None:
                self._bad(name, f"unknown metadata key; known keys: {', '.join(METADATA_KEYS)}")
            elif isinstance(value, bool) or not _finite(value):
                self._bad(name, f"expected a finite number, got {value!r}")
            else:
                chunks.append((key.type_id, self._bin(key, value)))
        return chunks

    def to_text(self, metadata: Mapping[str, Any], rng: np.random.Generator | None = None) -> list[str]:
        """The chunk strings; keys in random order when rng is given (ml-4m shuffles every time)."""
        return [f"v1={type_id} v0={value}" for type_id, value in self._chunks(metadata, rng)]

    def encode(self, metadata: Mapping[str, Any], rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """One int32 array per chunk (the masking's chunked sequence input)."""
        return [np.array(self._value_ids(1, type_id) + self._value_ids(0, value), np.int32)
                for type_id, value in self._chunks(metadata, rng)]

    def decode(self, ids: Iterable[int]) -> Decoded[dict[str, float]]:
        """{key: value}: image sizes in pixels (bin * 32), integers as such, min/max-binned values
        at their bin's lower edge (vmin + bin (vmax - vmin) / (bins - 1)), and for watermark_score /
        aesthetic_score the bin index (0: < 0.5 / < 4.5, 1: >= 0.5 / < 5.5, 2: >= 5.5)."""
        words, errors = self.words(ids)
        out: dict[str, float] = {}
        pending = None
        for word in words:
            if word.kind == "value" and word.axis == 1 and pending is None:
                pending = _METADATA_BY_TYPE.get(word.number)
                if pending is None:
                    errors.append(f"unknown metadata type {word.text}; dropped")
                    pending = False
            elif word.kind == "value" and word.axis == 0 and pending is not None:
                if pending:
                    if pending.name in out:
                        errors.append(f"{pending.name} appears twice; kept the first")
                    else:
                        out[pending.name] = self._unbin(pending, word.number)
                pending = None
            else:
                where = " after a type" if pending else ""
                errors.append(f"unexpected {word.text!r}{where}; dropped")
                pending = None
        if pending:
            errors.append(f"{pending.name} has no value; dropped")
        return Decoded({name: out[name] for name in METADATA_KEYS if name in out}, errors)

    def _unbin(self, key: MetadataKey, number: int):
        if key.kind == "image_dim":
            return number * self.image_dim_bin_size
        if key.kind == "min_max":
            return key.vmin + number * (key.vmax - key.vmin) / (key.bins - 1)
        return number


# ------------------------------------------------------------------------------------------------
# Colour palette


class ColorPalette(_Format):
    """k RGB colours as "v1=k v0=r v0=g v0=b ..."."""

    name = "color_palette"
    max_colors = 7

    def select(self, palettes, rng: np.random.Generator) -> list[tuple[float, float, float]]:
        """ml-4m's palette choice: from its JSON [{"1": [[r, g, b]], ..., "7": [...]}], the palette
        of a size k drawn uniformly from 1..7."""
        try:
            size = int(rng.integers(1, self.max_colors + 1))
            colors = palettes[0][str(size)]
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(f"color_palette: expected [{{'1': [[r, g, b]], ..., '7': [...]}}], "
                             f"lookup failed: {error!r}") from error
        return [tuple(color) for color in colors]

    def _values(self, colors) -> list:
        values = []
        for i, color in enumerate(colors):
            color = tuple(np.asarray(color).reshape(-1).tolist())
            if len(color) != 3 or not all(_finite(c) and 0 <= c <= 255 for c in color):
                self._bad(f"colors[{i}]", f"expected (r, g, b) in [0, 255], got {color}")
                continue
            values.extend(round(c) for c in color)
        return values

    def to_text(self, colors) -> str:
        values = self._values(colors)
        return " ".join([f"v1={round(len(values) / 3)}"] + [f"v0={v}" for v in values])

    def encode(self, colors) -> np.ndarray:
        values = self._values(colors)
        ids = self._value_ids(1, round(len(values) / 3))
        for value in values:
            ids.extend(self._value_ids(0, value))
        return np.array(ids, np.int32)

    def decode(self, ids: Iterable[int]) -> Decoded[list[tuple[int, int, int]]]:
        words, errors = self.words(ids)
        if not words or words[0].kind != "value" or words[0].axis != 1:
            return Decoded([], errors + ["missing the palette size v1=k at the start"])
        size, values = words[0].number, []
        for word in words[1:]:
            if word.kind == "value" and word.axis == 0 and word.number <= 255:
                values.append(word.number)
            else:
                errors.append(f"unexpected {word.text!r} in the colours; dropped")
        if len(values) % 3:
            errors.append(f"{len(values) % 3} trailing values do not make a colour; dropped")
        colors = [tuple(values[i:i + 3]) for i in range(0, len(values) - 2, 3)]
        if len(colors) != size:
            errors.append(f"palette declares {size} colours, holds {len(colors)}")
        return Decoded(colors, errors)


# ------------------------------------------------------------------------------------------------
# Human poses


@dataclasses.dataclass(frozen=True)
class Person:
    """One person: bbox (xmin, ymin, xmax, ymax) in [0, 1] of the crop, 8 pose-VQ codes (0..1023),
    global orientation (a 3x3 rotation, flattened), SMPL shape (10 betas), camera (3)."""

    bbox: tuple[float, ...]
    pose: tuple[int, ...]
    global_orient: tuple[float, ...]
    betas: tuple[float, ...]
    camera: tuple[float, ...]


_POSE_GROUPS = (("pose", 8), ("global", 9), ("camera", 3), ("shape", 10))  # ml-4m's group order


class HumanPoses(_Format):
    """People as "human v0.. v3.. <4 groups in random order>"; 39 tokens each, "none" for nobody."""

    name = "human_poses"
    out_of_range_values = True  # shape values are not clipped in ml-4m

    def __init__(self, tokenizer: TextTokenizer, on_error: str = "raise", bins: int = 1000):
        super().__init__(tokenizer, on_error)
        self.bins = bins

    def prepare(self, poses, crop: Sequence[float] | None = None,
                orig_size: tuple[int, int] | None = None) -> list[Person]:
        """People from ml-4m's HMR2 JSON (bbox_xyxy in pixels, pred_smpl_params.{global_orient,
        betas}, pose_tokenized, pred_cam), with boxes normalised by orig_size (H, W) and cropped to
        (top, left, h, w) like ml-4m: people entirely off the crop are dropped, boxes clipped.
        Horizontal flips are not applied (an ml-4m quirk kept for parity)."""
        if not poses:
            return []
        if not isinstance(poses, Mapping):
            raise ValueError(f"human_poses: expected HMR2's dict, got {type(poses).__name__}")
        try:
            boxes = np.asarray(poses["bbox_xyxy"], np.float64).reshape(-1, 4)
            smpl = poses["pred_smpl_params"]
            count = len(boxes)
            orient = np.asarray(smpl["global_orient"], np.float64).reshape(count, 9)
            betas = np.asarray(smpl["betas"], np.float64).reshape(count, 10)
            codes = np.asarray(poses["pose_tokenized"]).reshape(count, 8)
            camera = np.asarray(poses["pred_cam"], np.float64).reshape(count, 3)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"human_poses: expected HMR2 fields bbox_xyxy [n, 4], pred_smpl_params."
                             f"global_orient [n, 3, 3], .betas [n, 10], pose_tokenized [n, 8], pred_cam "
                             f"[n, 3]: {error!r}") from error
        if crop is not None and orig_size is None:
            raise ValueError("human_poses: cropping needs orig_size (H, W) of the image")
        people = []
        for i in range(count):
            bbox = boxes[i].copy()
            if orig_size is not None:
                height, width = orig_size
                bbox[0::2] = bbox[0::2] / width
                bbox[1::2] = bbox[1::2] / height
            if crop is not None:
                top, left, h, w = crop[:4]
                height, width = orig_size
                bbox = np.array([(bbox[0] * width - left) / w, (bbox[1] * height - top) / h,
                                 (bbox[2] * width - left) / w, (bbox[3] * height - top) / h])
                if (bbox[1::2] < 0).all() or (bbox[0::2] < 0).all():
                    continue
                if (bbox[1::2] > 1).all() or (bbox[0::2] > 1).all():
                    continue
                bbox = np.clip(bbox, 0, 1)
            people.append(Person(tuple(bbox.tolist()), tuple(int(c) for c in codes[i]),
                                 tuple(orient[i].tolist()), tuple(betas[i].tolist()),
                                 tuple(camera[i].tolist())))
        return people

    def _groups(self, person: Person, index: int) -> tuple[list[tuple[int, Any]], dict[str, list]] | None:
        """(bbox values, {group: [(axis, value)]}) with ml-4m's quantisation, or None if invalid."""
        fields = dict(bbox=person.bbox, pose=person.pose, global_orient=person.global_orient,
                      betas=person.betas, camera=person.camera)
        sizes = dict(bbox=4, pose=8, global_orient=9, betas=10, camera=3)
        for field, values in fields.items():
            if len(values) != sizes[field] or not all(_finite(v) for v in values):
                self._bad(f"people[{index}].{field}", f"expected {sizes[field]} finite numbers, got {values}")
                return None
        if not all(0 <= code < 1024 for code in person.pose):
            self._bad(f"people[{index}].pose", f"pose codes must lie in [0, 1024), got {person.pose}")
            return None
        scale = self.bins - 1
        bbox = [(axis, round(c * scale)) for axis, c in enumerate(person.bbox)]
        groups = {
            "pose": [(0, round(c)) if c < 512 else (1, round(c - 512)) for c in person.pose],
            "global": [(0, round(499.5 * g + 499.5)) for g in person.global_orient],
            "camera": [(0, round(49.95 * min(max(c, -1.0), 19.0) + 49.95)) for c in person.camera],
            "shape": [(0, round(166.5 * b + 499.5)) for b in person.betas],  # not clipped, as in ml-4m
        }
        return bbox, groups

    def _people(self, people: Sequence[Person], rng: np.random.Generator):
        for i, person in enumerate(people):
            parts = self._groups(person, i)
            if parts is not None:
                order = rng.permutation(len(_POSE_GROUPS))
                yield parts[0], [(_POSE_GROUPS[g][0], parts[1][_POSE_GROUPS[g][0]]) for g in order]

    def to_text(self, people: Sequence[Person], rng: np.random.Generator) -> str:
        texts = []
        for bbox, groups in self._people(people, rng):
            words = ["human", *(f"v{a}={v}" for a, v in bbox)]
            for keyword, values in groups:
                words += [keyword, *(f"v{a}={v}" for a, v in values)]
            texts.append(" ".join(words) + " ")
        return "".join(texts) or "none"

    def encode(self, people: Sequence[Person], rng: np.random.Generator) -> np.ndarray:
        ids = []
        for bbox, groups in self._people(people, rng):
            ids.append(self._keyword_ids["human"])
            for axis, value in bbox:
                ids.extend(self._value_ids(axis, value))
            for keyword, values in groups:
                ids.append(self._keyword_ids[keyword])
                for axis, value in values:
                    ids.extend(self._value_ids(axis, value))
        return np.array(ids or [self._keyword_ids["none"]], np.int32)

    def decode(self, ids: Iterable[int]) -> Decoded[list[Person]]:
        """People with dequantised values; a person missing a part is dropped with an error."""
        words, errors = self.words(ids)
        if len(words) == 1 and words[0].kind == "keyword" and words[0].text == "none":
            return Decoded([], errors)
        head, people_words = _split_at(words, ("human",))
        if head or not people_words:
            got = " ".join(w.text for w in head) or "nothing"
            errors.append(f"expected 'none' or 'human ...', got {got!r} first")
        people = []
        for index, (_, person_words) in enumerate(people_words):
            bbox, groups = _split_at(person_words, tuple(dict(_POSE_GROUPS)))
            parts = {"bbox": bbox}
            for group, values in groups:
                if group in parts:
                    errors.append(f"person {index}: group {group!r} repeated; kept the last")
                parts[group] = values
            person = self._person(parts, index, errors)
            if person:
                people.append(person)
        return Decoded(people, errors)

    def _person(self, parts: dict[str, list[Word]], index: int, errors: list[str]) -> Person | None:
        sizes = dict(bbox=4, **dict(_POSE_GROUPS))
        for group, size in sizes.items():
            if any(word.kind != "value" for word in parts.get(group, ())):
                errors.append(f"person {index}: {group} holds non-value tokens; dropped")
                return None
            if len(parts.get(group, ())) != size:
                errors.append(f"person {index}: {group} has {len(parts.get(group, ()))} values, "
                              f"expected {size}; dropped")
                return None
        if [w.axis for w in parts["bbox"]] != [0, 1, 2, 3]:
            errors.append(f"person {index}: bbox axes are not v0..v3; dropped")
            return None
        numbers = {group: [w.number for w in words] for group, words in parts.items()}
        return Person(
            bbox=tuple(n / (self.bins - 1) for n in numbers["bbox"]),
            pose=tuple(w.number + 512 * w.axis for w in parts["pose"]),
            global_orient=tuple((n - 499.5) / 499.5 for n in numbers["global"]),
            betas=tuple((n - 499.5) / 166.5 for n in numbers["shape"]),
            camera=tuple((n - 49.95) / 49.95 for n in numbers["camera"]))


# ------------------------------------------------------------------------------------------------
# SAM instances


@dataclasses.dataclass(frozen=True)
class QueryPoint:
    """A query point (pixels of the 224 px crop) and the SAM instances that contain it, each as
    (bbox (xmin, ymin, xmax, ymax) in pixels, instance codes)."""

    y: int
    x: int
    instances: tuple[tuple[tuple[int, int, int, int], tuple[int, ...]], ...]


class SamInstances(_Format):
    """SAM instances queried at random points: "point v0=y v1=x" then, per instance containing the
    point, "polygon v0=xmin v1=ymin v2=xmax v3=ymax" + its codes (v0=c, or v1=c-512), or "none"."""

    name = "sam_instance"

    def __init__(self, tokenizer: TextTokenizer, on_error: str = "raise", image_size: int = 224,
                 points_per_side: int = 7, codes_per_instance: int = 16):
        super().__init__(tokenizer, on_error)
        self.image_size, self.points_per_side, self.codes_per_instance = (
            image_size, points_per_side, codes_per_instance)

    def query(self, entry: Mapping[str, Any], rng: np.random.Generator) -> list[QueryPoint]:
        """ml-4m's SAMInstanceTokTransform on one crop's entry ({'points': per instance a list of
        contours [n, 1, 2] (x, y), 'token_ids': [instances, 16], 'bbox': [instances, 4] as (ymin,
        xmin, ymax, xmax)}): random query points (duplicates collapse), shuffled, each with the
        instances whose first contour contains it (edges included), shuffled."""
        try:
            contours = [np.asarray(points[0], np.float64).reshape(-1, 2) for points in entry["points"]]
            codes = [tuple(int(c) for c in np.asarray(ids).reshape(-1)) for ids in entry["token_ids"]]
            boxes = [tuple(np.asarray(box).astype(np.int32).reshape(4).tolist()) for box in entry["bbox"]]
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(f"sam_instance: expected {{'points', 'token_ids', 'bbox'}} per instance: "
                             f"{error!r}") from error
        if not len(contours) == len(codes) == len(boxes):
            raise ValueError(f"sam_instance: {len(contours)} contours, {len(codes)} token lists and "
                             f"{len(boxes)} boxes; expected one of each per instance")
        ys = rng.integers(0, self.image_size, self.points_per_side)
        xs = rng.integers(0, self.image_size, self.points_per_side)
        points = list(dict.fromkeys(zip(xs.tolist(), ys.tolist(), strict=True)))
        points = [points[i] for i in rng.permutation(len(points))]
        queries = []
        for x, y in points:
            inside = [(ymin_xmin_ymax_xmax, code) for contour, code, ymin_xmin_ymax_xmax in
                      zip(contours, codes, boxes, strict=True) if _point_in_polygon(x, y, contour)]
            inside = [inside[i] for i in rng.permutation(len(inside))]
            queries.append(QueryPoint(y, x, tuple(((b[1], b[0], b[3], b[2]), code) for b, code in inside)))
        return queries

    def _words(self, queries: Sequence[QueryPoint]):
        """(keyword or None, [(axis, value)]) items of the serialisation."""
        items = []
        for q, query in enumerate(queries):
            items.append(("point", [(0, query.y), (1, query.x)]))
            if not query.instances:
                items.append(("none", []))
            for i, (bbox, codes) in enumerate(query.instances):
                if len(codes) != self.codes_per_instance or not all(0 <= c < 1024 for c in codes):
                    self._bad(f"queries[{q}].instances[{i}]", f"expected {self.codes_per_instance} codes in "
                                                              f"[0, 1024), got {codes}")
                    continue
                items.append(("polygon", list(enumerate(bbox))
                              + [(0, c) if c < 512 else (1, c - 512) for c in codes]))
        return items

    def to_text(self, queries: Sequence[QueryPoint]) -> str:
        return " ".join(" ".join([keyword, *(f"v{a}={v}" for a, v in values)])
                        for keyword, values in self._words(queries))

    def encode(self, queries: Sequence[QueryPoint]) -> np.ndarray:
        ids = []
        for keyword, values in self._words(queries):
            ids.append(self._keyword_ids[keyword])
            for axis, value in values:
                ids.extend(self._value_ids(axis, value))
        return np.array(ids, np.int32)

    def decode(self, ids: Iterable[int]) -> Decoded[list[QueryPoint]]:
        words, errors = self.words(ids)
        head, points = _split_at(words, ("point",))
        if head:
            errors.append(f"{' '.join(w.text for w in head)!r} before the first 'point'; dropped")
        queries = []
        for index, (_, point_words) in enumerate(points):
            coords, instances_words = _split_at(point_words, ("polygon", "none"))
            if [(w.kind, w.axis) for w in coords] != [("value", 0), ("value", 1)]:
                errors.append(f"point {index}: expected v0=y v1=x, got {' '.join(w.text for w in coords)!r}; "
                              "dropped")
                continue
            instances = []
            for keyword, values in instances_words:
                if keyword == "none":
                    if values:
                        errors.append(f"point {index}: tokens after 'none'; dropped")
                    continue
                instance = self._instance(values)
                if instance is None:
                    errors.append(f"point {index}: malformed polygon ({len(values)} tokens, expected "
                                  f"v0..v3 + {self.codes_per_instance} codes); dropped")
                else:
                    instances.append(instance)
            queries.append(QueryPoint(coords[0].number, coords[1].number, tuple(instances)))
        return Decoded(queries, errors)

    def _instance(self, values: list[Word]):
        if len(values) != 4 + self.codes_per_instance or any(w.kind != "value" for w in values):
            return None
        if [w.axis for w in values[:4]] != [0, 1, 2, 3] or any(w.axis > 1 for w in values[4:]):
            return None
        return tuple(w.number for w in values[:4]), tuple(w.number + 512 * w.axis for w in values[4:])


def _point_in_polygon(x: float, y: float, polygon: np.ndarray) -> bool:
    """Whether (x, y) is inside the closed polygon or on its boundary (cv2.pointPolygonTest >= 0)."""
    if len(polygon) == 0:
        return False
    xs, ys = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(xs, -1), np.roll(ys, -1)
    cross = (x2 - xs) * (y - ys) - (y2 - ys) * (x - xs)
    on_edge = (cross == 0) & (np.minimum(xs, x2) <= x) & (x <= np.maximum(xs, x2)) \
        & (np.minimum(ys, y2) <= y) & (y <= np.maximum(ys, y2))
    if on_edge.any():
        return True
    straddles = (ys > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        crossing_x = xs + (y - ys) * (x2 - xs) / (y2 - ys)
    return bool(np.count_nonzero(straddles & (x < crossing_x)) % 2)


FORMATS = {"caption": Caption, "det": Detection, "metadata": Metadata, "color_palette": ColorPalette,
           "human_poses": HumanPoses, "sam_instance": SamInstances}


def formats_for(tokenizer: TextTokenizer, on_error: str = "raise") -> dict[str, _Format]:
    """One instance of every format (default settings), keyed by modality name."""
    return {name: cls(tokenizer, on_error) for name, cls in FORMATS.items()}
