"""Registry of 4M modalities: one frozen dataclass per modality.

Names, sizes and ids follow ml-4m's MODALITY_INFO (4M-7, 4M-21 and the 448 px super-resolution
models), so checkpoints and pre-tokenized data line up with the reference. One group is ours: the
64 px modalities of the built-in scenes dataset (MODALITIES_SCENES). A modality's id is
``sha256(name) mod 2**15``, the int16 tag ml-4m uses to route decoder tokens to output heads.

This module imports nothing else from fourm_jax.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Iterator

TEXT_VOCAB_SIZE = 30_000
# ml-4m resolves image modalities without an input size against the run's image size; every
# released 4M model uses 224.
DEFAULT_IMAGE_SIZE = 224
# Sequence modules allocate sin-cos position tables of this many rows, whatever their max_length.
MAX_SINCOS_POSITIONS = 512


class Kind(enum.StrEnum):
    """How a modality is represented and embedded."""

    IMAGE_PIXELS = "image_pixels"  # raw pixels, patch-projected (rgb@224)
    IMAGE_TOKENS = "image_tokens"  # a grid of VQ token ids (tok_rgb@224)
    SEQUENCE = "sequence"  # text-like token ids with span masking (caption, det, metadata)
    SEQUENCE_EMBEDDING = "sequence_embedding"  # one continuous vector per position (t5_caption)
    FEATURE_MAP = "feature_map"  # dense features a tokenizer is trained on (CLIP-B16)


class PosEmb(enum.StrEnum):
    SINCOS_2D = "sincos_2d"
    SINCOS_1D = "sincos_1d"
    LEARNED = "learned"


def modality_id(name: str) -> int:
    """ml-4m's `generate_uint15_hash`: sha256 of the UTF-8 name, modulo 2**15."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) % 2**15


@dataclasses.dataclass(frozen=True)
class Modality:
    """One modality. Derived fields (id, path, max_tokens, pos_emb) are filled when left unset.

    max_tokens is the token budget of the modality's slot in a batch (image grids: (size/patch)**2);
    max_length is the length of a sequence modality's position table (ml-4m: human_poses 263 with a
    budget of 275). encoder / decoder say whether 4M has an input embedding / an output head for it;
    modalities with neither exist for tokenizer training.
    """

    name: str
    kind: Kind
    vocab_size: int | None = None
    max_tokens: int | None = None
    max_length: int | None = None
    input_size: int | None = None
    patch_size: int | None = None
    num_channels: int | None = None
    num_labels: int | None = None
    embedding_dim: int | None = None
    pos_emb: PosEmb | None = None
    encoder: bool = True
    decoder: bool = True
    shared_vocab: str | None = None
    pretokenized: bool = False
    path: str | None = None
    id: int | None = None

    def __post_init__(self):
        set_ = lambda field, value: object.__setattr__(self, field, value)
        set_("kind", Kind(self.kind))
        if self.id is None:
            set_("id", modality_id(self.name))
        if self.path is None:
            set_("path", self.name)
        if self.kind in (Kind.IMAGE_PIXELS, Kind.IMAGE_TOKENS) and self.patch_size is not None:
            if self.input_size is None:
                set_("input_size", DEFAULT_IMAGE_SIZE)
            if self.input_size % self.patch_size:
                raise ValueError(
                    f"modality {self.name!r}: input_size {self.input_size} is not divisible by "
                    f"patch_size {self.patch_size}"
                )
            if self.max_tokens is None:
                set_("max_tokens", self.grid_size**2)
            if self.pos_emb is None:
                set_("pos_emb", PosEmb.SINCOS_2D)
        if self.kind in (Kind.SEQUENCE, Kind.SEQUENCE_EMBEDDING):
            if self.max_length is None:
                set_("max_length", self.max_tokens)
            if self.pos_emb is None:
                set_("pos_emb", PosEmb.SINCOS_1D)
        if self.kind in (Kind.IMAGE_PIXELS, Kind.SEQUENCE_EMBEDDING, Kind.FEATURE_MAP):
            set_("decoder", False)
        if self.kind is Kind.FEATURE_MAP:
            set_("encoder", False)
        self._check()

    def _check(self):
        where = f"modality {self.name!r}"
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"modality name must be a non-empty string, got {self.name!r}")
        if not 0 <= self.id < 2**15:
            raise ValueError(f"{where}: id {self.id} is outside [0, 2**15)")
        for field in ("vocab_size", "max_tokens", "max_length", "input_size", "patch_size",
                      "num_channels", "num_labels", "embedding_dim"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"{where}: {field} must be a positive int, got {value!r}")
        if self.kind in (Kind.IMAGE_TOKENS, Kind.SEQUENCE) and (self.encoder or self.decoder):
            if self.vocab_size is None:
                raise ValueError(f"{where}: kind {self.kind.value} needs vocab_size")
        if self.encoder or self.decoder:
            if self.max_tokens is None:
                raise ValueError(f"{where}: needs max_tokens (or input_size and patch_size)")
            if self.kind in (Kind.IMAGE_PIXELS, Kind.IMAGE_TOKENS) and self.patch_size is None:
                raise ValueError(f"{where}: kind {self.kind.value} needs patch_size")
        if self.kind is Kind.IMAGE_PIXELS and self.encoder and self.num_channels is None:
            raise ValueError(f"{where}: kind image_pixels needs num_channels")
        if self.max_length is not None and self.max_length > MAX_SINCOS_POSITIONS:
            raise ValueError(f"{where}: max_length {self.max_length} exceeds {MAX_SINCOS_POSITIONS}")

    @property
    def is_image(self) -> bool:
        return self.kind in (Kind.IMAGE_PIXELS, Kind.IMAGE_TOKENS)

    @property
    def is_sequence(self) -> bool:
        return self.kind in (Kind.SEQUENCE, Kind.SEQUENCE_EMBEDDING)

    @property
    def grid_size(self) -> int:
        """Side of the square patch grid of an image modality."""
        if not self.is_image or self.patch_size is None:
            raise ValueError(f"modality {self.name!r} ({self.kind.value}) has no patch grid")
        return self.input_size // self.patch_size


