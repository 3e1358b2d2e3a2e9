"""Per-modality embeddings of 4M: encoder inputs, decoder inputs and output heads.

Each module embeds a modality's tokens (`x`: token / patch content) and their positions (`emb`:
positional + modality embedding), like ml-4m's encoder_embeddings / decoder_embeddings. Besides
embedding every position (`embed`, what ml-4m's modules do), each module can embed only chosen
positions (`embed_at`): 4M keeps 128-256 of thousands of candidate tokens, so the model selects
first and embeds the few it keeps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm_jax import modalities
from fourm_jax.modalities import Kind, Modality, PosEmb
from fourm_jax.model.layers import Buffer, Dense, normal, param, xavier_uniform

INIT_STD = 0.02


def sincos_1d(length: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """(length, dim) float32: [sin(n w) | cos(n w)] halves, w_k = temperature^(-k / (dim/2))."""
    if dim % 2:
        raise ValueError(f"1-D sin-cos position embeddings need an even dim, got {dim}")
    omega = 1.0 / (np.float32(temperature) ** (np.arange(dim // 2, dtype=np.float32) / np.float32(dim // 2)))
    angles = np.outer(np.arange(length, dtype=np.float32), omega.astype(np.float32)).astype(np.float32)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1).astype(np.float32)


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """(height*width, dim) float32 for a row-major grid: [sin, cos](a w) then [sin, cos](b w) with
    a = n // height, b = n % height (ml-4m's meshgrid order; for square grids a = row, b = column)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos position embeddings need dim divisible by 4, got {dim}")
    omega = 1.0 / (np.float32(temperature) ** (np.arange(dim // 4, dtype=np.float32) / np.float32(dim // 4)))
    n = np.arange(height * width)
    a, b = (n // height).astype(np.float32), (n % height).astype(np.float32)
    out_a, out_b = np.outer(a, omega).astype(np.float32), np.outer(b, omega).astype(np.float32)
    table = np.concatenate([np.sin(out_a), np.cos(out_a), np.sin(out_b), np.cos(out_b)], axis=1)
    return table.astype(np.float32)


def position_table_length(modality: Modality) -> int:
    """Rows of a modality's position table: the patch grid for images; sequences keep ml-4m's
    512-row sin-cos table whatever their max_length (learned tables have max_length rows)."""
    if modality.is_image:
        return modality.grid_size**2
    if modality.pos_emb is PosEmb.LEARNED:
        return modality.max_length
    return modalities.MAX_SINCOS_POSITIONS


def _position_table(modality: Modality, dim: int, rngs: nnx.Rngs) -> nnx.Variable:
    length = position_table_length(modality)
    if modality.pos_emb is PosEmb.LEARNED:
        return param(rngs, normal(INIT_STD), (length, dim), ("length", "embed"))
    if modality.pos_emb is PosEmb.SINCOS_2D:
        table = sincos_2d(modality.grid_size, modality.grid_size, dim)
    else:
        table = sincos_1d(length, dim)
    return Buffer(jnp.asarray(table), out_sharding=("length", "embed"), eager_sharding=False)


def compact_positions(valid_BL: jax.Array) -> jax.Array:
    """Position of each valid token among the valid tokens of its row (0 at invalid positions)."""
    pos = jnp.cumsum(valid_BL.astype(jnp.int32), axis=1) - 1
    return jnp.where(valid_BL, pos, 0)


def take_rows(x_BL, idx_BN):
    """x[b, idx[b, n]] for x of shape (B, L, ...)."""
    return jax.vmap(lambda row, i: row[i])(x_BL, idx_BN)


class ModalityEmbedding(nnx.Module):
    """Shared parts: modality embedding (D,) and position table (L, D)."""

    def __init__(self, modality: Modality, dim: int, *, rngs: nnx.Rngs):
        self.name = modality.name
        self.kind = modality.kind
        self.mod_emb = param(rngs, normal(INIT_STD), (dim,), ("embed",))
        self.pos_emb = _position_table(modality, dim, rngs)

    def position_embedding(self, pos_BL: jax.Array, valid_BL: jax.Array | None = None) -> jax.Array:
        """pos_emb[pos] + mod_emb, with the positional part zeroed where not valid."""
        pos = self.pos_emb[...][pos_BL]
        if valid_BL is not None:
            pos = jnp.where(valid_BL[..., None], pos, 0.0)
        return pos + self.mod_emb[...]


class ImagePixelEncoderEmbedding(ModalityEmbedding):
    """Pixels (B, C, H, W) -> patches in ml-4m's (ph, pw, c) feature order -> linear projection."""

    def __init__(self, modality: Modality, dim: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(modality, dim, rngs=rngs)
        self.patch_size = modality.patch_size
        features = modality.num_channels * modality.patch_size**2
        self.proj = Dense((features,), (dim,), axes=("patch", "embed"), use_bias=False, dtype=dtype,
                          rngs=rngs)

    def patches(self, pixels_BCHW: jax.Array) -> jax.Array:
        b, c, h, w = pixels_BCHW.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"{self.name}: image {h}x{w} is not divisible by patch size {p}")
        x = pixels_BCHW.reshape(b, c, h // p, p, w // p, p)
        return x.transpose(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)

    def embed(self, d):
        patches = self.patches(d["tensor"])
        x = self.proj(patches).astype(jnp.float32)
        pos = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape[:2])
        return x, self.position_embedding(pos)

    def embed_at(self, d, idx_BN):
        x = self.proj(take_rows(self.patches(d["tensor"]), idx_BN)).astype(jnp.float32)
        return x, self.position_embedding(idx_BN)


class ImageTokenEncoderEmbedding(ModalityEmbedding):
    """A grid of token ids (B, h, w) or (B, h*w) -> token embeddings, row-major."""

    def __init__(self, modality: Modality, dim: int, *, rngs: nnx.Rngs):
        super().__init__(modality, dim, rngs=rngs)
        self.token_emb = param(rngs, normal(INIT_STD), (modality.vocab_size, dim), ("vocab", "embed"))

    def embed(self, d):
        ids = d["tensor"].reshape(d["tensor"].shape[0], -1)
        pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        return self.token_emb[...][ids], self.position_embedding(pos)

    def embed_at(self, d, idx_BN):
        ids = take_rows(d["tensor"].reshape(d["tensor"].shape[0], -1), idx_BN)
        return self.token_emb[...][ids], self.position_embedding(idx_BN)


class SequenceEncoderEmbedding(ModalityEmbedding):
    """Token ids (B, L); positions count valid input tokens only (ml-4m's compaction)."""

    def __init__(self, modality: Modality, dim: int, *, rngs: nnx.Rngs):
        super().__init__(modality, dim, rngs=rngs)
        self.token_emb = param(rngs, normal(INIT_STD), (modality.vocab_size, dim), ("vocab", "embed"))

    def _content(self, values):
        return self.token_emb[...][values]

    def embed(self, d):
        valid = ~d["input_mask"]
        return self._content(d["tensor"]), self.position_embedding(compact_positions(valid), valid)

    def embed_at(self, d, idx_BN):
        valid = ~d["input_mask"]
        pos = take_rows(compact_positions(valid), idx_BN)
        return (self._content(take_rows(d["tensor"], idx_BN)),
                self.position_embedding(pos, take_rows(valid, idx_BN)))


class SequenceEmbEncoderEmbedding(SequenceEncoderEmbedding):
    """Precomputed vectors (B, L, E) (T5-XXL caption features) -> linear projection to D."""

    def __init__(self, modality: Modality, dim: int, *, dtype, rngs: nnx.Rngs):
        ModalityEmbedding.__init__(self, modality, dim, rngs=rngs)
        self.emb_proj = Dense((modality.embedding_dim,), (dim,), axes=("patch", "embed"), use_bias=True,
                              dtype=dtype, rngs=rngs)

    def _content(self, values):
        return self.emb_proj(values).astype(jnp.float32)


class DecoderEmbedding(ModalityEmbedding):
    """Decoder side of a modality: token embeddings (inputs of sequence targets), output head.

    Image modalities keep token_emb for checkpoint compatibility (ml-4m's decoder feeds them the
    mask token). With `tied`, the head reuses token_emb instead of its own to_logits.
    """

    def __init__(self, modality: Modality, dim: int, *, tied: bool, dtype, rngs: nnx.Rngs):
        super().__init__(modality, dim, rngs=rngs)
        vocab = modality.vocab_size
        init = xavier_uniform(dim, vocab) if tied else normal(INIT_STD)
        self.token_emb = param(rngs, init, (vocab, dim), ("vocab", "embed"))
        self.to_logits = None if tied else Dense((dim,), (vocab,), axes=("embed", "vocab"), use_bias=False,
                                                 dtype=dtype, rngs=rngs)
        self.vocab_size = vocab
        self.is_sequence = modality.kind is Kind.SEQUENCE
        self.max_length = modality.max_length
        self.dtype = dtype

    def head_kernel(self) -> jax.Array:
        """(D, V) output projection."""
        return self.token_emb[...].T if self.to_logits is None else self.to_logits.kernel[...]

    def logits(self, y: jax.Array) -> jax.Array:
        """(..., D) -> (..., V) float32 logits."""
        return jnp.einsum("...d,dv->...v", y.astype(self.dtype), self.head_kernel().astype(self.dtype),
                          preferred_element_type=jnp.float32)

    def target_positions(self, target_mask_BL: jax.Array) -> jax.Array:
        """Compacted positions of target tokens; those at or beyond max_length fall back to 0."""
        pos = compact_positions(~target_mask_BL)
        if self.is_sequence:
            pos = jnp.where(pos >= self.max_length, 0, pos)
        return pos

    def embed(self, d):
        """ml-4m's forward_embed: (x = token embeddings, emb = position + modality, ids), all positions."""
        ids = d["tensor"].reshape(d["tensor"].shape[0], -1)
        if self.is_sequence:
            valid = ~d["target_mask"]
            emb = self.position_embedding(self.target_positions(d["target_mask"]), valid)
        else:
            emb = self.position_embedding(jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape))
        return self.token_emb[...][ids], emb, ids

    def candidates(self, d):
        """Decoder candidates of this modality: (excluded_BL, ids_BL, attention_BL, targets_BL).

        Sequences are shifted by one (position k predicts token k+1 and is a candidate only if both
        are targets); images predict each target position from the mask token.
        """
        ids = d["tensor"].reshape(d["tensor"].shape[0], -1)
        target_mask = d["target_mask"]
        attention = d["decoder_attention_mask"]
        if self.is_sequence:
            return (target_mask[:, 1:] | target_mask[:, :-1], ids[:, :-1], attention[:, :-1], ids[:, 1:])
        return target_mask, ids, attention, ids

    def embed_candidates_at(self, d, idx_BN, mask_token):
        """(x, emb) of the decoder candidates at local indices idx (see `candidates`)."""
        ids = d["tensor"].reshape(d["tensor"].shape[0], -1)
        if self.is_sequence:
            valid = ~d["target_mask"]
            pos = take_rows(self.target_positions(d["target_mask"]), idx_BN)
            emb = self.position_embedding(pos, take_rows(valid, idx_BN))
            return self.token_emb[...][take_rows(ids, idx_BN)], emb
        emb = self.position_embedding(idx_BN)
        return jnp.broadcast_to(mask_token, emb.shape), emb


def encoder_embedding(modality: Modality, dim: int, *, dtype, rngs: nnx.Rngs) -> ModalityEmbedding:
    if modality.kind is Kind.IMAGE_PIXELS:
        return ImagePixelEncoderEmbedding(modality, dim, dtype=dtype, rngs=rngs)
    if modality.kind is Kind.IMAGE_TOKENS:
        return ImageTokenEncoderEmbedding(modality, dim, rngs=rngs)
    if modality.kind is Kind.SEQUENCE:
        return SequenceEncoderEmbedding(modality, dim, rngs=rngs)
    if modality.kind is Kind.SEQUENCE_EMBEDDING:
        return SequenceEmbEncoderEmbedding(modality, dim, dtype=dtype, rngs=rngs)
    raise ValueError(f"modality {modality.name!r} ({modality.kind.value}) has no encoder embedding")
