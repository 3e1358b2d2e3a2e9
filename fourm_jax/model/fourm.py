"""The 4M encoder-decoder (ml-4m's FourM) in Flax NNX.

Batch layout (ml-4m's): `batch[modality]` holds `tensor`, `input_mask`, `target_mask` (True =
masked: not an input / not a target) and `decoder_attention_mask`; `num_encoder_tokens` and
`num_decoder_tokens` are static ints (the token budgets). Modalities of the batch that the model
has no embedding for are ignored, as in ml-4m.

Forward pass:
1. encoder tokens: the input tokens of all encoder modalities, concatenated in sorted modality-name
   order, stably partitioned (valid first, original order) and truncated to num_encoder_tokens;
   only the kept tokens are embedded;
2. decoder tokens: the target tokens of all decoder modalities, concatenated in `decoder_order`
   (an explicit argument; default sorted names), partitioned and truncated the same way; sequence
   targets are shifted by one; image targets are predicted from the mask token;
3. encoder -> encoder_norm -> context = decoder_proj_context(x) + encoder emb -> decoder with
   cross-attention to the context and ml-4m's decoder self-attention mask -> decoder_norm;
4. per-modality cross-entropy through each modality's head on its own tokens only
   (grouped_loss.py), combined as ml-4m's `mod` or `token` loss.

ml-4m draws the decoder modality order at random in every call; here the order is an argument.
Losses and the outputs of valid tokens do not depend on it (ml-4m's separation mask); positions
in the decoder sequence, and so padded rows, do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from fourm_jax import modalities
from fourm_jax.model.blocks import ACTIVATION_AXES, BlockStack, DecoderBlock, DecoderCache, EncoderBlock
from fourm_jax.model.config import ModelConfig
from fourm_jax.model.embeddings import INIT_STD, DecoderEmbedding, encoder_embedding, take_rows
from fourm_jax.model.grouped_loss import grouped_cross_entropy
from fourm_jax.model.layers import Dense, LayerNorm, normal, param
from fourm_jax.sharding import constrain

Batch = Mapping[str, Mapping[str, jax.Array]]


class EncoderTokens(NamedTuple):
    """The kept encoder tokens. x: content embeddings, emb: position + modality embeddings (both
    (B, N, D) float32, zero at padding); mask (B, N): True = padding; mod_mask (B, N): modality id,
    -1 at padding and register tokens."""

    x: jax.Array
    emb: jax.Array
    mask: jax.Array
    mod_mask: jax.Array


class DecoderTokens(NamedTuple):
    """The kept decoder tokens. x, emb (B, M, D) float32 (zero at padding); mask (B, M): True =
    padding; target_ids (B, M) (0 at padding); attention_mask (B, M, M): True = query i may not
    see key j; mod_mask (B, M): modality id, -1 at padding."""

    x: jax.Array
    emb: jax.Array
    mask: jax.Array
    target_ids: jax.Array
    attention_mask: jax.Array
    mod_mask: jax.Array


def _stable_keep(excluded_BO: jax.Array, count: int, what: str) -> jax.Array:
    """Indices of the first `count` entries after a stable partition (not excluded first)."""
    if count > excluded_BO.shape[1]:
        raise ValueError(f"{what}={count} exceeds the {excluded_BO.shape[1]} candidate tokens of the batch")
    return jnp.argsort(excluded_BO.astype(jnp.int32), axis=1, stable=True)[:, :count]


def _spans(lengths: Sequence[int]):
    start = 0
    for length in lengths:
        yield start, length
        start += length


class FourM(nnx.Module):
    """4M: modality embeddings, a Transformer encoder and decoder, per-modality output heads."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        dim, dtype = config.dim, jnp.dtype(config.dtype)
        self.mask_token = param(rngs, normal(INIT_STD), (dim,), ("embed",))
        self.register_tokens = (param(rngs, normal(INIT_STD), (config.num_register_tokens, dim),
                                      (None, "embed")) if config.num_register_tokens else None)
        self.encoder_embeddings = nnx.Dict({
            name: encoder_embedding(modalities.get(name), dim, dtype=dtype, rngs=rngs)
            for name in config.domains_in})
        self.decoder_embeddings = nnx.Dict({
            name: DecoderEmbedding(modalities.get(name), dim, tied=config.tie_output_embeddings, dtype=dtype,
                                   rngs=rngs)
            for name in config.domains_out})
        if config.share_modality_embeddings:
            for name in config.domains_out:
                if name in self.encoder_embeddings:
                    self.decoder_embeddings[name].mod_emb = self.encoder_embeddings[name].mod_emb
        stack = dict(scan=config.scan_layers, remat_policy=config.remat_policy, rngs=rngs)
        self.encoder = BlockStack(lambda r: EncoderBlock(config, rngs=r), config.encoder_depth, **stack)
        self.encoder_norm = LayerNorm(dim, use_bias=config.norm_bias, eps=config.norm_eps, rngs=rngs)
        # ml-4m gives this projection a bias even in its no-bias variants.
        self.decoder_proj_context = Dense((dim,), (dim,), axes=("embed", None), use_bias=True, dtype=dtype,
                                          rngs=rngs)
        self.decoder = BlockStack(lambda r: DecoderBlock(config, rngs=r), config.decoder_depth, **stack)
        self.decoder_norm = LayerNorm(dim, use_bias=config.norm_bias, eps=config.norm_eps, rngs=rngs)

    # -- modality order -------------------------------------------------------------------------

    def encoder_modalities(self, batch: Batch) -> list[str]:
        """Encoder modalities of a batch, in encoder concatenation order (sorted names)."""
        return sorted(m for m in batch if m in self.encoder_embeddings)

    def decoder_modalities(self, batch: Batch, decoder_order: Sequence[str] | None = None) -> list[str]:
        """Decoder modalities of a batch in decoder concatenation order (default: sorted names)."""
        present = sorted(m for m in batch if m in self.decoder_embeddings)
        if decoder_order is None:
            return present
        order = list(decoder_order)
        if sorted(order) != present:
            raise ValueError(f"decoder_order {order} must list each decoder modality of the batch "
                             f"exactly once: {present}")
        return order

    # -- token selection ------------------------------------------------------------------------

    def embed_encoder_modality(self, name: str, d: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """(x, emb), each (B, L, D), for every position of one modality (ml-4m's encoder embedding)."""
        return self.encoder_embeddings[name].embed(d)

    def select_encoder_tokens(self, batch: Batch, num_encoder_tokens: int) -> EncoderTokens:
        """Concatenates the encoder modalities' input masks, keeps num_encoder_tokens tokens (valid
        first, in order) and embeds only those; register tokens, if any, come first."""
        names = self.encoder_modalities(batch)
        if not names:
            raise ValueError(f"the batch has no encoder modality; model inputs: "
                             f"{list(self.encoder_embeddings)}")
        masks = [batch[m]["input_mask"] for m in names]
        excluded = jnp.concatenate(masks, axis=1)
        keep = _stable_keep(excluded, num_encoder_tokens, "num_encoder_tokens")
        mask = take_rows(excluded, keep)
        shape = keep.shape + (self.config.dim,)
        x, emb = jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)
        mod_mask = jnp.full(keep.shape, -1, jnp.int32)
        for name, (start, length) in zip(names, _spans([m.shape[1] for m in masks]), strict=True):
            inside = (keep >= start) & (keep < start + length)
            local = jnp.clip(keep - start, 0, length - 1)
            x_m, emb_m = self.encoder_embeddings[name].embed_at(batch[name], local)
            x = jnp.where(inside[..., None], x_m, x)
            emb = jnp.where(inside[..., None], emb_m, emb)
            mod_mask = jnp.where(inside, modalities.get(name).id, mod_mask)
        return self._encoder_tokens(x, emb, mask, mod_mask)

    def keep_encoder_tokens(self, x_BLD: jax.Array, emb_BLD: jax.Array, excluded_BL: jax.Array,
                            mod_ids_BL: jax.Array, num_encoder_tokens: int) -> EncoderTokens:
        """select_encoder_tokens for candidates embedded beforehand (all positions, e.g. with
        embed_encoder_modality): keeps num_encoder_tokens (valid first, in order). Generation embeds
        its fixed conditions once and only the modality it is generating at every step."""
        keep = _stable_keep(excluded_BL, num_encoder_tokens, "num_encoder_tokens")
        return self._encoder_tokens(*(take_rows(a, keep) for a in (x_BLD, emb_BLD, excluded_BL, mod_ids_BL)))

    def _encoder_tokens(self, x, emb, mask, mod_mask) -> EncoderTokens:
        """Kept tokens with padding zeroed (modality id -1) and register tokens in front."""
        x = jnp.where(mask[..., None], 0.0, x)
        emb = jnp.where(mask[..., None], 0.0, emb)
        mod_mask = jnp.where(mask, -1, mod_mask)
        if self.register_tokens is not None:
            (b, _), r, d = mask.shape, self.config.num_register_tokens, self.config.dim
            x = jnp.concatenate([jnp.broadcast_to(self.register_tokens[...], (b, r, d)), x], axis=1)
            emb = jnp.concatenate([jnp.zeros((b, r, d), emb.dtype), emb], axis=1)
            mask = jnp.concatenate([jnp.zeros((b, r), bool), mask], axis=1)
            mod_mask = jnp.concatenate([jnp.full((b, r), -1, jnp.int32), mod_mask], axis=1)
        return EncoderTokens(x, emb, mask, mod_mask)

    def embed_decoder_modality(self, name: str, d: Mapping[str, jax.Array]):
        """(x, emb, ids) for every position of one output modality (ml-4m's forward_embed):
        x = token embeddings of `tensor`, emb = position (compacted over targets for sequences)
        + modality embedding."""
        return self.decoder_embeddings[name].embed(d)

    def embed_decoder_tokens(self, name: str, ids: jax.Array) -> jax.Array:
        """Decoder token embeddings of ids (autoregressive decoding feeds its own samples back)."""
        return self.decoder_embeddings[name].token_emb[...][ids]

    def decoder_attention_mask(self, attention_BM: jax.Array, mod_mask_BM: jax.Array) -> jax.Array:
        """ml-4m's decoder self-attention mask (B, M, M), True = blocked, from the compressed
        per-token counts: query i sees keys j < cumsum(counts)[i] (or j <= i with
        decoder_causal_mask), and only keys of its own modality with decoder_sep_mask."""
        m = attention_BM.shape[1]
        keys = jnp.arange(m)
        if self.config.decoder_causal_mask:
            blocked = jnp.broadcast_to(keys[None, :] > keys[:, None], (attention_BM.shape[0], m, m))
        else:
            reach = jnp.cumsum(attention_BM, axis=1)
            blocked = keys[None, None, :] >= reach[:, :, None]
        if self.config.decoder_sep_mask:
            blocked = blocked | (mod_mask_BM[:, None, :] != mod_mask_BM[:, :, None])
        return blocked

    def select_decoder_tokens(self, batch: Batch, num_decoder_tokens: int,
                              decoder_order: Sequence[str] | None = None) -> DecoderTokens:
        """Concatenates the decoder candidates of the output modalities in `decoder_order`, keeps
        num_decoder_tokens (valid first, in order) and embeds only those."""
        names = self.decoder_modalities(batch, decoder_order)
        if not names:
            raise ValueError(f"the batch has no decoder modality; model outputs: "
                             f"{list(self.decoder_embeddings)}")
        parts = [self.decoder_embeddings[m].candidates(batch[m]) for m in names]
        excluded_all = jnp.concatenate([p[0] for p in parts], axis=1)
        keep = _stable_keep(excluded_all, num_decoder_tokens, "num_decoder_tokens")
        mask = take_rows(excluded_all, keep)
        attention = take_rows(jnp.concatenate([p[2] for p in parts], axis=1), keep)
        target_ids = take_rows(jnp.concatenate([p[3] for p in parts], axis=1), keep)
        shape = keep.shape + (self.config.dim,)
        x, emb = jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32)
        mod_mask = jnp.zeros(keep.shape, jnp.int32)
        for name, (start, length) in zip(names, _spans([p[0].shape[1] for p in parts]), strict=True):
            inside = (keep >= start) & (keep < start + length)
            x_m, emb_m = self.decoder_embeddings[name].embed_candidates_at(
                batch[name], jnp.clip(keep - start, 0, length - 1), self.mask_token[...])
            x = jnp.where(inside[..., None], x_m, x)
            emb = jnp.where(inside[..., None], emb_m, emb)
            mod_mask = jnp.where(inside, modalities.get(name).id, mod_mask)
        x = jnp.where(mask[..., None], 0.0, x)
        emb = jnp.where(mask[..., None], 0.0, emb)
        target_ids = jnp.where(mask, 0, target_ids)
        # ml-4m builds the attention mask before marking padding with -1: padded tokens keep
        # their modality id there.
        attention_mask = self.decoder_attention_mask(attention, mod_mask)
        mod_mask = jnp.where(mask, -1, mod_mask)
        return DecoderTokens(x, emb, mask, target_ids, attention_mask, mod_mask)

    # -- trunk ----------------------------------------------------------------------------------

    def encode(self, x_BND: jax.Array, encoder_mask_BN: jax.Array) -> jax.Array:
        """Encoder layers and encoder_norm on x = tokens + emb; padding (mask True) is never attended."""
        x_BND = constrain(x_BND.astype(jnp.float32), ACTIVATION_AXES)
        x_BND = self.encoder(x_BND, encoder_mask_BN[:, None, None, :])
        return self.encoder_norm(x_BND)

    def decoder_context(self, encoder_out_BND: jax.Array, encoder_emb_BND: jax.Array) -> jax.Array:
        """What the decoder cross-attends to: decoder_proj_context(encoder output) + encoder emb."""
        return self.decoder_proj_context(encoder_out_BND).astype(jnp.float32) + encoder_emb_BND

    def decode(self, y_BMD: jax.Array, context_BND: jax.Array, encoder_mask_BN: jax.Array,
               self_attention_mask_BMM: jax.Array | None,
               empty_context_B: jax.Array | None = None) -> jax.Array:
        """Decoder layers and decoder_norm on y = tokens + emb. self_attention_mask (B, M, M), True =
        blocked, or None for full attention; encoder padding is never attended. Rows flagged in
        empty_context_B get nothing from cross-attention (ml-4m's decoder on an empty encoder
        sequence, which its sampler runs when no row of a pass has a visible token)."""
        y_BMD = constrain(y_BMD.astype(jnp.float32), ACTIVATION_AXES)
        sa_mask = None if self_attention_mask_BMM is None else self_attention_mask_BMM[:, None]
        live = None if empty_context_B is None else ~empty_context_B
        y_BMD = self.decoder(y_BMD, context_BND, sa_mask, encoder_mask_BN[:, None, None, :], live)
        return self.decoder_norm(y_BMD)

    def init_decoder_cache(self, context_BND: jax.Array, max_length: int):
        """A key-value cache for causal decoding of up to max_length tokens against a context: per
        decoder layer (BlockStack.map_layers' layout) a DecoderCache with the context's
        cross-attention keys and values and empty self-attention slots."""
        context_BND = constrain(context_BND.astype(jnp.float32), ACTIVATION_AXES)
        b = context_BND.shape[0]
        heads, head_dim = self.config.num_heads, self.config.head_dim
        dtype = jnp.dtype(self.config.dtype)

        def layer(block, c, _):
            k, v = block.context_kv(c)
            empty = jnp.zeros((b, heads, max_length, head_dim), dtype)
            return c, DecoderCache(empty, empty, k.astype(dtype), v.astype(dtype))

        return self.decoder.map_layers(layer, context_BND)[1]

    def decode_step(self, y_BQD: jax.Array, cache, index: jax.Array, encoder_mask_BN: jax.Array,
                    empty_context_B: jax.Array | None = None):
        """decode() of Q new tokens at positions index..index+Q-1 of a causally masked sequence whose
        earlier tokens are in the cache (init_decoder_cache); returns (decoder_norm outputs (B, Q,
        D), updated cache). Equals decode() of the whole prefix with a causal mask, at the new
        positions."""
        y_BQD = constrain(y_BQD.astype(jnp.float32), ACTIVATION_AXES)
        cross_blocked = encoder_mask_BN[:, None, None, :]
        live = None if empty_context_B is None else ~empty_context_B

        def layer(block, y, layer_cache):
            return block.step(y, layer_cache, index, cross_blocked, live)

        y_BQD, cache = self.decoder.map_layers(layer, y_BQD, cache)
        return self.decoder_norm(y_BQD), cache

    # -- outputs --------------------------------------------------------------------------------

    def logits(self, name: str, y: jax.Array) -> jax.Array:
        """Logits (..., V) float32 of one output modality's head on decoder outputs y (..., D)."""
        return self.decoder_embeddings[name].logits(y)

    def loss(self, y_BMD: jax.Array, target_ids_BM: jax.Array, mod_mask_BM: jax.Array,
             names: Sequence[str], loss_type: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """ml-4m's loss over the decoder modalities `names`: each modality's mean cross-entropy over
        its tokens (0 if it has none); `mod` averages them over all of `names`, `token` weights each
        by (its token count x its vocabulary size)."""
        loss_type = loss_type or self.config.loss_type
        group = jnp.full(mod_mask_BM.shape, len(names), jnp.int32)
        for i, name in enumerate(names):
            group = jnp.where(mod_mask_BM == modalities.get(name).id, i, group)
        dtype = jnp.dtype(self.config.dtype)
        kernels = tuple(self.decoder_embeddings[m].head_kernel().astype(dtype) for m in names)
        sums = grouped_cross_entropy(y_BMD.astype(dtype), kernels, group, target_ids_BM,
                                     self.config.head_chunk_size)
        counts = jnp.stack([jnp.sum(group == i) for i in range(len(names))]).astype(jnp.float32)
        means = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), 0.0)
        if loss_type == "mod":
            total = jnp.mean(means)
        elif loss_type == "token":
            vocab = [self.decoder_embeddings[m].vocab_size for m in names]
            weights = counts * jnp.asarray(vocab, jnp.float32)
            total = jnp.sum(means * weights) / jnp.maximum(jnp.sum(weights), 1.0)
        else:
            raise ValueError(f"loss_type must be 'mod' or 'token', got {loss_type!r}")
        return total, dict(zip(names, means, strict=True))

    def __call__(self, batch: Batch, num_encoder_tokens: int, num_decoder_tokens: int, *,
                 decoder_order: Sequence[str] | None = None, loss_type: str | None = None,
                 return_logits: bool = False):
        """(loss, {modality: loss}) or, with return_logits, (loss, {modality: loss}, {modality:
        (B, M, V) logits over all decoder positions})."""
        enc = self.select_encoder_tokens(batch, num_encoder_tokens)
        dec = self.select_decoder_tokens(batch, num_decoder_tokens, decoder_order)
        encoder_out = self.encode(enc.x + enc.emb, enc.mask)
        context = self.decoder_context(encoder_out, enc.emb)
        y = self.decode(dec.x + dec.emb, context, enc.mask, dec.attention_mask)
        names = self.decoder_modalities(batch, decoder_order)
        loss, mod_losses = self.loss(y, dec.target_ids, dec.mod_mask, names, loss_type)
        if return_logits:
            return loss, mod_losses, {m: self.logits(m, y) for m in names}
        return loss, mod_losses



def abstract_fourm(config: ModelConfig) -> FourM:
    """A FourM whose variables are shape/dtype placeholders (no memory, no random numbers)."""
    return nnx.eval_shape(lambda: FourM(config, rngs=nnx.Rngs(0)))