_REGISTRY: dict[str, Modality] = {}


def register(modality: Modality, *, replace: bool = False) -> Modality:
    """Adds a modality. A duplicate name (unless `replace`) or a clashing id is an error naming both."""
    if modality.name in _REGISTRY and not replace:
        raise ValueError(
            f"modality {modality.name!r} is already registered (id {_REGISTRY[modality.name].id}); "
            "pass replace=True to redefine it"
        )
    for other in _REGISTRY.values():
        if other.id == modality.id and other.name != modality.name:
            raise ValueError(
                f"modality {modality.name!r} has id {modality.id}, already taken by {other.name!r}; "
                "choose another name or pass an explicit id"
            )
    _REGISTRY[modality.name] = modality
    return modality


def get(name: str) -> Modality:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown modality {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def is_registered(name: str) -> bool:
    return name in _REGISTRY


def names() -> list[str]:
    return list(_REGISTRY)


def all_modalities() -> Iterator[Modality]:
    return iter(list(_REGISTRY.values()))


def by_id(modality_id_: int) -> Modality:
    for modality in _REGISTRY.values():
        if modality.id == modality_id_:
            return modality
    raise KeyError(f"no registered modality has id {modality_id_}")


def _image_tokens(name, vocab_size, input_size=224, patch_size=16, **kwargs):
    return Modality(name, Kind.IMAGE_TOKENS, vocab_size=vocab_size, input_size=input_size,
                    patch_size=patch_size, pretokenized=True, **kwargs)


def _text(name, max_tokens, max_length=None, shared_vocab="caption", **kwargs):
    # Every text-like modality indexes the caption's 30k WordPiece vocabulary (ml-4m leaves
    # `shared_vocab` unset on det, but tokenizes it with the same vocabulary).
    return Modality(name, Kind.SEQUENCE, vocab_size=TEXT_VOCAB_SIZE, max_tokens=max_tokens,
                    max_length=max_length, shared_vocab=shared_vocab, **kwargs)


def _tokenizer_only(name, kind, num_channels, **kwargs):
    return Modality(name, kind, num_channels=num_channels, encoder=False, decoder=False, **kwargs)


_BUILTIN = [
    # 4M-7
    Modality("rgb@224", Kind.IMAGE_PIXELS, input_size=224, patch_size=16, num_channels=3, path="rgb"),
    _text("caption", 256, shared_vocab=None),
    _text("det", 256),
    _image_tokens("tok_rgb@224", 16384),
    _image_tokens("tok_depth@224", 8192),
    _image_tokens("tok_normal@224", 8192),
    _image_tokens("tok_semseg@224", 4096),
    _image_tokens("tok_clip@224", 8192),
    # 4M-21
    Modality("t5_caption", Kind.SEQUENCE_EMBEDDING, max_tokens=77, embedding_dim=4096),
    _text("metadata", 40),
    _text("human_poses", 275, max_length=263, num_channels=207),
    _text("color_palette", 23),
    _text("sam_instance", 290, pretokenized=True),
    _image_tokens("tok_canny_edge@224", 8192),
    _image_tokens("tok_sam_edge@224", 8192),
    _image_tokens("tok_dinov2@224", 8192, patch_size=14),
    _image_tokens("tok_imagebind@224", 8192, patch_size=14),
    _image_tokens("tok_dinov2_global", 8192, patch_size=56, pos_emb=PosEmb.LEARNED),
    _image_tokens("tok_imagebind_global", 8192, patch_size=56, pos_emb=PosEmb.LEARNED),
    # 224 -> 448 super-resolution
    Modality("rgb@448", Kind.IMAGE_PIXELS, input_size=448, patch_size=16, num_channels=3, path="rgb"),
    _image_tokens("tok_rgb@448", 16384, input_size=448),
    _image_tokens("tok_depth@448", 8192, input_size=448),
    _image_tokens("tok_normal@448", 8192, input_size=448),
    _image_tokens("tok_semseg@448", 4096, input_size=448),
    _image_tokens("tok_clip@448", 8192, input_size=448),
    # Raw modalities that tokenizers are trained on (no 4M embedding).
    _tokenizer_only("rgb", Kind.IMAGE_PIXELS, 3),
    _tokenizer_only("depth", Kind.IMAGE_PIXELS, 1),
    _tokenizer_only("normal", Kind.IMAGE_PIXELS, 3),
    _tokenizer_only("semseg_coco", Kind.IMAGE_PIXELS, 64, num_labels=134),
    _tokenizer_only("canny_edge", Kind.IMAGE_PIXELS, 1),
    _tokenizer_only("sam_mask", Kind.IMAGE_PIXELS, 1, max_tokens=64),
    _tokenizer_only("CLIP-B16", Kind.FEATURE_MAP, 512),
    _tokenizer_only("DINOv2-B14", Kind.FEATURE_MAP, 768),
    _tokenizer_only("ImageBind-H14", Kind.FEATURE_MAP, 1280),
    _tokenizer_only("DINOv2-B14-global", Kind.FEATURE_MAP, 768),
    _tokenizer_only("ImageBind-H14-global", Kind.FEATURE_MAP, 1280),
    # The built-in scenes dataset (fourm_jax/data/scenes_dataset.py) at 64 px, tokenized by the
    # shipped tokenizers/scenes_64 tokenizers (specs tokenizers/scenes_*.py): patch 8 -> 8x8 = 64
    # tokens, vocabularies = their codebook sizes. Not part of ml-4m.
    Modality("rgb@64", Kind.IMAGE_PIXELS, input_size=64, patch_size=8, num_channels=3, path="rgb"),
    _image_tokens("tok_rgb@64", 1024, input_size=64, patch_size=8),
    _image_tokens("tok_depth@64", 512, input_size=64, patch_size=8),
    _image_tokens("tok_normal@64", 512, input_size=64, patch_size=8),
    _image_tokens("tok_semseg@64", 256, input_size=64, patch_size=8),
]

for _modality in _BUILTIN:
    register(_modality)
del _modality

MODALITIES_4M7 = ("rgb@224", "caption", "det", "tok_rgb@224", "tok_depth@224", "tok_normal@224",
                  "tok_semseg@224", "tok_clip@224")
MODALITIES_4M21 = MODALITIES_4M7 + (
    "t5_caption", "metadata", "human_poses", "color_palette", "sam_instance", "tok_canny_edge@224",
    "tok_sam_edge@224", "tok_dinov2@224", "tok_dinov2_global", "tok_imagebind@224",
    "tok_imagebind_global")
MODALITIES_SR448 = ("rgb@448", "tok_rgb@448", "tok_depth@448", "tok_normal@448", "tok_semseg@448",
                    "tok_clip@448")
MODALITIES_SCENES = ("rgb@64", "tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64")
